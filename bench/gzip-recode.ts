/**
 * bench:gzip-recode (issue 26) — would recompressing gzip files pay in the store? On a tree
 * (default the debootstrapped bookworm minbase tree of bench:checkin's images): every distinct
 * gzip file, inflated and deflated again to see which zlib settings give back its deflate
 * stream byte for byte (as precomp / pristine-gz do), with Node's zlib and with pako (a JS port
 * of upstream zlib 1.2.8, present in node_modules as a dev dependency's dependency), and what
 * the store would hold if the reproduced ones were kept inflated (src/store/gzip-recode.ts's
 * form) in the shared frames, modelled as bench:store-kinds models the packer.
 *
 *     node dist/bench/gzip-recode.js                  # $STRATA_BENCH/rootfs (or .cache/bench/rootfs)
 *     node dist/bench/gzip-recode.js --tree DIR
 *
 * Lines (JSON): per deflater, how many gzip files reproduce at which level/memLevel (the first
 * that does, levels 9, 6, then the rest), and how many with none; the same for GNU gzip itself
 * (`gzip -9n`, `-6n` of the inflated content against the whole file: the oracle of what made
 * them); then the store model's bytes as shipped, with every gzip file kept inflated (the bound
 * no deflate can beat), and with recoding (settings tried: TRIES), the casync-like bytes
 * and both ratios, and the CPU the recoding check costs (each recoded form is also restored and
 * compared with the file, outside that CPU figure).
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { constants, deflateRawSync, gunzipSync, inflateRawSync } from 'node:zlib';
import { StrataError } from '../src/util/errors.js';
import { opt, ROOT } from './common.js';
import { distinctFiles, kindOf, zstd } from './store-kinds.js';

/**
 * The recoded form of a gzip file (what the store would keep), little-endian:
 *
 *   format u8 (1) | level u8 | memLevel u8 | strategy u8 | windowBits u8 |
 *   head length u16 | tail length u16 | content length u32 | head | tail | content
 *
 * head: the gzip header (up to the deflate stream); tail: everything after the deflate stream
 * (the CRC-32 and size trailer, normally 8 bytes). Restoring deflates the content again with
 * the recipe's settings and puts head and tail around it.
 */
const RECODE_FORMAT = 1;
const FIXED = 13;
/** Largest inflated content recoded (it shares an 8 MiB frame with its neighbours; a bomb stops here). */
const RECODE_MAX_CONTENT = 4 * 1024 * 1024;
/** Smallest gzip blob worth the work (its recipe is 13 + 18 bytes). */
const RECODE_MIN = 64;

interface Recipe {
  level: number;
  memLevel: number;
  strategy: number;
  windowBits: number;
}

/**
 * Settings tried, in order (gzip -9 first: what Debian's dh_compress and most packagers use;
 * then gzip's default -6). Each try is a whole deflate, so the list stays short.
 */
const TRIES: readonly Recipe[] = [
  { level: 9, memLevel: 8, strategy: constants.Z_DEFAULT_STRATEGY, windowBits: 15 },
  { level: 6, memLevel: 8, strategy: constants.Z_DEFAULT_STRATEGY, windowBits: 15 },
];

/** A raw deflate (no zlib or gzip wrapper) of `content` with settings `r`. */
type DeflateRaw = (content: Uint8Array, r: Recipe) => Uint8Array;
const nodeDeflate: DeflateRaw = (content, r) => deflateRawSync(content, r);

/** Length of the gzip header at the start of `b` (RFC 1952), or 0 when it is not one we recode. */
function gzipHeaderLength(b: Uint8Array): number {
  if (b.length < 18 || b[0] !== 0x1f || b[1] !== 0x8b || b[2] !== 8) return 0;
  const flg = b[3];
  if (flg & 0xe0) return 0; // reserved bits
  let at = 10;
  if (flg & 4) {
    if (at + 2 > b.length) return 0;
    at += 2 + (b[at] | (b[at + 1] << 8));
  }
  for (const bit of [8, 16]) {
    if (!(flg & bit)) continue;
    while (at < b.length && b[at] !== 0) at++;
    at++;
  }
  if (flg & 2) at += 2;
  return at < b.length && at <= 0xffff ? at : 0;
}

/**
 * The recoded form of gzip file `blob`, or undefined when it is not a gzip file some setting
 * of TRIES reproduces byte for byte (or recoding would not make it longer, so the stored form
 * fits where the blob would: see the pack's checks), or it inflates past RECODE_MAX_CONTENT.
 */
