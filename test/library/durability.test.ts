import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readdirSync, readSync, statSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { checkout } from '../../src/library/checkout.js';
import { Library } from '../../src/library/library.js';
import { gc, verifyLibrary } from '../../src/library/library-verbs.js';
import { xorshift32 } from '../../src/util/prng.js';
import { CLI, strata } from '../helpers/cli.js';

import { baseTree, derivedTree, extImageOf, sha256File, tempDir } from './images.js';

/**
 * Nothing is lost: a check-in killed with SIGKILL at random moments leaves a library that
 * verifies and a retry that reuses what was stored; gc running beside a check-in loses
 * nothing; a damaged pack byte is caught by verify and by reads.
 */
async function clean(libDir: string): Promise<void> {
  const lib = await Library.open(libDir);
  try {
    const v = await verifyLibrary(lib);
    assert.deepEqual(v.errors, [], 'verify errors');
    assert.deepEqual(v.missing, [], 'blobs missing');
  } finally {
    await lib.close();
  }
}

function spawnCheckin(libDir: string, image: string, name: string) {
  return spawn(process.execPath, [CLI, 'checkin', image, '--name', name, '--library', libDir, '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

test('kill -9 at random points of a check-in, then verify and retry', async () => {
  const image = await extImageOf('ext4', await baseTree(), 'base');
  const libDir = path.join(tempDir('lib-kill'), 'lib');
  // how long one whole check-in takes here, so the kills land inside it
  const t0 = Date.now();
  const probe = await strata(['checkin', image, '--name', 'probe', '--library', `${libDir}-probe`]);
  assert.equal(probe.code, 0, probe.stderr);
  const whole = Date.now() - t0;
  const rand = xorshift32(20251125);
  let killedMidway = 0;
  let window = whole;
  // kill at random moments until 4 runs died mid-way (a run that finished first shrinks the window)
  for (let i = 0; i < 16 && killedMidway < 4; i++) {
    const child = spawnCheckin(libDir, image, 'victim');
    // 'close' can follow 'exit' in the same tick: listen before anything is awaited.
    const closed = new Promise((r) => child.once('close', r));
    const delay = 100 + (rand() % Math.max(1, window - 100));
    const exited = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        child.kill('SIGKILL');
        resolve(false);
      }, delay);
      child.on('exit', () => {
        clearTimeout(t);
        resolve(true);
      });
    });
    await closed;
    if (!exited) killedMidway++;
    else window = Math.max(200, Math.floor(window * 0.7));
    await clean(libDir);
  }
  assert.ok(killedMidway >= 4, `${killedMidway} runs were killed mid-way (a whole run takes ${whole} ms)`);
  // the retry succeeds and reuses what the killed runs left in indexed packs
  const lib = await Library.open(libDir);
  try {
    const stored = lib.store.entries().size;
    const retry = await checkin(lib, image, { name: 'victim' });
    if (stored > 0) assert.ok(retry.newChunks < retry.chunks, `the retry reused ${stored} stored blobs`);
    const r = await checkin(lib, image, { name: 'victim', exact: true });
    const out = path.join(libDir, '..', 'out.raw');
    await checkout(lib, r.ref, out);
    assert.equal(sha256File(out), sha256File(image));
    const g = await gc(lib);
    assert.ok(g.liveVersions >= 1);
    const v = await verifyLibrary(lib);
    assert.deepEqual(v.errors, []);
    assert.deepEqual(v.orphanPacks, [], 'gc removed the packs killed runs left unindexed');
  } finally {
    await lib.close();
  }
});

test('gc beside a running check-in loses nothing', async () => {
  const baseImg = await extImageOf('ext4', await baseTree(), 'base');
  const derivedImg = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  const libDir = path.join(tempDir('lib-gc'), 'lib');
  const lib = await Library.open(libDir);
  try {
    const a = await checkin(lib, baseImg, { name: 'a', exact: true });
    const doomed = await checkin(lib, derivedImg, { name: 'doomed' });
    await lib.catalog.deleteVersion('doomed', doomed.number);
    // the child checks in the derived image (sharing chunks with the deleted version) while gc runs here
    const child = spawnCheckin(libDir, derivedImg, 'b');
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    // Listen for the exit now: under load the child may finish while gc waits for its lock.
    const closed = new Promise<number | null>((r) => child.on('close', r));
    await new Promise((r) => setTimeout(r, 300));
    const g = await gc(lib, { lockWaitMs: 120_000 });
    const code = await closed;
    assert.equal(code, 0, `the check-in succeeded: ${Buffer.concat(err).toString('utf8')}`);
    const b = JSON.parse(Buffer.concat(out).toString('utf8')) as { ref: string };
    assert.ok(g.deletedPacks + g.rewrittenPacks >= 0);
    await lib.store.loadIndex();
    const v = await verifyLibrary(lib);
    assert.deepEqual(v.errors, []);
    assert.deepEqual(v.missing, []);
    const oa = path.join(libDir, '..', 'a.raw');
    await checkout(lib, a.ref, oa);
    assert.equal(sha256File(oa), sha256File(baseImg));
    const ob = path.join(libDir, '..', 'b.raw');
    await checkout(lib, b.ref, ob);
    // a second gc after the check-in: still nothing lost
    await gc(lib);
    const ob2 = path.join(libDir, '..', 'b2.raw');
    await checkout(lib, b.ref, ob2);
    assert.equal(sha256File(ob2), sha256File(ob));
    assert.deepEqual((await verifyLibrary(lib)).errors, []);
  } finally {
    await lib.close();
  }
});

test('a damaged pack byte is caught by verify (CLI exit 1) and by reads', async () => {
  const image = await extImageOf('ext4', await baseTree(), 'base');
  const libDir = path.join(tempDir('lib-corrupt'), 'lib');
  const lib = await Library.open(libDir);
  const r = await checkin(lib, image, { name: 'c' });
  await lib.close();
  // flip one byte in the middle of the largest pack (inside a blob, before the header)
  const packs: string[] = [];
  const walkDir = (d: string) => {
    for (const n of readdirSync(d, { withFileTypes: true })) {
      if (n.isDirectory()) walkDir(path.join(d, n.name));
      else packs.push(path.join(d, n.name));
    }
  };
  walkDir(path.join(libDir, 'store', 'packs'));
  packs.sort((x, y) => statSync(y).size - statSync(x).size);
  const victim = packs[0];
  const at = Math.floor(statSync(victim).size / 3);
  const fd = openSync(victim, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] ^= 0x40;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);

  const cli = await strata(['verify', '--library', libDir]);
  assert.equal(cli.code, 1, cli.stdout + cli.stderr);
  assert.match(cli.stdout, new RegExp(path.basename(victim)));
  const lib2 = await Library.open(libDir);
  try {
    await assert.rejects(checkout(lib2, r.ref, path.join(libDir, '..', 'bad.raw')), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'CORRUPT');
      assert.match(e.message, /sha256|zstd/);
      assert.match(e.message, new RegExp(path.basename(victim)));
      return true;
    });
  } finally {
    await lib2.close();
  }
});
