/**
 * One copier of the bulk copy (direct-copy.ts): claims jobs from the shared ring, reads
 * their bytes with positional reads on the calling thread (no thread-pool hop per read),
 * skips zero granules and writes the rest. The copy workers run one each; the main thread
 * runs one while the workers start. See direct-copy-protocol.ts for the layout.
 */
import { readSync, writeSync } from 'node:fs';
import { pageAlignedBuffer } from '../../util/aligned.js';
import { isZeroRange } from '../../util/zero.js';
import {
  BYTES_DONE,
  BYTES_WRITTEN,
  CLAIMED,
  type CopyWorkerData,
  END,
  PUBLISHED,
  SEG_INLINE,
  SEG_ZERO,
  SLEEPERS,
  SLOT_WORDS,
  STOP,
  TURN,
  WANT_CLAIMED,
  WANT_INLINE,
} from './direct-copy-protocol.js';

/** A failed read or write: which side, which descriptor, where. */
export class CopyFailure extends Error {
  constructor(
    message: string,
    readonly side: 'read' | 'write',
    readonly fd: number,
    readonly offset: number,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** Where the non-zero clusters of one job went (qcow2): see DirectTarget.adopt. */
export type AdoptFn = (virt: number, host: number, flags: Uint8Array, count: number) => void;

/** Spins before sleeping: a sleeping thread's wake-up costs ~0.1 ms of a core on this kind of VM. */
const SPINS = 2000;

export class JobCopier {
  private readonly ctl: Int32Array;
  private readonly jobs: Float64Array;
  private readonly inline: Uint8Array;
  private readonly inlineBusy: Int32Array;
  private readonly progress: BigInt64Array;
  private readonly head: Float64Array;
  private readonly gran: number;
  private readonly own: Buffer;
  private readonly flags: Uint8Array;
  /** The job copied out of its ring slot (before claiming it: see step). */
  private readonly job = new Float64Array(SLOT_WORDS);

  constructor(
    private readonly d: CopyWorkerData,
    private readonly adopt: AdoptFn,
  ) {
    this.ctl = new Int32Array(d.ctl);
    this.jobs = new Float64Array(d.jobs);
    this.inline = new Uint8Array(d.inline);
    this.inlineBusy = new Int32Array(d.inlineBusy);
    this.progress = new BigInt64Array(d.progress);
    this.head = new Float64Array(d.head);
    this.gran = d.granularity;
    this.own = pageAlignedBuffer(d.jobBytes);
    this.flags = new Uint8Array(Math.ceil(d.jobBytes / this.gran));
  }

  /** Copy jobs until the ring is ended and empty, or STOP. */
  run(): void {
    const ctl = this.ctl;
    for (;;) {
      if (Atomics.load(ctl, STOP)) return;
      const p = Atomics.load(ctl, PUBLISHED);
      if (this.step()) continue;
      if (Atomics.load(ctl, END) && Atomics.load(ctl, CLAIMED) >= Atomics.load(ctl, PUBLISHED)) return;
      Atomics.add(ctl, SLEEPERS, 1);
      this.waitWhile(PUBLISHED, p, END);
      Atomics.sub(ctl, SLEEPERS, 1);
    }
  }

  /** Claim and copy one job; false when none is published (or STOP). */
  step(): boolean {
    const ctl = this.ctl;
    const job = this.job;
    for (;;) {
      if (Atomics.load(ctl, STOP)) return false;
      const c = Atomics.load(ctl, CLAIMED);
      if (c >= Atomics.load(ctl, PUBLISHED)) return false;
      // Copy the slot out first, then claim: the main thread refills a slot as soon as CLAIMED
      // passes it, so what we copied is job c exactly when our claim of c succeeds.
      const slot = (c % this.d.ringSize) * SLOT_WORDS;
      job.set(this.jobs.subarray(slot, slot + SLOT_WORDS));
      if (Atomics.compareExchange(ctl, CLAIMED, c, c + 1) !== c) continue;
      const want = Atomics.load(ctl, WANT_CLAIMED);
      if (want !== 0 && c + 1 >= want) Atomics.notify(ctl, CLAIMED);
      const { buf, release } = this.load();
      if (this.d.layout === 'qcow2') this.copyQcow2(c, job[0], buf);
      else this.copyRaw(job[0], buf);
      if (release !== undefined) {
        Atomics.store(this.inlineBusy, release, 0);
        if (Atomics.load(ctl, WANT_INLINE) === release + 1) Atomics.notify(this.inlineBusy, release);
      }
      Atomics.add(this.progress, BYTES_DONE, BigInt(job[1]));
      return true;
    }
  }

  /**
   * Wait until `ctl[i]` is not `value`, or STOP (or the flag `orFlag`, when given, e.g. END:
   * nothing more will be published) is set. Spins briefly first.
   */
  private waitWhile(i: number, value: number, orFlag = STOP): void {
    const ctl = this.ctl;
    const over = () => Atomics.load(ctl, STOP) !== 0 || Atomics.load(ctl, orFlag) !== 0;
    for (let spin = 0; spin < SPINS; spin++) if (Atomics.load(ctl, i) !== value || over()) return;
    while (Atomics.load(ctl, i) === value && !over()) Atomics.wait(ctl, i, value, 20);
  }

  /** The job's bytes, in this copier's buffer or in its inline slot. */
  private load(): { buf: Uint8Array; release?: number } {
    const job = this.job;
    const len = job[1];
    const nseg = job[2];
    if (nseg === 1 && job[3] === SEG_INLINE) {
      const k = job[4];
      const at = k * this.d.jobBytes;
      return { buf: this.inline.subarray(at, at + len), release: k };
    }
    let at = 0;
    for (let s = 3; s < 3 + nseg * 3; s += 3) {
      const fd = job[s];
      const n = job[s + 2];
      if (fd === SEG_ZERO) this.own.fill(0, at, at + n);
      else readAll(fd, this.own, at, n, job[s + 1]);
      at += n;
    }
    return { buf: this.own.subarray(0, len) };
  }

  private copyRaw(virt: number, buf: Uint8Array): void {
    const n = buf.length;
    const gran = this.gran;
    let p = 0;
    while (p < n) {
      while (p < n && isZeroRange(buf, p, Math.min(n, p + gran))) p += gran;
      if (p >= n) break;
      let q = p;
      while (q < n && !isZeroRange(buf, q, Math.min(n, q + gran))) q += gran;
      q = Math.min(q, n);
      this.write(buf, p, q, virt + p);
      p = q;
    }
  }

  private copyQcow2(job: number, virt: number, buf: Uint8Array): void {
    const ctl = this.ctl;
    const gran = this.gran;
    const flags = this.flags;
    const n = buf.length;
    const count = Math.ceil(n / gran);
    let k = 0;
    for (let i = 0; i < count; i++) {
      const z = isZeroRange(buf, i * gran, Math.min(n, (i + 1) * gran));
      flags[i] = z ? 0 : 1;
      if (!z) k++;
    }
    // Host clusters in virtual order: wait for the jobs before this one to take theirs.
    for (;;) {
      // One load for both the test and the wait: reloading for the wait could see our own turn and sleep on it.
      const t = Atomics.load(ctl, TURN);
      if (t === job) break;
      if (Atomics.load(ctl, STOP)) return;
      this.waitWhile(TURN, t);
    }
    const host = this.head[0];
    this.head[0] = host + k * gran;
    Atomics.store(ctl, TURN, job + 1);
    Atomics.notify(ctl, TURN);
    if (k === 0) return;
    let h = host;
    for (let i = 0; i < count; ) {
      if (!flags[i]) {
        i++;
        continue;
      }
      let j = i;
      while (j < count && flags[j]) j++;
      this.write(buf, i * gran, Math.min(n, j * gran), h);
      h += (j - i) * gran;
      i = j;
    }
    this.adopt(virt, host, flags, count);
  }

  private write(buf: Uint8Array, from: number, to: number, pos: number): void {
    const fd = this.d.outFd;
    let done = from;
    while (done < to) {
      let n: number;
      try {
        n = writeSync(fd, buf, done, to - done, pos + (done - from));
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        throw new CopyFailure(`write failed: ${err.message}`, 'write', fd, pos + (done - from), err.code);
      }
      if (n <= 0) throw new CopyFailure('write returned 0 bytes', 'write', fd, pos + (done - from));
      done += n;
    }
    Atomics.add(this.progress, BYTES_WRITTEN, BigInt(to - from));
  }

  /** Make every copier stop (after an error here). */
  stopAll(): void {
    Atomics.store(this.ctl, STOP, 1);
    Atomics.notify(this.ctl, TURN);
    Atomics.notify(this.ctl, PUBLISHED);
  }
}

function readAll(fd: number, buf: Uint8Array, at: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    let n: number;
    try {
      n = readSync(fd, buf, at + done, len - done, pos + done);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new CopyFailure(`read failed: ${err.message}`, 'read', fd, pos + done, err.code);
    }
    if (n === 0) throw new CopyFailure(`short read: the file ends at ${pos + done}`, 'read', fd, pos + done);
    done += n;
  }
}
