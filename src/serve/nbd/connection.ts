import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Extent } from '../../io/byte-source.js';
import { type RequestNote, requestNotes } from '../../io/introspective-cache.js';
import type { BufferPool } from '../../util/buffer-pool.js';
import { isStrataError } from '../../util/errors.js';
import { Budget } from './budget.js';
import { allocationOf, type NbdExport, readFully } from './export.js';
import { type HandshakeHost, handshake, type Negotiated, ProtocolError } from './handshake.js';
import * as P from './protocol.js';
import { ConnectionClosed, SocketReader } from './socket-reader.js';
import type { TraceWriter } from './trace.js';

/** What a connection needs from its server. */
export interface ConnectionHost extends HandshakeHost {
  readonly budget: Budget;
  readonly pool: BufferPool;
  readonly connectionBudget: number;
  readonly handshakeTimeout: number;
  readonly trace?: TraceWriter;
  onError(e: unknown, where: string): void;
}

/** Reads of at least this size ask the source for holes and send them as OFFSET_HOLE chunks. */
const SPARSE_READ_MIN = 64 * 1024;
/** Zero runs shorter than this are sent as data (a hole chunk costs a header). */
const HOLE_MIN = 4096;
/** At most this many block status descriptors per reply. */
const MAX_DESCRIPTORS = 1 << 16;

/** A reply written into a pooled buffer, returned to the pool once sent. */
interface Pooled {
  bytes: Uint8Array;
  pooled: Buffer;
}

interface Request {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
  time: number;
  start: number;
}

/** One client: the handshake, then requests served concurrently and answered as they finish. */
export class Connection {
  private readonly rd: SocketReader;
  private readonly budget: Budget;
  private neg: Negotiated | undefined;
  private inflight = 0;
  private drained: (() => void) | undefined;
  private closing = false;

  constructor(
    readonly id: number,
    private readonly sock: Socket,
    private readonly host: ConnectionHost,
  ) {
    this.rd = new SocketReader(sock);
    this.budget = new Budget(host.connectionBudget, host.budget);
  }

  /** Serve until the client leaves or breaks the protocol; never throws. */
  async run(): Promise<void> {
    try {
      const timer = setTimeout(() => this.sock.destroy(), this.host.handshakeTimeout);
      try {
        this.neg = await handshake(this.sock, this.rd, this.host);
      } finally {
        clearTimeout(timer);
      }
      if (!this.neg) {
        this.sock.end();
        return;
      }
      await this.transmission(this.neg);
      await this.idle();
      this.sock.end();
    } catch (e) {
      if (!(e instanceof ConnectionClosed) && !(e instanceof ProtocolError))
        this.host.onError(e, `connection ${this.id}`);
      await this.idle();
      this.sock.destroy();
    }
  }

  /** Stop taking requests, answer those in flight, then close. */
  async shutdown(): Promise<void> {
    this.closing = true;
    await this.idle();
    this.sock.destroy();
  }

