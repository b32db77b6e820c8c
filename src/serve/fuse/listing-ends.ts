import { writeSync } from 'node:fs';
import { constants } from 'node:os';
import { nativeFuseRead } from '../../io/native.js';
import { IN_HEADER, Op, OUT_HEADER, readRequest } from './protocol.js';

/**
 * How long each fully handed-out directory listing is, by node id, in shared memory: the main
 * thread writes, the reader thread reads (reader-worker.ts answers the READDIR past a
 * listing's end itself). Direct-mapped: a node id owns slot `id mod SLOTS`, a newer id takes
 * the slot over (the older one's end then costs the hop again). Node ids are never reused and
 * a read-only listing never changes, so a slot that names an id holds that id's length; the
 * reader checks the id before and after reading the length, which the writer brackets with
 * id 0, so it never pairs one id with another's length.
 */
export class ListingEndsView {
  static readonly SLOTS = 1 << 14;
  /** Two slots per directory: its node id and its listing's length. */
  readonly a: BigInt64Array;
  /** [0]: READDIRs answered by the reader thread. */
  readonly stats: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.a = new BigInt64Array(buffer, 0, 2 * ListingEndsView.SLOTS);
    this.stats = new Int32Array(buffer, 16 * ListingEndsView.SLOTS, 1);
  }

  static create(): ListingEndsView {
    return new ListingEndsView(new SharedArrayBuffer(16 * ListingEndsView.SLOTS + 8));
  }

  /** The listing of directory `id` has `count` entries (cookies 1..count), all handed out. */
  set(id: bigint, count: number): void {
    const s = 2 * (Number(id) & (ListingEndsView.SLOTS - 1));
    if (Atomics.load(this.a, s) === id && Atomics.load(this.a, s + 1) === BigInt(count)) return;
    Atomics.store(this.a, s, 0n);
    Atomics.store(this.a, s + 1, BigInt(count));
    Atomics.store(this.a, s, id);
  }

  get(id: bigint): number | undefined {
    const s = 2 * (Number(id) & (ListingEndsView.SLOTS - 1));
    if (id === 0n || Atomics.load(this.a, s) !== id) return undefined;
    const count = Atomics.load(this.a, s + 1);
    return Atomics.load(this.a, s) === id ? Number(count) : undefined;
  }

  answered(): void {
    Atomics.add(this.stats, 0, 1);
  }

  /** READDIRs the reader thread answered. */
  get answeredCount(): number {
    return Atomics.load(this.stats, 0);
  }
}

const EMPTY = Buffer.alloc(OUT_HEADER);
EMPTY.writeUInt32LE(OUT_HEADER, 0);

/**
 * If the request of `n` bytes in `buf` is a READDIR at or past the known end of its
 * directory's listing, write the empty reply that tells the kernel the end (one write(2)) and
 * say true; else false, and the request is for the server to answer (as it is when the write
 * fails: it meets the error again).
 */
export function answerListingEnd(fd: number, buf: Buffer, n: number, table: ListingEndsView): boolean {
  if (n < IN_HEADER + 24) return false;
  const op = buf.readUInt32LE(4);
  if (op !== Op.READDIR && op !== Op.READDIRPLUS) return false;
  if (buf.readUInt32LE(0) > n) return false;
  const count = table.get(buf.readBigUInt64LE(16));
  if (count === undefined || Number(buf.readBigUInt64LE(IN_HEADER + 8)) < count) return false;
  buf.copy(EMPTY, 8, 8, 16); // the request's unique
  try {
    writeSync(fd, EMPTY);
  } catch {
    return false;
  }
  table.answered();
  return true;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([k, v]) => [v, k]));

/**
 * The next request from /dev/fuse (its length in `buf`), or why the connection ended, with the
 * READDIRs past a listing's end in `table` answered on the way: natively where the addon is
 * (native/fuseread.c: those requests never reach JavaScript), else by answerListingEnd.
 */
export function readRequestPastEnds(fd: number, buf: Buffer, table: ListingEndsView | undefined): number | string {
  const read = table && nativeFuseRead();
  if (table && read) {
    const n = read(fd, buf, table.a, table.stats);
    if (n > 0) return n;
    if (n === 0) return 'unmounted';
    const code = ERRNO_NAMES.get(-n) ?? `errno ${-n}`;
    return code === 'ENODEV' ? 'unmounted' : `read /dev/fuse: ${code}`;
  }
  for (;;) {
    const n = readRequest(fd, buf);
    if (typeof n === 'string') return n;
    if (table && answerListingEnd(fd, buf, n, table)) continue;
    return n;
  }
}
