/**
 * bench:store-kinds (issue 26) — where the store's bytes go, by kind of file, on a tree (default
 * the debootstrapped bookworm minbase tree bench:checkin's images are made of), and what each idea
 * for making the store smaller would gain, measured in-process on the same bytes. Bytes do not
 * depend on the machine's load; CPU figures (process user + system ms) do, a little.
 *
 *     node dist/bench/store-kinds.js                  # $STRATA_BENCH/rootfs (or .cache/bench/rootfs)
 *     node dist/bench/store-kinds.js --tree DIR
 *
 * The model is the store's packer as shipped (src/store/packer.ts): every distinct file (sha256)
 * cut in 1 MiB chunks, each compressed alone at zstd 5; blobs below 1 MiB (small files, tails) in
 * shared 8 MiB frames at zstd 5 with a 2^23 window, in readdir order (what `mkfs.ext4 -d` lays
 * out one after another, so close to the disk order a check-in of its image cuts in). The peer is
 * modelled as casync's chunk store: 64 KiB pieces of each file at zstd 3 (casync chunks the whole
 * image with ~64 KiB content-defined chunks and compresses each with zstd 3).
 *
 * Lines (JSON): per kind, plain bytes, ours, the casync-like bytes and the ratio; then each
 * variant's total and its difference from the model as shipped:
 * - order by path, kind, kind + directory, kind + extension, kind + base name (frames in that order);
 * - an x86 branch filter (E8/E9 call/jmp targets made absolute, LZX style: only targets inside
 *   the blob, so it inverts exactly) on ELF blobs before zstd, as xz's BCJ does;
 * - zstd 9 for one kind at a time (the CPU it costs is printed beside it).
 */
