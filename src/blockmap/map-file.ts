import { isUtf8 } from 'node:buffer';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { StrataError } from '../util/errors.js';
import { type KindSummary, kindRows, lastAtMost, type MapVolume, type Owner, ownerOf, rangeEnd } from './block-map.js';
import { checkRecords, type MapLayout, parseMapHeader } from './codec.js';

/**
 * The records of a block map, one field at a time: what resolving a trace asks of a map,
 * whether the map is held (BlockMap) or read from its saved file on demand (MapFile).
 */
export interface MapRecords {
  readonly diskSize: number;
  readonly count: number;
  readonly volumes: readonly MapVolume[];
  /** How many names (ids 0 .. nameCount-1). */
  readonly nameCount: number;
  /** Index of the record holding disk byte `offset` (-1 outside the disk). */
  indexOf(offset: number): number;
  startOf(i: number): number;
  /** End of record i (exclusive): the next one's start, or the disk size. */
  endOf(i: number): number;
  kindOf(i: number): number;
  volumeOf(i: number): number;
  inoOf(i: number): number;
  /** Name id of record i (NO_NAME: none). */
  nameOf(i: number): number;
  /** The name (path or detail) of an id. */
  name(id: number): string;
  /** Record i, clipped to [from, to). */
  owner(i: number, from: number, to: number): Owner;
}

/** Records per page of the column cache; pages held (direct-mapped by page number). */
const PAGE = 512;
const SLOTS = 128;
/** Every NAME_STEP-th name's offset is held; the others are found by scanning from it. */
const NAME_STEP = 64;
/** Bytes read at a time when scanning the string table. */
const WINDOW = 1 << 16;
/** Records checked at a time when a map file is opened. */
const CHECK_BATCH = 1 << 15;

interface Slot {
  page: number;
  /** Columns read (bit c: column c of COLUMNS). */
  have: number;
  start: Float64Array;
  ino: Float64Array;
  objectOffset: Float64Array;
  name: Int32Array;
  volume: Uint16Array;
  kind: Uint8Array;
}

/** Column order and width in the saved form (codec.ts). */
const WIDTH = [8, 8, 8, 4, 2, 1];
const START = 0;
const INO = 1;
const OBJ = 2;
const NAME = 3;
const VOL = 4;
const KIND = 5;

/**
 * A block map saved by `blockmap --save` (codec.ts), read from its file on demand instead
 * of loaded whole (issue 22: a map of millions of records and paths). Held in memory: the
 * header, every PAGE-th record's start (lookups are a binary search over those, then one
 * page), every NAME_STEP-th name's offset in the string table, and a small cache of
 * column pages: about 1/50 of the file's size plus ~2 MiB, whatever the tree. Opening
 * checks the whole file as loadBlockMap does (in one pass, a batch at a time), unless it
 * is a scratch file this process just wrote (`trusted`).
 */
export class MapFile implements MapRecords {
  readonly diskSize: number;
  readonly count: number;
  readonly volumes: readonly MapVolume[];
  readonly warnings: string[];
  readonly nameCount: number;
  private readonly fd: number;
  private readonly layout: MapLayout;
  private readonly colAt: number[];
  private readonly firstOfPage: Float64Array;
  private readonly nameAt: Float64Array;
  private readonly slots: Slot[] = [];
  private window = Buffer.allocUnsafe(WINDOW);
  /** String-table offset of window[0]; bytes of the window that are read. */
  private windowAt = -1;
  private windowLen = 0;
  /** The name after the last one read (sequential reads scan on from there). */
  private nextId = -1;
  private nextAt = 0;
  private closed = false;

  private constructor(
    readonly file: string,
    fd: number,
    private readonly onClose?: () => void,
    trusted = false,
  ) {
    this.fd = fd;
    const size = fstatSync(fd).size;
    this.layout = parseMapHeader((at, length) => this.readAt(at, length), size, file);
    const h = this.layout.header;
    this.diskSize = h.diskSize;
    this.count = h.count;
    this.volumes = h.volumes;
    this.warnings = h.warnings;
    this.nameCount = h.stringCount;
    this.colAt = [];
    let at = this.layout.base;
    for (const w of WIDTH) {
      this.colAt.push(at);
      at += w * this.count;
    }
    for (let s = 0; s < SLOTS; s++) {
      this.slots.push({
        page: -1,
        have: 0,
        start: new Float64Array(PAGE),
        ino: new Float64Array(PAGE),
        objectOffset: new Float64Array(PAGE),
        name: new Int32Array(PAGE),
        volume: new Uint16Array(PAGE),
        kind: new Uint8Array(PAGE),
      });
    }
    this.nameAt = new Float64Array(Math.ceil(this.nameCount / NAME_STEP) + 1);
    this.indexNames(trusted);
    this.firstOfPage = new Float64Array(Math.ceil(this.count / PAGE));
    this.checkAndIndex(trusted);
  }

