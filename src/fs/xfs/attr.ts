import { StrataError } from '../../util/errors.js';
import { type Bmap, forkExtents, readForkBlocks } from './bmbt.js';
import { dv, u64, type XfsContext } from './context.js';
import { FMT, type XfsInode } from './inode.js';

/** Attribute entry flags. */
const ATTR = { LOCAL: 0x01, ROOT: 0x02, SECURE: 0x04, PARENT: 0x08, INCOMPLETE: 0x80 } as const;

const MAX_VALUE = 64 << 10;
const MAX_BLOCKS = 1 << 16;

const td = new TextDecoder('utf-8');

/**
 * The name an attribute has through the kernel: the namespace from its flags (user.,
 * trusted., security.), POSIX ACLs (SGI_ACL_FILE / SGI_ACL_DEFAULT in the root namespace)
 * as system.posix_acl_*. Parent pointers and incomplete entries are not attributes.
 */
function fullName(flags: number, name: Uint8Array): string | undefined {
  if (flags & (ATTR.PARENT | ATTR.INCOMPLETE)) return undefined;
  const n = td.decode(name);
  if (flags & ATTR.ROOT) {
    if (n === 'SGI_ACL_FILE') return 'system.posix_acl_access';
    if (n === 'SGI_ACL_DEFAULT') return 'system.posix_acl_default';
    return `trusted.${n}`;
  }
  if (flags & ATTR.SECURE) return `security.${n}`;
  return `user.${n}`;
}

/** An XFS on-disk ACL (big-endian count, then tag/id/perm entries) in the Linux xattr form. */
function aclToLinux(v: Uint8Array): Uint8Array {
  if (v.length < 4) return v;
  const d = dv(v);
  const count = d.getUint32(0);
  if (count > 1024 || 4 + count * 12 > v.length) return v;
  const out = new Uint8Array(4 + count * 8);
  const o = dv(out);
  o.setUint32(0, 2, true);
  for (let i = 0; i < count; i++) {
    const s = 4 + i * 12;
    o.setUint16(4 + i * 8, d.getUint32(s), true);
    o.setUint16(6 + i * 8, d.getUint16(s + 8), true);
    o.setUint32(8 + i * 8, d.getUint32(s + 4), true);
  }
  return out;
}

function put(out: Map<string, Uint8Array>, flags: number, name: Uint8Array, value: Uint8Array): void {
  const n = fullName(flags, name);
  if (n === undefined) return;
  out.set(n, n.startsWith('system.posix_acl_') ? aclToLinux(value) : value.slice());
}

/** Every extended attribute of an inode: short form, leaf, or node (da B+tree) attribute forks. */
export async function readAttrs(ctx: XfsContext, n: XfsInode): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  if (!n.attrFork) return out;
  if (n.aformat === FMT.LOCAL) {
    shortform(ctx, n, out);
    return out;
  }
  const map = await forkExtents(ctx, n, true);
  if (map.length === 0) return out;
  const seen = new Set<number>();
  const visit = async (blk: number, depth: number): Promise<void> => {
    const structure = `xfs inode ${n.ino} attribute block ${blk}`;
    if (seen.has(blk)) throw new StrataError('LOOP', 'attribute tree reaches a block twice', ctx.where(structure));
    if (depth > 8 || seen.size > MAX_BLOCKS) throw ctx.corrupt('attribute tree too deep', structure);
    seen.add(blk);
    const buf = await readForkBlocks(ctx, map, blk, 1, structure);
    const v = dv(buf);
    const magic = v.getUint16(8);
    const v5 = magic === 0x3bee || magic === 0x3ebe;
    if (v5 !== ctx.crc && (magic === 0x3bee || magic === 0x3ebe || magic === 0xfbee || magic === 0xfebe)) {
      throw ctx.corrupt('block version does not match the file system', structure);
    }
    if (v5) {
      ctx.verify(buf, 12, structure);
      if (u64(v, 48) !== n.ino) throw ctx.corrupt(`block owned by inode ${u64(v, 48)}`, structure);
    }
    if (magic === 0xfbee || magic === 0x3bee) {
      await leaf(ctx, n, map, buf, v5, structure, out);
      return;
    }
    if (magic === 0xfebe || magic === 0x3ebe) {
      const hdr = v5 ? 64 : 16;
      const count = v.getUint16(v5 ? 56 : 12);
      if (hdr + count * 8 > buf.length) throw ctx.corrupt(`node holds ${count} entries`, structure);
      for (let i = 0; i < count; i++) await visit(v.getUint32(hdr + i * 8 + 4), depth + 1);
      return;
    }
    throw ctx.corrupt(`bad magic 0x${magic.toString(16)}`, structure);
  };
  await visit(0, 0);
  return out;
}

