import assert from 'node:assert/strict';
import { copyFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { openImageExport } from '../../src/serve/nbd/image-export.js';
import { mutate, prng } from '../helpers/fuzz.js';
import { baseQcow2, rawTransmission, startServer } from '../helpers/nbd.js';
import { run, scratch } from '../helpers/tools.js';

const CASES = 240;

/** Two exports: 'ro' (read-only) and 'rw' (through an overlay), on one server. */
async function fuzzServer(dir: string) {
  const image = path.join(dir, 'base.qcow2');
  copyFileSync(await baseQcow2(), image);
  const overlay = path.join(dir, 'overlay.qcow2');
  const s = await startServer([
    await openImageExport(image, { name: 'ro' }),
    await openImageExport(image, { name: 'rw', overlay }),
  ]);
  return { ...s, image, overlay, port: s.server.endpoint!.port! };
}

/** Send bytes, then give the server a moment to answer or hang up, and close our side. */
async function poke(sock: Socket, bytes: Uint8Array, waitMs: number): Promise<void> {
  sock.on('error', () => {});
  sock.on('data', () => {});
  await new Promise<void>((resolve) => {
    const done = () => resolve();
    sock.once('close', done);
    sock.write(bytes);
    setTimeout(done, waitMs);
  });
  sock.destroy();
}

function opt(code: number, data: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(0x49484156454f5054n, 0);
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** A valid client side of a handshake that tries every option we know, ending in NBD_OPT_GO. */
function validHandshake(name: string): Buffer {
  const n = Buffer.from(name);
  const q = Buffer.from('base:allocation');
  const meta = Buffer.concat([u32(n.length), n, u32(1), u32(q.length), q]);
  const info = Buffer.concat([u32(n.length), n, u16(2), u16(3), u16(1)]);
  return Buffer.concat([
    u32(3),
    opt(3, Buffer.alloc(0)),
    opt(8, Buffer.alloc(0)),
    opt(9, meta),
    opt(10, meta),
    opt(6, info),
    opt(7, info),
  ]);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}
function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}

/** A valid request: type, flags, offset, length (and a payload for writes). */
function request(rand: () => number, size: number): Buffer {
  const type = rand() % 9;
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(rand() % 3 === 0 ? rand() & 0x1f : 0, 4);
  h.writeUInt16BE(type, 6);
  h.writeUInt32BE(rand(), 8);
  h.writeUInt32BE(rand(), 12);
  const len = [512, 4096, 65536, 1 << 20, rand() % 200000][rand() % 5];
  const off = Math.min(size - 1, (rand() % (size / 512)) * 512);
  h.writeUInt32BE(Math.floor(off / 2 ** 32), 16);
  h.writeUInt32BE(off >>> 0, 20);
  h.writeUInt32BE(len, 24);
  if (type !== 1) return h;
  return Buffer.concat([h, Buffer.alloc(len, rand() & 0xff)]);
}

/** A well-behaved client must keep being served while (and after) the fuzzer runs. */
async function goodClient(uri: string, image: string): Promise<void> {
  assert.match(await run('qemu-img', ['compare', uri, image]), /identical/);
}

test('handshake fuzzer: random and mutated option streams never crash the server; others keep being served', async () => {
  const dir = scratch('nbd-fuzz-hs');
  const s = await fuzzServer(dir);
  const rand = prng(0x4e4244);
  try {
    const alongside = goodClient(s.uri('ro'), s.image);
    for (let i = 0; i < CASES; i += 12) {
      const batch: Promise<void>[] = [];
      for (let k = 0; k < 12; k++) {
        const valid = validHandshake(rand() % 2 ? 'ro' : 'rw');
        let bytes: Uint8Array;
        if (rand() % 4 === 0) {
          bytes = new Uint8Array(1 + (rand() % 300));
          for (let j = 0; j < bytes.length; j++) bytes[j] = rand() & 0xff;
        } else bytes = mutate(valid, [[0, valid.length]], rand);
        batch.push(poke(connect(s.port, '127.0.0.1'), bytes, 150));
      }
      await Promise.all(batch);
    }
    await alongside;
    await goodClient(s.uri('ro'), s.image);
  } finally {
    await s.server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(s.errors, []);
});

test('command fuzzer: mutated and random requests after a valid handshake; overlay stays consistent', async () => {
  const dir = scratch('nbd-fuzz-cmd');
  const s = await fuzzServer(dir);
  const size = 64 << 20;
  const rand = prng(0xc0ffee);
  let served = 0;
  try {
    const alongside = goodClient(s.uri('ro'), s.image);
    for (let i = 0; i < CASES; i += 8) {
      const batch: Promise<void>[] = [];
      for (let k = 0; k < 8; k++) {
        batch.push(
          (async () => {
            const sock = await rawTransmission(s.port, rand() % 4 !== 0, rand() % 3 === 0 ? 'ro' : 'rw');
            sock.on('data', (c: Buffer) => (served += c.length));
            const parts: Buffer[] = [];
            const n = 1 + (rand() % 12);
            for (let j = 0; j < n; j++) {
              const r = request(rand, size);
              if (rand() % 3 === 0) parts.push(r);
              else if (rand() % 5 === 0) {
                const junk = Buffer.alloc(1 + (rand() % 64));
                for (let q = 0; q < junk.length; q++) junk[q] = rand() & 0xff;
                parts.push(junk);
              } else parts.push(Buffer.from(mutate(r, [[0, 28]], rand)));
            }
            await poke(sock, Buffer.concat(parts), 200);
          })(),
        );
      }
      await Promise.all(batch);
    }
    await alongside;
    await goodClient(s.uri('ro'), s.image);
  } finally {
    await s.server.close();
  }
  try {
    assert.deepEqual(s.errors, []);
    assert.ok(served > 0, 'the server answered some of the fuzzed requests');
    // Whatever the fuzzer wrote, the overlay is a valid qcow2 after the clean shutdown.
    assert.match(await run('qemu-img', ['check', s.overlay]), /No errors/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