function recodeGzip(
  blob: Uint8Array,
  tries: readonly Recipe[] = TRIES,
  deflate: DeflateRaw = nodeDeflate,
): Uint8Array | undefined {
  if (blob.length < RECODE_MIN) return undefined;
  const head = gzipHeaderLength(blob);
  if (head === 0) return undefined;
  const stream = blob.subarray(head);
  let content: Buffer;
  try {
    content = inflateRawSync(stream, { maxOutputLength: RECODE_MAX_CONTENT });
  } catch {
    return undefined; // not deflate, truncated, or larger than we recode
  }
  for (const r of tries) {
    const again = deflate(content, r);
    if (again.length > stream.length || Buffer.compare(again, stream.subarray(0, again.length)) !== 0) continue;
    const tail = stream.length - again.length;
    if (tail > 0xffff) return undefined;
    const out = Buffer.allocUnsafe(FIXED + head + tail + content.length);
    if (out.length < blob.length) return undefined;
    out[0] = RECODE_FORMAT;
    out[1] = r.level;
    out[2] = r.memLevel;
    out[3] = r.strategy;
    out[4] = r.windowBits;
    out.writeUInt16LE(head, 5);
    out.writeUInt16LE(tail, 7);
    out.writeUInt32LE(content.length, 9);
    out.set(blob.subarray(0, head), FIXED);
    out.set(stream.subarray(again.length), FIXED + head);
    out.set(content, FIXED + head + tail);
    return out;
  }
  return undefined;
}

/** Length of the recoded form that starts `rec` (its fixed part and lengths checked), CORRUPT otherwise. */
function recodedLength(rec: Uint8Array, file: string, offset: number): number {
  const where = { file, structure: 'recoded gzip blob', offset };
  if (rec.length < FIXED) throw new StrataError('CORRUPT', 'recoded gzip blob runs past its frame', where);
  if (rec[0] !== RECODE_FORMAT) throw new StrataError('CORRUPT', `unknown recoded gzip format ${rec[0]}`, where);
  const dv = new DataView(rec.buffer, rec.byteOffset, FIXED);
  const n = FIXED + dv.getUint16(5, true) + dv.getUint16(7, true) + dv.getUint32(9, true);
  if (n > rec.length) throw new StrataError('CORRUPT', 'recoded gzip blob runs past its frame', where);
  return n;
}

/**
 * The original gzip file from its recoded form at the start of `rec` (which may run on: the
 * rest of its frame). Bad settings are CORRUPT naming `file` and `offset`; the caller checks
 * the result against the blob's digest.
 */
function restoreGzip(rec: Uint8Array, file: string, offset: number, deflate: DeflateRaw = nodeDeflate): Buffer {
  recodedLength(rec, file, offset);
  const dv = new DataView(rec.buffer, rec.byteOffset, FIXED);
  const head = dv.getUint16(5, true);
  const tail = dv.getUint16(7, true);
  const n = dv.getUint32(9, true);
  const r: Recipe = { level: rec[1], memLevel: rec[2], strategy: rec[3], windowBits: rec[4] };
  const content = rec.subarray(FIXED + head + tail, FIXED + head + tail + n);
  let deflated: Uint8Array;
  try {
    deflated = deflate(content, r);
  } catch (e) {
    throw new StrataError('CORRUPT', `recoded gzip blob has bad deflate settings: ${(e as Error).message}`, {
      file,
      structure: 'recoded gzip blob',
      offset,
    });
  }
  return Buffer.concat([rec.subarray(FIXED, FIXED + head), deflated, rec.subarray(FIXED + head, FIXED + head + tail)]);
}

const BENCH = process.env.STRATA_BENCH ?? path.join(ROOT, '.cache', 'bench');
const TREE = opt('--tree') ?? path.join(BENCH, 'rootfs');
const CHUNK = 1024 * 1024;
const FRAME = 8 * 1024 * 1024;

interface Pako {
  deflateRaw(b: Uint8Array, o: object): Uint8Array;
}
const pako = (() => {
  try {
    return createRequire(import.meta.url)('pako') as Pako;
  } catch {
    return undefined;
  }
})();

const deflaters: Record<string, DeflateRaw> = { node: nodeDeflate };
if (pako) deflaters.pako = (c, r) => pako.deflateRaw(c, r);

const ALL: Recipe[] = [];
for (const level of [9, 6, 1, 2, 3, 4, 5, 7, 8])
  for (const memLevel of [8, 9]) ALL.push({ level, memLevel, strategy: 0, windowBits: 15 });

const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);