  private idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.drained;
      this.drained = () => {
        prev?.();
        resolve();
      };
    });
  }

  private async transmission(neg: Negotiated): Promise<void> {
    const maxRequest = this.host.maxRequest;
    for (;;) {
      if (this.budget.full) await this.budget.whenBelow();
      const h = await this.rd.read(P.REQUEST_SIZE);
      if (h.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new ProtocolError('bad request magic');
      const hi = h.readUInt32BE(16);
      const req: Request = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        cookie: Buffer.from(h.subarray(8, 16)),
        // Offsets past 2^53 cannot be in range: clamp them to something that fails the bounds check.
        offset: hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + h.readUInt32BE(20),
        length: h.readUInt32BE(24),
        time: Date.now(),
        start: performance.now(),
      };
      if (req.type === P.CMD_DISC) return;
      if (req.type === P.CMD_WRITE && req.length > maxRequest) throw new ProtocolError(`write of ${req.length} bytes`);
      const cost = req.type === P.CMD_READ || req.type === P.CMD_WRITE ? Math.min(req.length, maxRequest) : 0;
      // Room for the payload or the reply first, here and over the whole server.
      if (cost > 0 && !this.budget.fits(cost)) await this.budget.whenRoom(cost);
      this.begin(cost);
      let payload: Buffer | undefined;
      if (req.type === P.CMD_WRITE) {
        try {
          payload = await this.rd.read(req.length);
        } catch (e) {
          this.end(cost);
          throw e;
        }
      }
      this.serve(neg, req, payload, cost).catch((e) => this.host.onError(e, `connection ${this.id}`));
    }
  }

  private begin(cost: number): void {
    this.inflight++;
    this.budget.add(cost);
  }

  private end(cost: number): void {
    this.budget.sub(cost);
    if (--this.inflight === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  /** Write one reply; the request's budget (and pooled buffer) come back once the socket has taken it. */
  private send(buf: Uint8Array, cost: number, pooled?: Buffer): void {
    const done = () => {
      if (pooled) this.host.pool.give(pooled);
      this.end(cost);
    };
    if (this.sock.destroyed) {
      done();
      return;
    }
    // Replies finished in the same tick go out in one write (cork until the tick ends).
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(this.uncork);
    }
    this.sock.write(buf, done);
  }

  private corked = false;
  private readonly uncork = () => {
    this.corked = false;
    this.sock.uncork();
  };

  private async serve(neg: Negotiated, req: Request, payload: Buffer | undefined, cost: number): Promise<void> {
    let err = 0;
    let reply: Uint8Array | undefined;
    let pooled: Buffer | undefined;
    // the live cache notes class, owner and hit/miss here when the request is traced
    const note: RequestNote | undefined = this.host.trace ? {} : undefined;
    try {
      if (this.closing) err = P.ESHUTDOWN;
      else {
        const r = note
          ? await requestNotes.run(note, () => this.handle(neg, req, payload))
          : await this.handle(neg, req, payload);
        if (typeof r === 'number') err = r;
        else if (r instanceof Uint8Array) reply = r;
        else ({ bytes: reply, pooled } = r);
      }
    } catch (e) {
      err = errnoOf(e);
      if (err === P.EIO) this.host.onError(e, `${P.COMMAND_NAMES[req.type] ?? req.type} at ${req.offset}`);
    }
    if (!reply) {
      const structuredOnly = neg.structured && (req.type === P.CMD_READ || req.type === P.CMD_BLOCK_STATUS);
      reply = structuredOnly ? errorChunk(req.cookie, err) : simpleReply(req.cookie, err);
    }
    const trace = this.host.trace;
    if (trace) {
      trace.record({
        time: req.time,
        export: neg.export.name,
        conn: this.id,
        op: P.COMMAND_NAMES[req.type] ?? `cmd${req.type}`,
        offset: req.offset,
        length: req.length,
        latency: Math.round((performance.now() - req.start) * 1000) / 1000,
        ...(err ? { error: err } : {}),
        ...note,
      });
    }
    this.send(reply, cost, pooled);
  }

  /** The reply bytes of a successful request, or an NBD error number. */
  private async handle(
    neg: Negotiated,
    req: Request,
    payload: Buffer | undefined,
  ): Promise<Uint8Array | Pooled | number> {
    const e = neg.export;
    const size = e.source.size;
    const { offset, length } = req;
    const inRange = offset + length <= size;
    switch (req.type) {
      case P.CMD_READ:
        if (length > this.host.maxRequest || !inRange) return P.EINVAL;
        return neg.structured ? this.structuredRead(e, req) : this.simpleRead(e, req);
      case P.CMD_WRITE:
        if (!e.writer) return P.EPERM;
        if (!inRange) return P.ENOSPC;
        await e.writer.write(offset, payload!);
        if (req.flags & P.CMD_FLAG_FUA) await e.writer.flush();
        return simpleReply(req.cookie, 0);
      case P.CMD_WRITE_ZEROES:
        if (!e.writer) return P.EPERM;
        if (req.flags & P.CMD_FLAG_FAST_ZERO) return P.ENOTSUP;
        if (!inRange) return P.ENOSPC;
        await e.writer.writeZeroes(offset, length, (req.flags & P.CMD_FLAG_NO_HOLE) === 0);
        if (req.flags & P.CMD_FLAG_FUA) await e.writer.flush();
        return simpleReply(req.cookie, 0);
      case P.CMD_TRIM:
        if (!e.writer) return P.EPERM;
        if (!inRange) return P.EINVAL;
        await e.writer.trim(offset, length);
        if (req.flags & P.CMD_FLAG_FUA) await e.writer.flush();
        return simpleReply(req.cookie, 0);
      case P.CMD_FLUSH:
        await e.writer?.flush();
        return simpleReply(req.cookie, 0);
      case P.CMD_CACHE:
        if (!inRange) return P.EINVAL;
        await e.prefetch?.(offset, length);
        return simpleReply(req.cookie, 0);
      case P.CMD_BLOCK_STATUS:
        if (neg.allocationContext === undefined || length === 0 || !inRange) return P.EINVAL;
        return blockStatusReply(
          req,
          neg.allocationContext,
          await allocationOf(e.source, offset, length),
          (req.flags & P.CMD_FLAG_REQ_ONE) !== 0,
        );
      default:
        return P.EINVAL;
    }
  }

  private async simpleRead(e: NbdExport, req: Request): Promise<Pooled> {
    const pooled = this.host.pool.take(P.SIMPLE_REPLY_SIZE + req.length);
    const buf = pooled.subarray(0, P.SIMPLE_REPLY_SIZE + req.length);
    await readFully(e.source, req.offset, buf.subarray(P.SIMPLE_REPLY_SIZE));
    writeSimpleHeader(buf, req.cookie, 0);
    return { bytes: buf, pooled };
  }

  /** OFFSET_DATA chunks for data, OFFSET_HOLE chunks for long zero runs, all in one buffer. */
  private async structuredRead(e: NbdExport, req: Request): Promise<Pooled> {
    const { offset, length } = req;
    let runs: Array<{ offset: number; length: number; hole: boolean }>;
    if (length >= SPARSE_READ_MIN && (req.flags & P.CMD_FLAG_DF) === 0 && e.source.status) {
      runs = readRuns(await allocationOf(e.source, offset, length), offset, length);
    } else runs = [{ offset, length, hole: false }];
    if (length === 0) runs = [];
    let total = 0;
    for (const r of runs) total += P.CHUNK_HEADER_SIZE + (r.hole ? 12 : 8 + r.length);
    if (runs.length === 0) total = P.CHUNK_HEADER_SIZE;
    const pooled = this.host.pool.take(total);
    const buf = pooled.subarray(0, total);
    if (runs.length === 0) {
      writeChunkHeader(buf, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, req.cookie, 0);
      return { bytes: buf, pooled };
    }
    const reads: Promise<void>[] = [];
    let at = 0;
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i];
      const flags = i === runs.length - 1 ? P.REPLY_FLAG_DONE : 0;
      if (r.hole) {
        writeChunkHeader(buf, at, flags, P.REPLY_TYPE_OFFSET_HOLE, req.cookie, 12);
        writeU64(buf, at + 20, r.offset);
        buf.writeUInt32BE(r.length, at + 28);
        at += 32;
      } else {
        writeChunkHeader(buf, at, flags, P.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + r.length);
        writeU64(buf, at + 20, r.offset);
        reads.push(readFully(e.source, r.offset, buf.subarray(at + 28, at + 28 + r.length)));
        at += 28 + r.length;
      }
    }
    await Promise.all(reads);
    return { bytes: buf, pooled };
  }
}

