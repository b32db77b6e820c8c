import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fdatasyncSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';

/**
 * The durable state of a deploy, beside TARGET (TARGET.strata-deploy): an append-only log.
 *
 *   header:  "STRDPLY1" | u32 json length | json | u32 check
 *   records: u8 kind | 3 zero bytes | u32 first block | u32 block count | u32 check   (16 bytes)
 *
 * `check` is the first 4 bytes of the sha256 of what precedes it in the record. A record is
 * appended only after the bytes it vouches for were made durable (fdatasync of TARGET), so
 * after a crash nothing is marked local that is not on disk; a torn or garbled tail is where
 * reading stops (at most the in-flight ranges are fetched again). A new header (another
 * version deployed over this TARGET) replaces the file atomically (temporary file, fsync,
 * rename, fsync of the folder).
 */
export const STATE_SUFFIX = '.strata-deploy';
const MAGIC = Buffer.from('STRDPLY1');
const RECORD = 16;

/** Ranges of blocks that hold the version's bytes. */
export const KIND_LOCAL = 1;
/** Blocks the guest wrote: they hold neither this version nor, later, any other. */
export const KIND_DIRTY = 2;

export interface DeployHeader {
  kind: 'strata.deploy';
  version: 1;
  /** What is being deployed: `manifest:<digest>` for a library version, else a source name and size. */
  source: string;
  /** The layout manifest's digest, when the source is a library version (differential deploys need it). */
  manifest?: string;
  size: number;
  blockSize: number;
  /** TARGET read as zeros where nothing was written (a new sparse file). */
  zeroTarget: boolean;
}

function check(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest().subarray(0, 4);
}

export interface LoadedState {
  header: DeployHeader;
  local: Uint8Array;
  dirty: Uint8Array;
  /** Bytes of the log that are sound (where the next record goes). */
  end: number;
}

/** Read a state file; undefined when there is none. A bad header is an error, a bad tail is dropped. */
export function loadState(file: string): LoadedState | undefined {
  if (!existsSync(file)) return undefined;
  const b = readFileSync(file);
  const bad = (why: string, offset: number) =>
    new StrataError('CORRUPT', `deploy state: ${why}`, { file, structure: 'deploy state header', offset });
  if (b.length < 16 || !b.subarray(0, 8).equals(MAGIC)) throw bad('not a Strata deploy state', 0);
  const n = b.readUInt32LE(8);
  if (n > 1 << 20 || 12 + n + 4 > b.length) throw bad('header length runs past the file', 8);
  const json = b.subarray(12, 12 + n);
  if (!check(b.subarray(0, 12 + n)).equals(b.subarray(12 + n, 16 + n))) throw bad('header check mismatch', 12 + n);
  let header: DeployHeader;
  try {
    header = JSON.parse(json.toString('utf8')) as DeployHeader;
  } catch {
    throw bad('header is not JSON', 12);
  }
  if (
    header?.kind !== 'strata.deploy' ||
    header.version !== 1 ||
    !Number.isSafeInteger(header.size) ||
    header.size < 0 ||
    !Number.isSafeInteger(header.blockSize) ||
    header.blockSize < 4096
  ) {
    throw bad('not a version 1 deploy header', 12);
  }
  const blocks = Math.ceil(header.size / header.blockSize);
  const local = new Uint8Array(blocks);
  const dirty = new Uint8Array(blocks);
  let at = 16 + n;
  while (at + RECORD <= b.length) {
    const r = b.subarray(at, at + RECORD);
    if (!check(r.subarray(0, 12)).equals(r.subarray(12, 16))) break;
    const kind = r[0];
    const first = r.readUInt32LE(4);
    const count = r.readUInt32LE(8);
    if ((kind !== KIND_LOCAL && kind !== KIND_DIRTY) || first + count > blocks) break;
    (kind === KIND_LOCAL ? local : dirty).fill(1, first, first + count);
    at += RECORD;
  }
  return { header, local, dirty, end: at };
}

/** The log, open for appending. */
export class StateLog {
  private constructor(
    readonly file: string,
    private fd: number,
    private at: number,
  ) {}

  /** Start a new log (atomically replacing any), holding `header` and the given local/dirty runs. */
  static create(file: string, header: DeployHeader, local?: Uint8Array, dirty?: Uint8Array): StateLog {
    const tmp = `${file}.tmp`;
    const json = Buffer.from(JSON.stringify(header));
    const head = Buffer.alloc(12 + json.length);
    MAGIC.copy(head, 0);
    head.writeUInt32LE(json.length, 8);
    json.copy(head, 12);
    const parts: Buffer[] = [head, check(head)];
    for (const [kind, map] of [
      [KIND_LOCAL, local],
      [KIND_DIRTY, dirty],
    ] as const) {
      if (map) for (const [first, count] of runsOf(map)) parts.push(record(kind, first, count));
    }
    const all = Buffer.concat(parts);
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, all, 0, all.length, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    syncDir(path.dirname(file));
    return new StateLog(file, openSync(file, 'r+'), all.length);
  }

  /** Reopen a loaded log for appending after its last sound record (a bad tail is overwritten). */
  static reopen(file: string, end: number): StateLog {
    return new StateLog(file, openSync(file, 'r+'), end);
  }

  /** Append records for [first, first+count) runs; durable only after sync(). */
  append(kind: number, runs: Iterable<[number, number]>): void {
    const parts: Buffer[] = [];
    for (const [first, count] of runs) parts.push(record(kind, first, count));
    if (parts.length === 0) return;
    const b = Buffer.concat(parts);
    writeSync(this.fd, b, 0, b.length, this.at);
    this.at += b.length;
  }

  sync(): void {
    fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function record(kind: number, first: number, count: number): Buffer {
  const r = Buffer.alloc(RECORD);
  r[0] = kind;
  r.writeUInt32LE(first, 4);
  r.writeUInt32LE(count, 8);
  check(r.subarray(0, 12)).copy(r, 12);
  return r;
}

/** Runs of set entries: [first, count]. */
export function* runsOf(map: Uint8Array): Generator<[number, number]> {
  let i = 0;
  while (i < map.length) {
    if (!map[i]) {
      i++;
      continue;
    }
    const s = i;
    while (i < map.length && map[i]) i++;
    yield [s, i - s];
  }
}

/** Runs of a sorted list of distinct block numbers. */
export function* runsOfList(blocks: number[]): Generator<[number, number]> {
  let i = 0;
  while (i < blocks.length) {
    const s = blocks[i];
    let n = 1;
    while (i + n < blocks.length && blocks[i + n] === s + n) n++;
    yield [s, n];
    i += n;
  }
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