function main(): void {
  const small: Uint8Array[] = [];
  const chunks: Uint8Array[] = [];
  const gz: Uint8Array[] = [];
  let casync = 0;
  for (const { path: p, bytes } of distinctFiles(TREE)) {
    for (let o = 0; o < bytes.length; o += 65536) casync += zstd(bytes.subarray(o, o + 65536), 3);
    let at = 0;
    for (; at + CHUNK <= bytes.length; at += CHUNK) chunks.push(bytes.subarray(at, at + CHUNK));
    if (at < bytes.length) small.push(bytes.subarray(at));
    if (kindOf(bytes, p) === 'gzip') gz.push(bytes);
  }
  out({ tree: TREE, gzipFiles: gz.length, gzipBytes: gz.reduce((n, b) => n + b.length, 0) });
  for (const [name, deflate] of Object.entries(deflaters)) {
    const by: Record<string, number> = {};
    for (const b of gz) {
      let key = gzipHeaderLength(b) === 0 ? 'not recodable (header)' : 'none';
      for (const r of key === 'none' ? ALL : []) {
        if (recodeGzip(b, [r], deflate)) {
          key = `level ${r.level} memLevel ${r.memLevel}`;
          break;
        }
      }
      by[key] = (by[key] ?? 0) + 1;
    }
    out({ deflater: name, reproduced: by });
  }
  // the oracle: GNU gzip itself (-9n, then -6n) on the inflated content, compared with the whole file
  const gnu: Record<string, number> = {};
  for (const b of gz) {
    let content: Buffer | undefined;
    try {
      content = gunzipSync(b);
    } catch {}
    let key = content ? 'none' : 'does not inflate';
    for (const level of content ? ['-9n', '-6n'] : []) {
      const r = spawnSync('gzip', ['-c', level], { input: content, maxBuffer: 1 << 30 });
      if (r.status === 0 && Buffer.compare(r.stdout, b) === 0) {
        key = `gzip ${level}`;
        break;
      }
    }
    gnu[key] = (gnu[key] ?? 0) + 1;
  }
  out({ deflater: 'GNU gzip (the tool)', reproduced: gnu });
  // the store model: chunks alone at zstd 5, small blobs in 8 MiB frames at zstd 5 (window 2^23), readdir order
  const model = (blob: (b: Uint8Array) => Uint8Array) => {
    let bytes = 0;
    for (const c of chunks) bytes += zstd(c, 5);
    let frame: Uint8Array[] = [];
    let used = 0;
    const close = () => {
      if (used > 0) bytes += zstd(Buffer.concat(frame), 5, 23);
      frame = [];
      used = 0;
    };
    for (const s of small) {
      const b = blob(s);
      if (used + b.length > FRAME) close();
      frame.push(b);
      used += b.length;
    }
    close();
    return bytes;
  };
  const shipped = model((b) => b);
  out({ model: 'as shipped', bytes: shipped, casyncLikeBytes: casync, ratio: +(shipped / casync).toFixed(4) });
  // the bound: every gzip file kept inflated (as a deflate that reproduced them all would allow)
  const all = model((b) => {
    if (b[0] !== 0x1f || b[1] !== 0x8b) return b;
    try {
      return gunzipSync(b);
    } catch {
      return b;
    }
  });
  out({
    model: 'every gzip file inflated (bound)',
    bytes: all,
    saved: shipped - all,
    ratio: +(all / casync).toFixed(4),
  });
  for (const [name, deflate] of Object.entries(deflaters)) {
    const t = process.cpuUsage();
    const rec = new Map<Uint8Array, Uint8Array>();
    for (const b of small) {
      const r = b[0] === 0x1f && b[1] === 0x8b ? recodeGzip(b, TRIES, deflate) : undefined;
      if (r) rec.set(b, r);
    }
    const u = process.cpuUsage(t);
    let inflated = 0;
    for (const [b, r] of rec) {
      if (recodedLength(r, 'recoded', 0) !== r.length || Buffer.compare(restoreGzip(r, 'recoded', 0, deflate), b) !== 0)
        throw new Error(`${name}: a recoded gzip file does not restore to its bytes`);
      inflated += r.length;
    }
    const bytes = model((b) => rec.get(b) ?? b);
    out({
      model: `gzip recoded (${name})`,
      recodedFiles: rec.size,
      recodedFormBytes: inflated,
      bytes,
      saved: shipped - bytes,
      ratio: +(bytes / casync).toFixed(4),
      recodeCpuMs: Math.round((u.user + u.system) / 1000),
    });
  }
}

main();