/** Data runs and hole runs of a read, from the source's status (short zero runs stay data). */
function readRuns(
  ext: Extent[],
  offset: number,
  length: number,
): Array<{ offset: number; length: number; hole: boolean }> {
  const out: Array<{ offset: number; length: number; hole: boolean }> = [];
  let pos = offset;
  const end = offset + length;
  for (const x of ext) {
    const s = Math.max(pos, x.offset);
    const t = Math.min(end, x.offset + x.length);
    if (t <= s) continue;
    const hole = x.kind !== 'data' && t - s >= HOLE_MIN;
    const last = out[out.length - 1];
    if (last && last.hole === hole && last.offset + last.length === s) last.length += t - s;
    else out.push({ offset: s, length: t - s, hole });
    pos = t;
  }
  if (pos < end) {
    // The status did not cover the whole read: read the rest as data.
    const last = out[out.length - 1];
    if (last && !last.hole && last.offset + last.length === pos) last.length += end - pos;
    else out.push({ offset: pos, length: end - pos, hole: false });
  }
  return out;
}

function blockStatusReply(req: Request, contextId: number, ext: Extent[], one: boolean): Uint8Array {
  const desc: number[] = []; // pairs of length, flags
  const end = req.offset + req.length;
  for (const x of ext) {
    const s = Math.max(req.offset, x.offset);
    const t = Math.min(end, x.offset + x.length);
    if (t <= s) continue;
    const flags = x.kind === 'data' ? 0 : x.kind === 'zero' ? P.STATE_ZERO : P.STATE_HOLE | P.STATE_ZERO;
    const n = desc.length;
    if (n > 0 && desc[n - 1] === flags) desc[n - 2] += t - s;
    else {
      if (n / 2 >= (one ? 1 : MAX_DESCRIPTORS)) break;
      desc.push(t - s, flags);
    }
  }
  if (desc.length === 0) desc.push(req.length, 0); // a source that said nothing: data
  const count = desc.length / 2;
  const buf = Buffer.allocUnsafe(P.CHUNK_HEADER_SIZE + 4 + 8 * count);
  writeChunkHeader(buf, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, req.cookie, 4 + 8 * count);
  buf.writeUInt32BE(contextId, 20);
  for (let i = 0; i < count; i++) {
    buf.writeUInt32BE(desc[2 * i], 24 + 8 * i);
    buf.writeUInt32BE(desc[2 * i + 1], 28 + 8 * i);
  }
  return buf;
}

