import { StrataError } from '../util/errors.js';
import type { Library } from './library.js';
import { fileContent, findEntry, listEntries } from './library-verbs.js';
import type { FileEntry, FilesManifest } from './manifest.js';
import { type StoredFiles, storedBelow } from './stored-listing.js';

/**
 * A folder of a stored version as a POSIX tar stream (pax interchange format, what GNU tar
 * and bsdtar read): names relative to the folder's parent (so `tar x` makes the folder),
 * every name and link target in a pax `path`/`linkpath` record (no 100-byte limit),
 * mtime/atime with their nanoseconds, xattrs as `SCHILY.xattr.*` records, hard links as
 * links to the first path of their inode, device nodes and fifos. Read straight from the
 * manifests and the store, chunk by chunk: memory stays at one chunk whatever the size.
 * Our own writer: tar is a container format, Strata's core, and 120 lines.
 */
export async function* tarOfStored(lib: Library, files: FilesManifest, dir: string): AsyncGenerator<Uint8Array> {
  const d = findEntry(files, dir);
  yield* tarOfEntries(lib, files, d, d.type === 'dir' ? listEntries(files, d.path, true) : []);
}

/**
 * tarOfStored of a streamed manifest (stored-listing.ts): the entry `d` (found by
 * findStoredEntry, so that a missing path fails before any byte is sent) and everything
 * below it, read a part of the manifest at a time.
 */
export function tarOfStoredStreamed(sf: StoredFiles, d: FileEntry): AsyncGenerator<Uint8Array> {
  return tarOfEntries(sf.lib, sf.files, d, d.type === 'dir' ? storedBelow(sf, d, true) : []);
}

/** The tar of `d` and `below` (every entry under it, in the manifest's order). */
async function* tarOfEntries(
  lib: Library,
  files: FilesManifest,
  d: FileEntry,
  below: Iterable<FileEntry> | AsyncIterable<FileEntry>,
): AsyncGenerator<Uint8Array> {
  const base = d.path === '/' ? '/' : d.path.slice(0, d.path.lastIndexOf('/') + 1);
  const firstOfInode = new Map<number, string>();
  async function* all(): AsyncGenerator<FileEntry> {
    if (d.path !== '/') yield d;
    yield* below;
  }
  for await (const e of all()) {
    const name = e.path.slice(base.length) + (e.type === 'dir' ? '/' : '');
    let type: string;
    let linkpath: string | undefined;
    let size = 0;
    if (e.type === 'file' && e.nlink > 1 && firstOfInode.has(e.ino)) {
      type = '1';
      linkpath = firstOfInode.get(e.ino);
    } else if (e.type === 'file') {
      type = '0';
      size = e.size;
      if (e.nlink > 1) firstOfInode.set(e.ino, name);
    } else if (e.type === 'dir') type = '5';
    else if (e.type === 'symlink') {
      type = '2';
      linkpath = e.target ?? '';
    } else if (e.type === 'char') type = '3';
    else if (e.type === 'block') type = '4';
    else if (e.type === 'fifo') type = '6';
    else continue; // sockets: tar has no type for them (GNU tar skips them too)
    const pax: Array<[string, string]> = [['path', name]];
    if (linkpath !== undefined) pax.push(['linkpath', linkpath]);
    if (e.mtime) pax.push(['mtime', paxTime(e.mtime)]);
    if (e.atime) pax.push(['atime', paxTime(e.atime)]);
    if (size > 0o77777777777) pax.push(['size', String(size)]);
    for (const [k, v] of Object.entries(e.xattrs ?? {}))
      pax.push([`SCHILY.xattr.${k}`, Buffer.from(v, 'base64').toString('latin1')]);
    const paxBody = Buffer.concat(pax.map(([k, v]) => paxRecord(k, v)));
    yield header({ name: 'PaxHeader', type: 'x', size: paxBody.length, mode: 0o644, uid: 0, gid: 0, mtime: 0 });
    yield pad(paxBody);
    yield header({
      name,
      type,
      size,
      mode: e.mode & 0o7777,
      uid: e.uid,
      gid: e.gid,
      mtime: e.mtime ? Math.floor(Date.parse(e.mtime) / 1000) : 0,
      linkpath,
      devmajor: e.rdev?.major,
      devminor: e.rdev?.minor,
    });
    if (type === '0' && size > 0) {
      let n = 0;
      for await (const b of fileContent(lib, files, e)) {
        n += b.length;
        yield b;
      }
      if (n !== size) throw new StrataError('CORRUPT', `${e.path}: ${n} bytes read, not ${size}`);
      if (size % 512) yield new Uint8Array(512 - (size % 512));
    }
  }
  yield new Uint8Array(1024);
}

/** ISO time with up to 9 fractional digits -> pax "seconds.fraction". */
function paxTime(iso: string): string {
  const m = /^(.*?)(?:\.(\d+))?Z$/.exec(iso);
  const secs = Math.floor(Date.parse(`${m?.[1] ?? iso}Z`) / 1000);
  return m?.[2] ? `${secs}.${m[2]}` : String(secs);
}

function paxRecord(key: string, value: string): Buffer {
  const body = Buffer.from(` ${key}=${value}\n`, 'utf8');
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function pad(b: Buffer): Buffer {
  return b.length % 512 ? Buffer.concat([b, Buffer.alloc(512 - (b.length % 512))]) : b;
}

interface Header {
  name: string;
  type: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
}

/** A ustar header; long names and large numbers live in the pax record before it. */
function header(h: Header): Buffer {
  const b = Buffer.alloc(512);
  const ascii = (s: string, max: number) => Buffer.from(s, 'utf8').subarray(0, max);
  const octal = (n: number, width: number, at: number) => {
    const s = n >= 0 && n < 8 ** (width - 1) ? n.toString(8).padStart(width - 1, '0') : '0'.repeat(width - 1);
    b.write(s, at, 'ascii');
  };
  ascii(h.name, 100).copy(b, 0);
  octal(h.mode, 8, 100);
  octal(h.uid, 8, 108);
  octal(h.gid, 8, 116);
  octal(h.size, 12, 124);
  octal(h.mtime, 12, 136);
  b.write(h.type, 156, 'ascii');
  if (h.linkpath !== undefined) ascii(h.linkpath, 100).copy(b, 157);
  b.write('ustar\u000000', 257, 'ascii');
  octal(h.devmajor ?? 0, 8, 329);
  octal(h.devminor ?? 0, 8, 337);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 'ascii');
  return b;
}
