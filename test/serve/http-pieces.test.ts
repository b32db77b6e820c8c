import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, createWriteStream, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { get, type IncomingMessage } from 'node:http';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { PER_BODY, PIECE, PiecedBody, piecePool } from '../../src/serve/http/pieces.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { qemuCheck, qemuCompare } from '../helpers/qemu-oracles.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { serve } from './http-helpers.js';

/**
 * Whole-object downloads stream reused pieces (src/serve/http/pieces.ts): the bytes are the
 * image's and the files' (oracles: the image mkfs.ext4 wrote and the files it was made from,
 * qemu-img for the qcow2), a client that stops reading holds its answer at PER_BODY pieces
 * (the pool makes no more however long it waits), and one that leaves gives everything back.
 */
let dir: string;
let tree: string;
let img: string;
let odd: string;
let lib: Library;
let server: RunningServer;
const NAME = 'own/pieces';
const ODD = (PER_BODY + 1) * PIECE + 1024 * 1024 + 333;
const disk = () => `${server.url}/v1/images/${encodeURIComponent(NAME)}/versions/1/disk`;

before(async () => {
  dir = tempDir('http-pieces');
  tree = path.join(dir, 'tree');
  mkdirSync(tree, { recursive: true });
  // 9 MiB and a bit: three pieces, ten 1 MiB chunks, the last of each short
  writeFileSync(path.join(tree, 'big.bin'), bytesOf('pieces-big', 9 * 1024 * 1024 + 12345));
  // data, a hole of several chunks, data past the first piece
  const sparse = path.join(tree, 'sparse');
  writeFileSync(sparse, bytesOf('sparse-head', 4000));
  const fd = openSync(sparse, 'r+');
  writeSync(fd, bytesOf('sparse-tail', 5000), 0, 5000, 6 * 1024 * 1024 + 100);
  closeSync(fd);
  img = path.join(dir, 'pieces.img');
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, img, '96M']);
  lib = await Library.open(path.join(dir, 'lib'));
  await checkin(lib, img, { name: NAME });
  // a disk whose size is no multiple of 512: its qcow2 ends in a sector partly past it. Past
  // PER_BODY pieces, so the piece that holds its end is one this answer already filled with the
  // disk's own (random) bytes at the same place: without the zero fill the tail is not zeros
  odd = path.join(dir, 'odd.raw');
  writeFileSync(odd, bytesOf('odd', ODD));
  await checkin(lib, odd, { name: 'own/odd' });
  server = await serve(lib, { defaultVisibility: 'public' });
});

