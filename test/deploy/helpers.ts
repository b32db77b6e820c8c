import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFileSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { CLI } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { fixture, ROOT, run, runBuffer } from '../helpers/tools.js';
import { baseTree, extImageOf } from '../library/images.js';

/** A library holding two versions of an ext4 image (mkfs.ext4 -d of two trees), and their checkouts. */
export async function twoVersions(dir: string): Promise<{ lib: string; v1: string; v2: string }> {
  const lib = path.join(dir, 'lib');
  const l = await Library.open(lib);
  try {
    const a = await extImageOf('ext4', await baseTree(), 'deploy-base', 48);
    // N+1: N changed in place as an update would (debugfs writes a new file and removes one)
    const b = await fixture('deploy-v2-ext4-v1.img', async (out) => {
      copyFileSync(a, out);
      const add = `${out}.add`;
      writeFileSync(add, bytesOf('deploy:update', 3 << 20));
      await run('debugfs', ['-w', '-R', `write ${add} update.bin`, out]);
      unlinkSync(add);
    });
    assert.equal((await checkin(l, a, { name: 'disk' })).ref, 'disk@1');
    assert.equal((await checkin(l, b, { name: 'disk' })).ref, 'disk@2');
    const v1 = path.join(dir, 'v1.raw');
    const v2 = path.join(dir, 'v2.raw');
    await checkout(l, 'disk@1', v1);
    await checkout(l, 'disk@2', v2);
    return { lib, v1, v2 };
  } finally {
    await l.close();
  }
}

export interface Running {
  uri: string;
  events: Array<Record<string, unknown>>;
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr: () => string;
  /** Resolves with the first event of that name. */
  event(name: string): Promise<Record<string, unknown>>;
}

/** `strata deploy ARGS --json --port 0` as a child process, once it listens. */
export async function startDeploy(args: string[], env?: NodeJS.ProcessEnv): Promise<Running> {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'dist/cli/strata.cjs'), 'deploy', ...args, '--json', '--port', '0'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    },
  );
  const events: Array<Record<string, unknown>> = [];
  const waiters: Array<{ name: string; resolve: (e: Record<string, unknown>) => void }> = [];
  let buf = '';
  let err = '';
  child.stderr!.on('data', (c) => (err += c));
  child.stdout!.on('data', (c) => {
    buf += c;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const e = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      events.push(e);
      for (const w of waiters.filter((x) => x.name === e.event)) w.resolve(e);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const event = (name: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const had = events.find((e) => e.event === name);
      if (had) return resolve(had);
      waiters.push({ name, resolve });
      exited.then((code) => reject(new Error(`strata deploy exited (${code}) before '${name}': ${err}`)));
    });
  const listening = await event('listening');
  return { uri: String(listening.uri), events, child, exited, stderr: () => err, event };
}

/** qemu-img compare of a raw file with an NBD export (or another file): true when identical (exit 0), false on exit 1. */
export function sameAs(raw: string, other: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    execFile('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', raw, other], (e, _stdout, stderr) => {
      const code = e ? (e as { code?: number }).code : 0;
      if (code === 0) resolve(true);
      else if (code === 1) resolve(false);
      else reject(new Error(`qemu-img compare ${raw} ${other} failed (${code}): ${stderr}`));
    });
  });
}

/** A seeded PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface GuestWrite {
  offset: number;
  length: number;
  /** Fill byte; -1: write zeroes (NBD_CMD_WRITE_ZEROES). */
  fill: number;
}

/** Random writes, overlapping and mostly unaligned, over a disk of `size` bytes. */
export function randomWrites(seed: number, size: number, n: number): GuestWrite[] {
  const r = prng(seed);
  const out: GuestWrite[] = [];
  for (let i = 0; i < n; i++) {
    const length = 1 + Math.floor(r() * (r() < 0.3 ? 300_000 : 9000));
    const offset = Math.floor(r() * (size - length));
    out.push({ offset, length, fill: r() < 0.15 ? -1 : 1 + Math.floor(r() * 255) });
  }
  return out;
}

/** Apply writes to an in-memory model of the disk. */
export function applyWrites(model: Buffer, writes: GuestWrite[]): void {
  for (const w of writes) model.fill(Math.max(w.fill, 0), w.offset, w.offset + w.length);
}

/** Send writes through libnbd (nbdsh), then flush. */
export async function nbdWrites(uri: string, writes: GuestWrite[]): Promise<void> {
  const script = [
    `h.connect_uri(${JSON.stringify(uri)})`,
    'import json',
    `ws = json.loads(${JSON.stringify(JSON.stringify(writes))})`,
    'for w in ws:',
    "    if w['fill'] < 0: h.zero(w['length'], w['offset'])",
    "    else: h.pwrite(bytes([w['fill']]) * w['length'], w['offset'])",
    'h.flush()',
  ].join('\n');
  // python3-libnbd is the system python's: run nbdsh under it even when another python3 is first on PATH
  await run('env', [`PATH=/usr/bin:/bin:${process.env.PATH ?? ''}`, 'nbdsh', '-c', script]);
}

export const readAll = (f: string) => readFileSync(f);

/** Read ranges through libnbd (nbdsh), concatenated. */
/**
 * A trace of real NBD reads of a library version: `strata nbd --trace FILE` serves REF, nbdsh
 * (libnbd) reads `ranges`, the server is stopped and its trace is complete on return.
 */
export async function traceNbdReads(
  lib: string,
  ref: string,
  trace: string,
  ranges: Array<[number, number]>,
): Promise<void> {
  const nbd = spawn(process.execPath, [CLI, 'nbd', '--library', lib, '--port', '0', '--trace', trace, '--json', ref], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const gone = new Promise((r) => nbd.on('exit', r));
  let out = '';
  const uri = await new Promise<string>((resolve, reject) => {
    nbd.stdout.on('data', (c) => {
      out += c;
      try {
        resolve(JSON.parse(out).exports[0].uri);
      } catch {}
    });
    nbd.on('exit', () => reject(new Error(`strata nbd ${ref} exited`)));
  });
  try {
    await nbdReads(uri, ranges);
  } finally {
    nbd.kill('SIGTERM');
    await gone;
  }
}

export async function nbdReads(uri: string, ranges: Array<[number, number]>): Promise<Buffer> {
  const script = [
    `h.connect_uri(${JSON.stringify(uri)})`,
    'import json, sys',
    `rs = json.loads(${JSON.stringify(JSON.stringify(ranges))})`,
    'for o, n in rs:',
    '    sys.stdout.buffer.write(h.pread(n, o))',
    'sys.stdout.buffer.flush()',
  ].join('\n');
  return runBuffer('env', [`PATH=/usr/bin:/bin:${process.env.PATH ?? ''}`, 'nbdsh', '-c', script]);
}