import { createHash } from 'node:crypto';
import { lstatSync, opendirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { compressBound, compressInto } from '../src/store/zstd-into.js';
import { opt, ROOT } from './common.js';

const BENCH = process.env.STRATA_BENCH ?? path.join(ROOT, '.cache', 'bench');
const TREE = opt('--tree') ?? path.join(BENCH, 'rootfs');
const CHUNK = 1024 * 1024;
const FRAME = 8 * 1024 * 1024;

type Kind = 'elf' | 'gzip' | 'xz' | 'deb' | 'mo' | 'tzif' | 'text' | 'binary';
interface Blob {
  path: string;
  kind: Kind;
  bytes: Uint8Array;
}

export function kindOf(b: Uint8Array, p: string): Kind {
  const head = Buffer.from(b.subarray(0, 8)).toString('latin1');
  if (head.startsWith('\x7fELF')) return 'elf';
  if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (head.startsWith('\xfd7zXZ')) return 'xz';
  if (head.startsWith('!<arch>')) return 'deb';
  if (head.startsWith('TZif')) return 'tzif';
  if (p.endsWith('.mo')) return 'mo';
  for (let i = 0; i < Math.min(512, b.length); i++) {
    const c = b[i];
    if (c < 9 || (c > 13 && c < 32)) return 'binary';
  }
  return 'text';
}

/**
 * Regular files under `dir` in the order the directory lists them (not sorted: fs.opendir, not
 * readdir, which sorts), as `mkfs.ext4 -d` meets them and lays them out.
 */
function* files(dir: string): Generator<string> {
  const names: string[] = [];
  const d = opendirSync(dir);
  for (let e = d.readSync(); e; e = d.readSync()) names.push(e.name);
  d.closeSync();
  for (const name of names) {
    const p = path.join(dir, name);
    const st = lstatSync(p, { throwIfNoEntry: false }); // symlinks are not followed
    if (!st) continue;
    if (st.isDirectory()) yield* files(p);
    else if (st.isFile()) yield p;
  }
}

let scratch = Buffer.allocUnsafe(compressBound(FRAME));
export function zstd(src: Uint8Array, level: number, windowLog?: number): number {
  const bound = compressBound(src.length);
  if (scratch.length < bound) scratch = Buffer.allocUnsafe(bound);
  return Math.min(src.length, compressInto(scratch, src, level, windowLog));
}

/** xz-style x86 branch filter (LZX's E8 translation, E9 too): call/jmp targets inside the blob made absolute. */
export function x86Filter(src: Uint8Array): Uint8Array {
  const out = Uint8Array.prototype.slice.call(src);
  const dv = new DataView(out.buffer, out.byteOffset, out.length);
  const size = out.length;
  for (let i = 0; i + 5 <= size; ) {
    const c = out[i];
    if (c !== 0xe8 && c !== 0xe9) {
      i++;
      continue;
    }
    const rel = dv.getInt32(i + 1, true);
    const cur = i + 5;
    if (rel >= -cur && rel < size - cur) dv.setInt32(i + 1, rel + cur, true);
    else if (rel >= size - cur && rel < size) dv.setInt32(i + 1, rel - size, true);
    i += 5;
  }
  return out;
}

interface Model {
  level?: (k: Kind) => number;
  filter?: (b: Blob) => Uint8Array;
}

/** Bytes the packer as shipped stores for `small` (shared frames, in this order) and `chunks` (alone). */
function store(small: Blob[], chunks: Blob[], m: Model = {}): { bytes: number; cpuMs: number } {
  const lv = m.level ?? (() => 5);
  const f = m.filter ?? ((b: Blob) => b.bytes);
  const t = process.cpuUsage();
  let bytes = 0;
  for (const c of chunks) bytes += zstd(f(c), lv(c.kind));
  // frames at the level of their first blob's kind (a kind's own level only counts where it leads)
  let frame: Uint8Array[] = [];
  let used = 0;
  let first: Kind | undefined;
  const close = () => {
    if (used > 0) bytes += zstd(Buffer.concat(frame), lv(first as Kind), 23);
    frame = [];
    used = 0;
    first = undefined;
  };
  for (const b of small) {
    if (used + b.bytes.length > FRAME) close();
    first ??= b.kind;
    frame.push(f(b));
    used += b.bytes.length;
  }
  close();
  const u = process.cpuUsage(t);
  return { bytes, cpuMs: Math.round((u.user + u.system) / 1000) };
}

/** The regular files under `tree` (files' order), each content once: dedup by file, as the store does. */
export function* distinctFiles(tree: string): Generator<{ path: string; bytes: Buffer }> {
  const seen = new Set<string>();
  for (const p of files(tree)) {
    const bytes = readFileSync(p);
    const d = createHash('sha256').update(bytes).digest('hex');
    if (seen.has(d)) continue;
    seen.add(d);
    yield { path: p, bytes };
  }
}

function main(): void {
  const small: Blob[] = [];
  const chunks: Blob[] = [];
  let plainTotal = 0;
  for (const { path: p, bytes } of distinctFiles(TREE)) {
    const kind = kindOf(bytes, p);
    const rel = path.relative(TREE, p);
    plainTotal += bytes.length;
    let at = 0;
    for (; at + CHUNK <= bytes.length; at += CHUNK)
      chunks.push({ path: rel, kind, bytes: bytes.subarray(at, at + CHUNK) });
    if (at < bytes.length) small.push({ path: rel, kind, bytes: bytes.subarray(at) });
  }
  const all = [...chunks, ...small];
  const kinds = [...new Set(all.map((b) => b.kind))];
  const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);

  // per kind: its blobs alone (frames of that kind only), and the casync-like 64 KiB pieces
  let casTotal = 0;
  for (const k of kinds) {
    const s = small.filter((b) => b.kind === k);
    const c = chunks.filter((b) => b.kind === k);
    let plain = 0;
    let cas = 0;
    for (const b of [...s, ...c]) {
      plain += b.bytes.length;
      for (let o = 0; o < b.bytes.length; o += 65536) cas += zstd(b.bytes.subarray(o, o + 65536), 3);
    }
    casTotal += cas;
    const ours = store(s, c).bytes;
    out({
      kind: k,
      blobs: s.length + c.length,
      plainBytes: plain,
      oursBytes: ours,
      casyncLikeBytes: cas,
      ratio: +(ours / cas).toFixed(3),
    });
  }
  const shipped = store(small, chunks);
  out({
    model: 'as shipped',
    tree: TREE,
    plainBytes: plainTotal,
    bytes: shipped.bytes,
    casyncLikeBytes: casTotal,
    ratio: +(shipped.bytes / casTotal).toFixed(3),
    cpuMs: shipped.cpuMs,
  });
  const variant = (name: string, r: { bytes: number; cpuMs: number }) =>
    out({
      variant: name,
      bytes: r.bytes,
      saved: shipped.bytes - r.bytes,
      ratio: +(r.bytes / casTotal).toFixed(3),
      cpuMs: r.cpuMs,
      cpuMsShipped: shipped.cpuMs,
    });
  const by = (key: (b: Blob) => string) => [...small].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  variant(
    'order: path',
    store(
      by((b) => b.path),
      chunks,
    ),
  );
  variant(
    'order: kind',
    store(
      by((b) => b.kind),
      chunks,
    ),
  );
  variant(
    'order: kind, directory',
    store(
      by((b) => `${b.kind}\0${path.dirname(b.path)}`),
      chunks,
    ),
  );
  variant(
    'order: kind, extension',
    store(
      by((b) => `${b.kind}\0${path.extname(b.path)}`),
      chunks,
    ),
  );
  variant(
    'order: kind, base name',
    store(
      by((b) => `${b.kind}\0${path.basename(b.path)}\0${b.path}`),
      chunks,
    ),
  );
  variant(
    'x86 filter on ELF blobs',
    store(small, chunks, { filter: (b) => (b.kind === 'elf' ? x86Filter(b.bytes) : b.bytes) }),
  );
  for (const k of ['elf', 'mo', 'text'] as Kind[]) {
    if (kinds.includes(k)) variant(`zstd 9 for ${k}`, store(small, chunks, { level: (x) => (x === k ? 9 : 5) }));
  }
  // everything above that gained, together: the most these ideas give on this tree
  variant(
    'together: order kind + base name, x86 filter, zstd 9 for elf, mo, text',
    store(
      by((b) => `${b.kind}\0${path.basename(b.path)}\0${b.path}`),
      chunks,
      {
        filter: (b) => (b.kind === 'elf' ? x86Filter(b.bytes) : b.bytes),
        level: (k) => (k === 'elf' || k === 'mo' || k === 'text' ? 9 : 5),
      },
    ),
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main();
