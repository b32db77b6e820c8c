import { read as readCb, readSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { StrataError } from '../util/errors.js';
import { type ByteSource, clampRead, clampStatus, type Extent } from './byte-source.js';
import { seekStatus } from './native.js';

/**
 * Reads up to this size are tried synchronously first. On this kind of VM a read handed to
 * libuv's thread pool costs ~0.1 ms in the hand-off alone, while a page-cache hit read in
 * place costs a few microseconds: NBD's 4 KiB random reads and a file-system walk's
 * metadata reads are mostly such hits. Two synchronous reads in a row that took longer than
 * SLOW_NS (the data came from the disk) send the next BACKOFF_READS reads back to the pool,
 * so a cold or slow file blocks the event loop for two reads in BACKOFF_READS at most. One
 * slow read alone is not enough: on a 2-core VM the thread is often just descheduled for a
 * millisecond (a GC helper thread ran), and backing off then sent ~300 of the ~570 reads of
 * an `ls -R` to the pool at ~0.1 ms each (2 runs in 3).
 */
const SYNC_MAX = 64 * 1024;
const SLOW_NS = 1_000_000n;
const BACKOFF_READS = 1024;

/** A local file read with positional reads (no shared file position, safe to overlap). */
export class FileSource implements ByteSource {
  /** Reads left to hand to the thread pool before trying a synchronous one again. */
  private backoff = 0;
  /** Whether the last synchronous read was slow. */
  private lastSlow = false;

  private constructor(
    private readonly fh: FileHandle,
    readonly name: string,
    readonly size: number,
  ) {}

  /** Every read is a new buffer (see ByteSource.freshReads). */
  readonly freshReads = true;

  get fd(): number {
    return this.fh.fd;
  }

  static async open(path: string): Promise<FileSource> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new StrataError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `cannot open: ${(e as Error).message}`, {
        file: path,
      });
    }
    const st = await fh.stat();
    if (st.isDirectory()) {
      await fh.close();
      throw new StrataError('USAGE', 'is a directory, not an image', { file: path });
    }
    let size = st.size;
    if (st.isBlockDevice()) {
      // Block devices report size 0 in stat; find the end by seeking with a read probe.
      size = await blockDeviceSize(fh);
    }
    return new FileSource(fh, path, size);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const n = clampRead(this, offset, length);
    const buf = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const bytesRead = await this.pread(buf, done, n - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < n) buf.fill(0, done); // file shrank under us: never hand out stale memory
    return buf;
  }

  async readInto(offset: number, out: Uint8Array): Promise<number> {
    const n = clampRead(this, offset, out.length);
    let done = 0;
    while (done < n) {
      const bytesRead = await this.pread(out, done, n - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (done < n) out.fill(0, done, n); // file shrank under us: never hand out stale memory
    return n;
  }

  /**
   * Holes of a sparse file are `zero`, found with SEEK_DATA/SEEK_HOLE (native/seek.c), so a
   * raw image, a qcow2 data file or a vmdk flat extent shows what `qemu-img map` shows;
   * everything is `data` where the addon is not built.
   */
  async status(offset: number, length: number): Promise<Extent[]> {
    const n = clampStatus(this, offset, length);
    if (n === 0) return [];
    return seekStatus(this.fh.fd, offset, n) ?? [{ offset, length: n, kind: 'data' }];
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** One positional read: in place when small and the file has been answering fast, else on the pool. */
  private pread(buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
    if (length > SYNC_MAX) return pread(this.fh.fd, buf, at, length, position);
    if (this.backoff > 0) {
      this.backoff--;
      return pread(this.fh.fd, buf, at, length, position);
    }
    const t0 = process.hrtime.bigint();
    let n: number;
    try {
      n = readSync(this.fh.fd, buf, at, length, position);
    } catch (e) {
      return Promise.reject(e);
    }
    const slow = process.hrtime.bigint() - t0 > SLOW_NS;
    if (slow && this.lastSlow) {
      this.backoff = BACKOFF_READS;
      this.lastSlow = false;
    } else this.lastSlow = slow;
    return Promise.resolve(n);
  }
}

/**
 * One positional read through fs.read's callback form: about half the CPU of
 * FileHandle.read's promise form per call, which shows on 4 KiB random reads (NBD, fio).
 */
function pread(fd: number, buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    readCb(fd, buf, at, length, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
  });
}

async function blockDeviceSize(fh: FileHandle): Promise<number> {
  const one = Buffer.alloc(1);
  let lo = 0;
  let hi = 1;
  while ((await fh.read(one, 0, 1, hi - 1)).bytesRead === 1 && hi < 2 ** 53) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if ((await fh.read(one, 0, 1, mid - 1)).bytesRead === 1) lo = mid;
    else hi = mid;
  }
  return lo;
}
