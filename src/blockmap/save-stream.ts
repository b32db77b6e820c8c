import { closeSync, mkdtempSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { StreamedMap } from './build.js';
import { headerBytes } from './codec.js';

/** Records buffered per column before they go to the column's scratch file. */
const BATCH = 1 << 14;
/** Bytes a column file is copied (and the strings written) in. */
const COPY = 1 << 20;

/**
 * A block map saved as it streams (issue 22): `blockmap --save` of a tree of millions of
 * files without the map built whole. Each record's fields go to one scratch file per
 * column (the saved form is column by column, and the count is known only at the end);
 * `finish` writes FILE as the header, the columns copied in order and the names read back
 * one by one: the bytes saveBlockMap writes for the same map (codec.ts), with memory
 * bounded by one batch per column and a 1 MiB copy buffer whatever the tree.
 */
export class BlockMapWriter {
  count = 0;
  private readonly dir = mkdtempSync(path.join(tmpdir(), 'strata-mapsave-'));
  private readonly fds: number[] = [];
  private readonly start = new Float64Array(BATCH);
  private readonly ino = new Float64Array(BATCH);
  private readonly objectOffset = new Float64Array(BATCH);
  private readonly name = new Int32Array(BATCH);
  private readonly volume = new Uint16Array(BATCH);
  private readonly kind = new Uint8Array(BATCH);
  private readonly cols = [this.start, this.ino, this.objectOffset, this.name, this.volume, this.kind];
  private held = 0;

  constructor(readonly file: string) {
    try {
      for (let c = 0; c < this.cols.length; c++) this.fds.push(openSync(path.join(this.dir, `col${c}`), 'w+'));
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** The next record in disk order (a RecordSink's fields; its end is the next one's start). */
  add(start: number, kind: number, volume: number, ino: number, name: number, objectOffset: number): void {
    const i = this.held++;
    this.start[i] = start;
    this.kind[i] = kind;
    this.volume[i] = volume;
    this.ino[i] = ino;
    this.name[i] = name;
    this.objectOffset[i] = objectOffset;
    this.count++;
    if (this.held === BATCH) this.flush();
  }

  private flush(): void {
    const before = this.count - this.held;
    for (let c = 0; c < this.cols.length; c++) {
      const a = this.cols[c];
      const w = a.BYTES_PER_ELEMENT;
      writeAll(this.fds[c], new Uint8Array(a.buffer, 0, this.held * w), before * w);
    }
    this.held = 0;
  }

  /**
   * Write FILE (through a temporary file renamed into place) from the columns and the map's
   * names (every id, read while the map's names are still open: streamBlockMap's `end`);
   * `warnings` are the map's (all of them, when some were taken out to be shown early).
   */
  finish(m: StreamedMap, warnings: readonly string[] = m.warnings): void {
    const nameCount = m.nameCount();
    this.flush();
    // the names first, into their own scratch file: their byte count goes in the header
    const sfd = openSync(path.join(this.dir, 'strings'), 'w+');
    this.fds.push(sfd);
    let buf = Buffer.allocUnsafe(COPY);
    let at = 0;
    let stringBytes = 0;
    const out = (fd: number, b: Uint8Array) => {
      writeAll(fd, b, stringBytes);
      stringBytes += b.length;
    };
    for (let id = 0; id < nameCount; id++) {
      const s = id === 0 ? m.name(id) : `\0${m.name(id)}`;
      const need = s.length * 3;
      if (at + need > buf.length) {
        out(sfd, buf.subarray(0, at));
        at = 0;
        if (need > buf.length) buf = Buffer.allocUnsafe(need);
      }
      at += buf.write(s, at, 'utf8');
    }
    out(sfd, buf.subarray(0, at));
    const head = headerBytes({
      diskSize: m.diskSize,
      count: this.count,
      stringCount: nameCount,
      stringBytes,
      volumes: [...m.volumes],
      warnings: [...warnings],
    });
    const base = head.length;
    const tmp = `${this.file}.tmp-${process.pid}`;
    const fd = openSync(tmp, 'w');
    try {
      writeAll(fd, head, 0);
      let pos = base;
      const sizes = [...this.cols.map((a) => this.count * a.BYTES_PER_ELEMENT), stringBytes];
      const copy = buf.length >= COPY ? buf : Buffer.allocUnsafe(COPY);
      for (let c = 0; c < this.fds.length; c++) {
        for (let done = 0; done < sizes[c]; ) {
          const n = readSync(this.fds[c], copy, 0, Math.min(copy.length, sizes[c] - done), done);
          if (n <= 0) throw new Error(`block map scratch column ${c} ended early`);
          writeAll(fd, copy.subarray(0, n), pos);
          done += n;
          pos += n;
        }
      }
    } catch (e) {
      closeSync(fd);
      rmSync(tmp, { force: true });
      throw e;
    }
    closeSync(fd);
    renameSync(tmp, this.file);
  }

  /** Remove the scratch files (idempotent). */
  dispose(): void {
    for (const fd of this.fds.splice(0)) closeSync(fd);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function writeAll(fd: number, b: Uint8Array, at: number): void {
  for (let done = 0; done < b.length; ) done += writeSync(fd, b, done, b.length - done, at + done);
}