function shortform(ctx: XfsContext, n: XfsInode, out: Map<string, Uint8Array>): void {
  const b = n.attrFork!;
  const at = n.attrForkAt;
  const structure = `xfs inode ${n.ino} short-form attributes`;
  const v = dv(b);
  const total = v.getUint16(0);
  const count = b[2];
  if (total > b.length || total < 4) throw ctx.corrupt(`total size ${total} does not fit the fork`, structure, at);
  let p = 4;
  for (let i = 0; i < count; i++) {
    if (p + 3 > total) throw ctx.corrupt(`entry ${i} runs past the fork`, structure, at + p);
    const nl = b[p];
    const vl = b[p + 1];
    const flags = b[p + 2];
    if (p + 3 + nl + vl > total) throw ctx.corrupt(`entry ${i} runs past the fork`, structure, at + p);
    put(out, flags, b.subarray(p + 3, p + 3 + nl), b.subarray(p + 3 + nl, p + 3 + nl + vl));
    p += 3 + nl + vl;
  }
}

async function leaf(
  ctx: XfsContext,
  n: XfsInode,
  map: Bmap[],
  buf: Uint8Array,
  v5: boolean,
  structure: string,
  out: Map<string, Uint8Array>,
): Promise<void> {
  const v = dv(buf);
  const hdr = v5 ? 80 : 32;
  const count = v.getUint16(v5 ? 56 : 12);
  if (hdr + count * 8 > buf.length) throw ctx.corrupt(`leaf holds ${count} entries`, structure);
  for (let i = 0; i < count; i++) {
    const e = hdr + i * 8;
    const idx = v.getUint16(e + 4);
    const flags = buf[e + 6];
    if (idx < hdr || idx + 4 > buf.length) throw ctx.corrupt(`entry ${i} name index ${idx}`, structure, e);
    if (flags & ATTR.LOCAL) {
      const vl = v.getUint16(idx);
      const nl = buf[idx + 2];
      if (idx + 3 + nl + vl > buf.length) throw ctx.corrupt(`entry ${i} runs past the block`, structure, idx);
      put(out, flags, buf.subarray(idx + 3, idx + 3 + nl), buf.subarray(idx + 3 + nl, idx + 3 + nl + vl));
    } else {
      if (idx + 9 > buf.length) throw ctx.corrupt(`entry ${i} runs past the block`, structure, idx);
      const vblk = v.getUint32(idx);
      const vl = v.getUint32(idx + 4);
      const nl = buf[idx + 8];
      if (idx + 9 + nl > buf.length) throw ctx.corrupt(`entry ${i} runs past the block`, structure, idx);
      if (flags & (ATTR.PARENT | ATTR.INCOMPLETE)) continue;
      const value = await remoteValue(ctx, n, map, vblk, vl, `${structure} remote value`);
      put(out, flags, buf.subarray(idx + 9, idx + 9 + nl), value);
    }
  }
}

/** A value kept in its own attribute-fork blocks (v5: each block with an XARM header). */
async function remoteValue(
  ctx: XfsContext,
  n: XfsInode,
  map: Bmap[],
  blk: number,
  len: number,
  structure: string,
): Promise<Uint8Array> {
  if (len > MAX_VALUE) throw new StrataError('LIMIT', `value of ${len} bytes`, ctx.where(structure));
  const bs = ctx.bs;
  const per = ctx.crc ? bs - 56 : bs;
  const blocks = Math.ceil(len / per);
  const raw = await readForkBlocks(ctx, map, blk, blocks, structure);
  if (!ctx.crc) return raw.subarray(0, len);
  const out = new Uint8Array(len);
  for (let i = 0; i < blocks; i++) {
    const b = raw.subarray(i * bs, (i + 1) * bs);
    const v = dv(b);
    if (v.getUint32(0) !== 0x5841524d) throw ctx.corrupt('bad remote value magic (want XARM)', structure);
    ctx.verify(b, 12, `${structure} block ${blk + i}`);
    const off = v.getUint32(4);
    const bytes = v.getUint32(8);
    if (u64(v, 32) !== n.ino) throw ctx.corrupt(`remote value block owned by inode ${u64(v, 32)}`, structure);
    if (off !== i * per || bytes > per || off + bytes > len) {
      throw ctx.corrupt(`remote value block says ${bytes} bytes at ${off}`, structure);
    }
    out.set(b.subarray(56, 56 + bytes), off);
  }
  return out;
}
