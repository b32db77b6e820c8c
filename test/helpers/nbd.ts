import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import * as path from 'node:path';
import type { NbdExport } from '../../src/serve/nbd/export.js';
import { type ImageExportOptions, openImageExport } from '../../src/serve/nbd/image-export.js';
import { NbdServer, type NbdServerOptions } from '../../src/serve/nbd/server.js';
import { writePatternDisk } from './disk-pattern.js';
import { fixture, run, scratch } from './tools.js';

const MiB = 1024 * 1024;
const V = 'v1';

export const fileSha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A 64 MiB pattern disk as raw (sparse), then qcow2 with a few zero clusters written by qemu-io. */
export function baseRaw(): Promise<string> {
  return fixture(`nbd-base-${V}.raw`, async (out) => writePatternDisk(out, 64 * MiB, 7));
}

export function baseQcow2(): Promise<string> {
  return fixture(`nbd-base-${V}.qcow2`, async (out) => {
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', await baseRaw(), out]);
    // Zero clusters (v3 zero flag) over data, so block status has all three kinds to show.
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -z 1M 2M', '-c', 'write -z 40M 4M', out]);
  });
}

/** A folder holding base.qcow2 and child.qcow2 (backing base.qcow2, some clusters rewritten). */
export function chainDir(): Promise<string> {
  return fixture(`nbd-chain-${V}`, async (out) => {
    mkdirSync(out);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', await baseRaw(), path.join(out, 'base.qcow2')]);
    await run('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', path.join(out, 'child.qcow2')], {
      cwd: out,
    });
    await run(
      'qemu-io',
      [
        '-f',
        'qcow2',
        '-c',
        'write -P 0x5a 3M 1M',
        '-c',
        'write -z 8M 1M',
        '-c',
        'write -P 0xa5 63M 64k',
        'child.qcow2',
      ],
      { cwd: out },
    );
  });
}

export function baseVmdk(): Promise<string> {
  return fixture(`nbd-base-${V}.vmdk`, async (out) => {
    await run('qemu-img', [
      'convert',
      '-f',
      'raw',
      '-O',
      'vmdk',
      '-o',
      'subformat=monolithicSparse',
      await baseRaw(),
      out,
    ]);
  });
}

/** A running server over the given exports, on 127.0.0.1:0 or a Unix socket; errors it reports are collected. */
export async function startServer(
  exports: NbdExport[],
  transport: 'tcp' | 'unix' = 'tcp',
  opts: Partial<NbdServerOptions> = {},
): Promise<{ server: NbdServer; errors: string[]; uri: (name?: string) => string }> {
  const errors: string[] = [];
  const server = new NbdServer({
    exports,
    onError: (e, w) => errors.push(`${w}: ${(e as Error)?.stack ?? e}`),
    ...opts,
  });
  if (transport === 'tcp') await server.listen({ host: '127.0.0.1', port: 0 });
  else await server.listen({ socket: path.join(scratch('nbd-sock'), 'nbd.sock') });
  return { server, errors, uri: (name = '') => server.uri(name) };
}

export async function serveImage(image: string, opts: ImageExportOptions = {}, transport: 'tcp' | 'unix' = 'tcp') {
  return startServer([await openImageExport(image, opts)], transport);
}

/** `qemu-img map` output reduced to merged runs of "reads as zero" / "data", the fact both sides must agree on. */
export function zeroRuns(
  entries: Array<{ start: number; length: number; zero: boolean }>,
): Array<[number, number, boolean]> {
  const out: Array<[number, number, boolean]> = [];
  for (const e of entries) {
    const last = out[out.length - 1];
    if (last && last[2] === e.zero && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length, e.zero]);
  }
  return out;
}

export async function qemuImgMap(
  target: string,
  format?: string,
): Promise<Array<{ start: number; length: number; zero: boolean; data: boolean; present?: boolean }>> {
  const args = ['map', '--output=json', '-U'];
  if (format) args.push('-f', format);
  return JSON.parse(await run('qemu-img', [...args, target]));
}

/**
 * A minimal raw client for the fuzzers: does the fixed newstyle handshake up to
 * NBD_OPT_GO (optionally with structured replies and base:allocation) and hands back
 * the socket in transmission phase.
 */
export async function rawTransmission(port: number, structured: boolean, name = ''): Promise<Socket> {
  const sock = connect(port, '127.0.0.1');
  sock.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  const opt = (code: number, data: Buffer) => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(0x49484156454f5054n, 0);
    h.writeUInt32BE(code, 8);
    h.writeUInt32BE(data.length, 12);
    return Buffer.concat([h, data]);
  };
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3, 0);
  const nameBytes = Buffer.from(name);
  const go = Buffer.alloc(6 + nameBytes.length); // name, no info requests
  go.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(go, 4);
  const parts = [flags];
  if (structured) {
    parts.push(opt(8, Buffer.alloc(0)));
    const q = Buffer.from('base:allocation');
    const meta = Buffer.alloc(4 + nameBytes.length + 4 + 4 + q.length);
    meta.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(meta, 4);
    meta.writeUInt32BE(1, 4 + nameBytes.length);
    meta.writeUInt32BE(q.length, 8 + nameBytes.length);
    q.copy(meta, 12 + nameBytes.length);
    parts.push(opt(10, meta));
  }
  parts.push(opt(7, go));
  sock.write(Buffer.concat(parts));
  // Read the hello (18 bytes) and option replies until the ACK of NBD_OPT_GO.
  let buf = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      let at = 18;
      while (buf.length >= at + 20) {
        const optCode = buf.readUInt32BE(at + 8);
        const type = buf.readUInt32BE(at + 12);
        const len = buf.readUInt32BE(at + 16);
        if (buf.length < at + 20 + len) break;
        if (type >= 2 ** 31) return reject(new Error(`option ${optCode} failed: ${type}`));
        at += 20 + len;
        if (optCode === 7 && type === 1) {
          sock.off('data', onData);
          return resolve();
        }
      }
    };
    sock.on('data', onData);
    sock.once('error', reject);
  });
  return sock;
}

/**
 * Run a Python snippet in nbdsh (libnbd's shell, handle `h` connected to `uri` with base:allocation). nbdsh's
 * module lives in Debian's python3-libnbd, so it runs under the system python3 even when
 * another python3 comes first on PATH.
 */
export function nbdsh(uri: string, script: string): Promise<string> {
  const connect = `h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\nh.connect_uri(${JSON.stringify(uri)})\n`;
  return run('env', [`PATH=/usr/bin:/bin:${process.env.PATH ?? ''}`, 'nbdsh', '-c', connect + script]);
}