  /**
   * Open a saved map. `trusted`: the file was written by this process (a scratch map), so
   * its records are not checked again; `onClose` runs after close (to remove a scratch file).
   */
  static open(file: string, opts: { trusted?: boolean; onClose?: () => void } = {}): MapFile {
    const fd = openSync(file, 'r');
    try {
      return new MapFile(file, fd, opts.onClose, opts.trusted);
    } catch (e) {
      closeSync(fd);
      opts.onClose?.();
      throw e;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
    this.onClose?.();
  }

  private readAt(at: number, length: number, into: Uint8Array = new Uint8Array(length)): Uint8Array {
    let got = 0;
    while (got < length) {
      const n = readSync(this.fd, into, got, length - got, at + got);
      if (n === 0) {
        throw new StrataError('CORRUPT', 'block map file ended early', {
          file: this.file,
          structure: 'block map',
          offset: at + got,
        });
      }
      got += n;
    }
    return into;
  }

  /** One pass over the string table: counts its names (and checks UTF-8 unless trusted), keeps every NAME_STEP-th offset. */
  private indexNames(trusted: boolean): void {
    const { stringBytes, stringCount } = this.layout.header;
    const at0 = this.layout.stringsAt;
    if (stringCount === 0) return;
    const notUtf8 = () =>
      new StrataError('CORRUPT', 'string table is not valid UTF-8', {
        file: this.file,
        structure: 'block map strings',
        offset: at0,
      });
    // checked a window of whole names at a time with isUtf8 (no string made: decoding each
    // window into a discarded string left ~60 MiB of external strings for a collection to
    // find at 1,000,000 names); a NUL never sits inside a UTF-8 sequence, so a window cut
    // after its last NUL holds whole sequences. A window without one (a name of 1 MiB and
    // more) goes through a streaming decoder.
    const decoder = trusted ? undefined : new TextDecoder('utf-8', { fatal: true });
    /** The last window ended inside a name: the decoder holds its unfinished sequence. */
    let midName = false;
    const buf = Buffer.allocUnsafe(1 << 20);
    let id = 0;
    this.nameAt[0] = 0;
    for (let done = 0; done < stringBytes; ) {
      const n = Math.min(buf.length, stringBytes - done);
      this.readAt(at0 + done, n, buf);
      let chunk = buf.subarray(0, n);
      const final = done + n === stringBytes;
      const last = chunk.lastIndexOf(0);
      if (!final && last >= 0) chunk = chunk.subarray(0, last + 1);
      const endsClean = final || last >= 0;
      if (decoder) {
        try {
          if (midName || !endsClean) {
            decoder.decode(chunk, { stream: !endsClean });
            midName = !endsClean;
          } else if (!isUtf8(chunk)) throw notUtf8();
        } catch {
          throw notUtf8();
        }
      }
      for (let k = chunk.indexOf(0); k >= 0; k = chunk.indexOf(0, k + 1)) {
        id++;
        if (id < stringCount && id % NAME_STEP === 0) this.nameAt[id / NAME_STEP] = done + k + 1;
      }
      done += chunk.length;
    }
    if (id + 1 !== stringCount) {
      throw new StrataError('CORRUPT', `string table holds ${id + 1} strings, header says ${stringCount}`, {
        file: this.file,
        structure: 'block map strings',
        offset: at0,
      });
    }
  }

  /** One pass over the records: every PAGE-th start kept, each record checked (unless trusted). */
  private checkAndIndex(trusted: boolean): void {
    const n0 = Math.min(CHECK_BATCH, this.count);
    const cols = {
      start: new Float64Array(n0),
      ino: new Float64Array(trusted ? 0 : n0),
      objectOffset: new Float64Array(trusted ? 0 : n0),
      name: new Int32Array(trusted ? 0 : n0),
      volume: new Uint16Array(trusted ? 0 : n0),
      kind: new Uint8Array(trusted ? 0 : n0),
    };
    const arrays = [cols.start, cols.ino, cols.objectOffset, cols.name, cols.volume, cols.kind];
    let prev = 0;
    for (let from = 0; from < this.count; from += CHECK_BATCH) {
      const n = Math.min(CHECK_BATCH, this.count - from);
      for (let c = 0; c < arrays.length; c++) {
        if (trusted && c !== START) continue;
        const a = arrays[c];
        this.readAt(this.colAt[c] + from * WIDTH[c], n * WIDTH[c], new Uint8Array(a.buffer, 0, n * WIDTH[c]));
      }
      if (!trusted) checkRecords(cols, from, n, prev, this.layout, this.file);
      for (let j = (PAGE - (from % PAGE)) % PAGE; j < n; j += PAGE) this.firstOfPage[(from + j) / PAGE] = cols.start[j];
      prev = cols.start[n - 1];
    }
  }

  /** The cache slot holding record i's page with column c read. */
  private slot(i: number, c: number): Slot {
    const page = (i / PAGE) | 0;
    const s = this.slots[page % SLOTS];
    if (s.page !== page) {
      s.page = page;
      s.have = 0;
    }
    if ((s.have & (1 << c)) === 0) {
      const from = page * PAGE;
      const n = Math.min(PAGE, this.count - from);
      const a = [s.start, s.ino, s.objectOffset, s.name, s.volume, s.kind][c];
      this.readAt(this.colAt[c] + from * WIDTH[c], n * WIDTH[c], new Uint8Array(a.buffer, 0, n * WIDTH[c]));
      s.have |= 1 << c;
    }
    return s;
  }

  indexOf(offset: number): number {
    if (!(offset >= 0 && offset < this.diskSize)) return -1;
    const from = lastAtMost(this.firstOfPage, offset, 0, this.firstOfPage.length - 1) * PAGE;
    return from + lastAtMost(this.slot(from, START).start, offset, 0, Math.min(PAGE, this.count - from) - 1);
  }

  startOf(i: number): number {
    return this.slot(i, START).start[i % PAGE];
  }

  endOf(i: number): number {
    return i + 1 < this.count ? this.startOf(i + 1) : this.diskSize;
  }

  kindOf(i: number): number {
    return this.slot(i, KIND).kind[i % PAGE];
  }

  volumeOf(i: number): number {
    return this.slot(i, VOL).volume[i % PAGE];
  }

  inoOf(i: number): number {
    return this.slot(i, INO).ino[i % PAGE];
  }

  nameOf(i: number): number {
    return this.slot(i, NAME).name[i % PAGE];
  }

  objectOffsetOf(i: number): number {
    return this.slot(i, OBJ).objectOffset[i % PAGE];
  }

  owner(i: number, from: number, to: number): Owner {
    const start = this.startOf(i);
    const s = Math.max(from, start);
    const e = Math.min(to, this.endOf(i));
    const into = this.objectOffsetOf(i) + (s - start);
    return ownerOf(
      this.volumes,
      (id) => this.name(id),
      s,
      e,
      this.kindOf(i),
      this.volumeOf(i),
      this.inoOf(i),
      this.nameOf(i),
      into,
    );
  }

  /** Every owner of disk bytes [offset, offset+length), clipped to that range (BlockMap.whatis). */
  whatis(offset: number, length = 1): Owner[] {
    const to = rangeEnd(offset, length, this.diskSize);
    const out: Owner[] = [];
    for (let i = this.indexOf(offset); i < this.count && this.startOf(i) < to; i++) out.push(this.owner(i, offset, to));
    return out;
  }

  /** Every record, in disk order, read a page at a time (BlockMap.records). */
  *records(): Generator<Owner> {
    for (let i = 0; i < this.count; i++) yield this.owner(i, this.startOf(i), this.endOf(i));
  }

  /** Bytes and records per kind (BlockMap.summary), from the kind and start columns alone. */
  summary(): KindSummary[] {
    const bytes = new Float64Array(256);
    const recs = new Float64Array(256);
    for (let i = 0; i < this.count; i++) {
      const k = this.kindOf(i);
      bytes[k] += this.endOf(i) - this.startOf(i);
      recs[k]++;
    }
    return kindRows(bytes, recs);
  }

  /**
   * The name of an id, read from the string table: scanning on from the last one read
   * (names asked for in id order cost one pass), else from the nearest held offset.
   */
  name(id: number): string {
    if (!(id >= 0 && id < this.nameCount)) throw new RangeError(`name id ${id} out of range`);
    let at: number;
    let k: number;
    if (id >= this.nextId && this.nextId >= 0 && id - this.nextId < NAME_STEP) {
      at = this.nextAt;
      k = this.nextId;
    } else {
      k = id - (id % NAME_STEP);
      at = this.nameAt[k / NAME_STEP];
    }
    for (;;) {
      const end = this.endOfName(at);
      if (k === id) {
        this.nextId = id + 1;
        this.nextAt = end + 1;
        const s = this.window.toString('utf8', at - this.windowAt, end - this.windowAt);
        // the whole table is decoded as one text when a map is loaded: a leading BOM is dropped
        return id === 0 && s.charCodeAt(0) === 0xfeff ? s.slice(1) : s;
      }
      at = end + 1;
      k++;
    }
  }

  /** Offset of the NUL after the name at `at` (or the table's end), with the window holding [at, that). */
  private endOfName(at: number): number {
    const total = this.layout.header.stringBytes;
    for (;;) {
      if (at >= this.windowAt && this.windowAt >= 0) {
        const from = at - this.windowAt;
        const k = this.window.subarray(0, this.windowLen).indexOf(0, from);
        if (k >= 0) return this.windowAt + k;
        if (this.windowAt + this.windowLen >= total) return total;
        if (from === 0 && this.windowLen === this.window.length)
          this.window = Buffer.allocUnsafe(this.window.length * 2);
      }
      const n = Math.min(this.window.length, total - at);
      this.readAt(this.layout.stringsAt + at, n, this.window);
      this.windowAt = at;
      this.windowLen = n;
    }
  }
}
