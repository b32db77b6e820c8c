import type { Socket } from 'node:net';
import type { NbdExport } from './export.js';
import * as P from './protocol.js';
import type { SocketReader } from './socket-reader.js';

/** The outcome of option haggling: the export chosen and what was negotiated. */
export interface Negotiated {
  export: NbdExport;
  structured: boolean;
  /** Metadata context id of base:allocation when the client selected it. */
  allocationContext?: number;
}

export interface HandshakeHost {
  exports(): readonly NbdExport[];
  find(name: string): NbdExport | undefined;
  flagsOf(e: NbdExport): number;
  /** Largest request payload the server accepts (NBD_INFO_BLOCK_SIZE maximum). */
  readonly maxRequest: number;
  readonly shuttingDown: boolean;
}

/** A client broke the protocol: the connection is closed (and only it). */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** Longest option payload we read; names are at most 4096 bytes, queries likewise. */
const MAX_OPTION = 64 * 1024;
const ALLOCATION_ID = 1;

/**
 * The newstyle fixed handshake, server side. Resolves with the negotiated export, or
 * undefined when the client aborted; throws ProtocolError on malformed input.
 */
export async function handshake(sock: Socket, rd: SocketReader, host: HandshakeHost): Promise<Negotiated | undefined> {
  const hello = Buffer.alloc(18);
  hello.writeBigUInt64BE(P.NBDMAGIC, 0);
  hello.writeBigUInt64BE(P.IHAVEOPT, 8);
  hello.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
  sock.write(hello);
  const clientFlags = (await rd.read(4)).readUInt32BE(0);
  if ((clientFlags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) !== 0) {
    throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
  }
  const noZeroes = (clientFlags & P.FLAG_C_NO_ZEROES) !== 0;
  let structured = false;
  let meta: { name: string; id: number | undefined } | undefined;

  const reply = (opt: number, type: number, data: Uint8Array = new Uint8Array(0)) => {
    const b = Buffer.allocUnsafe(20 + data.length);
    b.writeBigUInt64BE(P.OPT_REPLY_MAGIC, 0);
    b.writeUInt32BE(opt, 8);
    b.writeUInt32BE(type, 12);
    b.writeUInt32BE(data.length, 16);
    b.set(data, 20);
    sock.write(b);
  };
  const error = (opt: number, type: number, message: string) => reply(opt, type, Buffer.from(message, 'utf8'));

  for (let count = 0; ; count++) {
    if (count > 1000) throw new ProtocolError('more than 1000 options');
    const head = await rd.read(16);
    if (head.readBigUInt64BE(0) !== P.IHAVEOPT) throw new ProtocolError('bad option magic');
    const opt = head.readUInt32BE(8);
    const len = head.readUInt32BE(12);
    if (len > MAX_OPTION) throw new ProtocolError(`option ${opt} of ${len} bytes`);
    const data = await rd.read(len);
    if (host.shuttingDown && opt !== P.OPT_ABORT) {
      error(opt, P.REP_ERR_SHUTDOWN, 'server is shutting down');
      continue;
    }
    switch (opt) {
      case P.OPT_EXPORT_NAME: {
        const e = host.find(data.toString('utf8'));
        if (!e) throw new ProtocolError('NBD_OPT_EXPORT_NAME: no such export');
        const b = Buffer.alloc(noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(e.source.size), 0);
        b.writeUInt16BE(host.flagsOf(e), 8);
        sock.write(b);
        return { export: e, structured, allocationContext: metaFor(meta, data.toString('utf8')) };
      }
      case P.OPT_ABORT:
        reply(opt, P.REP_ACK);
        return undefined;
      case P.OPT_LIST: {
        if (len !== 0) {
          error(opt, P.REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        for (const e of host.exports()) {
          const name = Buffer.from(e.name, 'utf8');
          const b = Buffer.allocUnsafe(4 + name.length);
          b.writeUInt32BE(name.length, 0);
          name.copy(b, 4);
          reply(opt, P.REP_SERVER, b);
        }
        reply(opt, P.REP_ACK);
        break;
      }
      case P.OPT_INFO:
      case P.OPT_GO: {
        const parsed = parseInfoRequest(data);
        if (!parsed) {
          error(opt, P.REP_ERR_INVALID, 'malformed NBD_OPT_INFO/GO');
          break;
        }
        const e = host.find(parsed.name);
        if (!e) {
          error(opt, P.REP_ERR_UNKNOWN, `no export named '${parsed.name}'`);
          break;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(P.INFO_EXPORT, 0);
        info.writeBigUInt64BE(BigInt(e.source.size), 2);
        info.writeUInt16BE(host.flagsOf(e), 10);
        reply(opt, P.REP_INFO, info);
        for (const want of new Set(parsed.infos)) {
          if (want === P.INFO_NAME || want === P.INFO_DESCRIPTION) {
            const text = Buffer.from(want === P.INFO_NAME ? e.name : (e.description ?? ''), 'utf8');
            const b = Buffer.allocUnsafe(2 + text.length);
            b.writeUInt16BE(want, 0);
            text.copy(b, 2);
            reply(opt, P.REP_INFO, b);
          } else if (want === P.INFO_BLOCK_SIZE) {
            const b = Buffer.allocUnsafe(14);
            b.writeUInt16BE(want, 0);
            b.writeUInt32BE(1, 2);
            b.writeUInt32BE(4096, 6);
            b.writeUInt32BE(host.maxRequest, 10);
            reply(opt, P.REP_INFO, b);
          }
        }
        reply(opt, P.REP_ACK);
        if (opt === P.OPT_GO) return { export: e, structured, allocationContext: metaFor(meta, parsed.name) };
        break;
      }
      case P.OPT_STRUCTURED_REPLY:
        if (len !== 0) error(opt, P.REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else {
          structured = true;
          reply(opt, P.REP_ACK);
        }
        break;
      case P.OPT_LIST_META_CONTEXT:
      case P.OPT_SET_META_CONTEXT: {
        const set = opt === P.OPT_SET_META_CONTEXT;
        if (set) meta = undefined; // replaced even when this one fails
        if (!structured) {
          error(opt, P.REP_ERR_INVALID, 'negotiate structured replies first');
          break;
        }
        const q = parseMetaRequest(data);
        if (!q) {
          error(opt, P.REP_ERR_INVALID, 'malformed meta context request');
          break;
        }
        if (!host.find(q.name)) {
          error(opt, P.REP_ERR_UNKNOWN, `no export named '${q.name}'`);
          break;
        }
        // base:allocation is our only context; `base:` (list) or no query (list) finds it too.
        const matches = q.queries.some((s) => s === P.BASE_ALLOCATION || (!set && s === 'base:'));
        const selected = matches || (!set && q.queries.length === 0);
        if (selected) {
          const name = Buffer.from(P.BASE_ALLOCATION);
          const b = Buffer.allocUnsafe(4 + name.length);
          b.writeUInt32BE(set ? ALLOCATION_ID : 0, 0);
          name.copy(b, 4);
          reply(opt, P.REP_META_CONTEXT, b);
        }
        if (set) meta = { name: q.name, id: selected ? ALLOCATION_ID : undefined };
        reply(opt, P.REP_ACK);
        break;
      }
      default:
        error(opt, P.REP_ERR_UNSUP, `option ${opt} not supported`);
    }
  }
}

function metaFor(meta: { name: string; id: number | undefined } | undefined, name: string): number | undefined {
  return meta && meta.name === name ? meta.id : undefined;
}

function parseInfoRequest(d: Buffer): { name: string; infos: number[] } | undefined {
  if (d.length < 6) return undefined;
  const nameLen = d.readUInt32BE(0);
  if (nameLen > 4096 || 4 + nameLen + 2 > d.length) return undefined;
  const name = d.toString('utf8', 4, 4 + nameLen);
  const n = d.readUInt16BE(4 + nameLen);
  if (d.length !== 4 + nameLen + 2 + 2 * n) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(d.readUInt16BE(4 + nameLen + 2 + 2 * i));
  return { name, infos };
}

function parseMetaRequest(d: Buffer): { name: string; queries: string[] } | undefined {
  if (d.length < 8) return undefined;
  const nameLen = d.readUInt32BE(0);
  if (nameLen > 4096 || 4 + nameLen + 4 > d.length) return undefined;
  const name = d.toString('utf8', 4, 4 + nameLen);
  let at = 4 + nameLen;
  const n = d.readUInt32BE(at);
  at += 4;
  if (n > 1024) return undefined;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (at + 4 > d.length) return undefined;
    const ql = d.readUInt32BE(at);
    at += 4;
    if (ql > 4096 || at + ql > d.length) return undefined;
    queries.push(d.toString('utf8', at, at + ql));
    at += ql;
  }
  if (at !== d.length) return undefined;
  return { name, queries };
}