function writeU64(b: Buffer, at: number, n: number): void {
  b.writeUInt32BE(Math.floor(n / 2 ** 32), at);
  b.writeUInt32BE(n >>> 0, at + 4);
}

function writeSimpleHeader(b: Buffer, cookie: Buffer, error: number): void {
  b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
}

function simpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.allocUnsafe(P.SIMPLE_REPLY_SIZE);
  writeSimpleHeader(b, cookie, error);
  return b;
}

function writeChunkHeader(b: Buffer, at: number, flags: number, type: number, cookie: Buffer, length: number): void {
  b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  cookie.copy(b, at + 8);
  b.writeUInt32BE(length, at + 16);
}

function errorChunk(cookie: Buffer, error: number): Buffer {
  const b = Buffer.allocUnsafe(P.CHUNK_HEADER_SIZE + 6);
  writeChunkHeader(b, 0, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, cookie, 6);
  b.writeUInt32BE(error || P.EIO, 20);
  b.writeUInt16BE(0, 24);
  return b;
}

/** The NBD error for a failure: bad requests are EINVAL, the rest EIO. */
function errnoOf(e: unknown): number {
  if (isStrataError(e)) {
    if (e.code === 'USAGE' || e.code === 'LIMIT') return P.EINVAL;
    if (e.code === 'DENIED') return P.EPERM;
    return P.EIO;
  }
  if ((e as NodeJS.ErrnoException)?.code === 'ENOSPC') return P.ENOSPC;
  if (e instanceof RangeError) return P.ENOMEM;
  return P.EIO;
}