after(async () => {
  await server?.close();
  await lib?.close();
});

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function until(what: string, ok: () => boolean): Promise<void> {
  // a guard against a hang, not a timing: the condition is what the test waits for
  const end = Date.now() + 120_000;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function getPaused(url: string): Promise<{ res: IncomingMessage; destroy: () => void }> {
  const req = get(url);
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  assert.equal(res.statusCode, 200);
  res.pause();
  return { res, destroy: () => req.destroy() };
}

test("a file's content, whole and by ranges across pieces and chunks, is the file", async () => {
  for (const f of ['big.bin', 'sparse']) {
    const want = readFileSync(path.join(tree, f));
    const url = `${server.url}/v1/images/${encodeURIComponent(NAME)}/versions/1/files/content?path=/${f}`;
    const whole = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.equal(whole.length, want.length, f);
    assert.ok(whole.equals(want), `${f}: the bytes differ`);
    for (const [a, b] of [
      [PIECE - 10, 2 * PIECE + 10],
      [1, want.length - 1],
      [5 * 1024 * 1024 - 3, 6 * 1024 * 1024 + 200],
    ]) {
      const r = await fetch(url, { headers: { range: `bytes=${a}-${b}` } });
      assert.equal(r.status, 206);
      const got = Buffer.from(await r.arrayBuffer());
      assert.ok(got.equals(want.subarray(a, b + 1)), `${f} ${a}-${b}: the bytes differ`);
    }
  }
});

test('the whole disk, raw and qcow2, is the image that was checked in', async () => {
  const made = piecePool.stats.made;
  const raw = Buffer.from(await (await fetch(disk())).arrayBuffer());
  assert.equal(sha(raw), sha(readFileSync(img)));
  // 24 pieces, made at most PER_BODY times: the rest were pieces the socket had written
  assert.ok(piecePool.stats.made - made <= PER_BODY, `${piecePool.stats.made - made} pieces made for one answer`);
  const q = path.join(dir, 'down.qcow2');
  const r = await fetch(`${disk()}?format=qcow2`);
  assert.equal(r.status, 200);
  await pipeline(r.body as unknown as NodeJS.ReadableStream, createWriteStream(q));
  await qemuCheck(q);
  await qemuCompare(img, 'raw', q, 'qcow2');
  await until('the answers ended', () => piecePool.active === 0);
  assert.equal(piecePool.kept, 0, 'pieces kept with no answer streaming');
});

test('a qcow2 of a disk of odd size ends in zeros, not in what a reused piece held', async () => {
  // the big disk streams beside it: free pieces that held its bytes are what the qcow2 takes
  const q = path.join(dir, 'odd.qcow2');
  const pad = path.join(dir, 'odd-padded.raw');
  const big = fetch(disk()).then((x) => x.arrayBuffer());
  const r = await fetch(`${server.url}/v1/images/own%2Fodd/versions/1/disk?format=qcow2`);
  assert.equal(r.status, 200);
  await pipeline(r.body as unknown as NodeJS.ReadableStream, createWriteStream(q));
  assert.equal(sha(Buffer.from(await big)), sha(readFileSync(img)));
  await qemuCheck(q);
  // the oracle: the raw file padded with zeros to the qcow2's 512-byte sectors
  const want = Buffer.alloc(Math.ceil(ODD / 512) * 512);
  readFileSync(odd).copy(want);
  writeFileSync(pad, want);
  await qemuCompare(pad, 'raw', q, 'qcow2');
});

test('a client that stops reading holds its answer at PER_BODY pieces: the pool does not grow', async () => {
  const made = piecePool.stats.made;
  const { res } = await getPaused(disk());
  // the server fills the socket and the kernel's buffers, then waits for a piece to be written
  await until('the answer waits for its client', () => piecePool.waiting === 1);
  assert.equal(piecePool.stats.made - made, PER_BODY);
  assert.equal(piecePool.kept, 0);
  // still stalled after more turns of the event loop: nothing more made
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
  assert.equal(piecePool.waiting, 1);
  assert.equal(piecePool.stats.made - made, PER_BODY);
  // read on: the rest of the disk comes through the same pieces
  const h = createHash('sha256');
  res.on('data', (b: Buffer) => h.update(b));
  res.resume();
  await once(res, 'end');
  assert.equal(h.digest('hex'), sha(readFileSync(img)));
  assert.equal(piecePool.stats.made - made, PER_BODY);
  await until('the answer ended', () => piecePool.active === 0);
  assert.equal(piecePool.kept, 0);
});

test('a client that leaves mid-answer: its answer ends and nothing stays kept', async () => {
  const { destroy } = await getPaused(disk());
  await until('the answer waits for its client', () => piecePool.waiting === 1);
  destroy();
  await until('the answer ended', () => piecePool.active === 0 && piecePool.waiting === 0);
  assert.equal(piecePool.kept, 0);
  // the server still answers
  const r = await fetch(disk(), { headers: { range: 'bytes=0-1023' } });
  assert.equal(r.status, 206);
  assert.ok(Buffer.from(await r.arrayBuffer()).equals(readFileSync(img).subarray(0, 1024)));
});

test('read other than by pipe, a pieced answer is the same bytes in fresh buffers', async () => {
  const seen = new Set<ArrayBufferLike>();
  const src = async function* (start: number, end: number, take: (n: number) => Promise<Buffer>) {
    for (let o = start; o < end; o += PIECE) {
      const b = await take(Math.min(PIECE, end - o));
      b.fill(o / PIECE + 1);
      yield b;
    }
  };
  const body = new PiecedBody(src, 0, 3 * PIECE + 5);
  const parts: Buffer[] = [];
  for await (const b of body as AsyncIterable<Buffer>) {
    assert.ok(!seen.has(b.buffer), 'a buffer came twice');
    seen.add(b.buffer);
    parts.push(b);
  }
  const all = Buffer.concat(parts);
  assert.equal(all.length, 3 * PIECE + 5);
  assert.deepEqual([all[0], all[PIECE], all[2 * PIECE], all[3 * PIECE + 4]], [1, 2, 3, 4]);
});
