import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { LocalBackend } from '../../src/store/local-backend.js';
import { RepoLock } from '../../src/store/lock.js';
import { SOLO_BLOB, Store } from '../../src/store/store.js';
import { ZstdOffload } from '../../src/store/zstd-offload.js';
import { zstdDecompress } from '../../src/util/zstd.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { runBuffer } from '../helpers/tools.js';
import { tempDir, textOf } from '../library/images.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function packFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else if (!e.name.startsWith('.')) out.push(path.join(d, e.name));
    }
  };
  walk(path.join(root, 'packs'));
  return out;
}

test('blobs round-trip, dedup by sha256, pack names are the sha256 of their bytes, frames decode with the zstd CLI', async () => {
  const root = tempDir('store-basic');
  const s = await Store.open(new LocalBackend(root));
  const text = textOf('store', 200_000);
  const random = bytesOf('store', 100_000);
  const big = textOf('store-big', SOLO_BLOB + 1000);
  const a = await s.put('data', text);
  assert.equal(a.digest, sha(text));
  assert.ok(a.added);
  const again = await s.put('data', text);
  assert.equal(again.added, false);
  const b = await s.put('data', random);
  const c = await s.put('data', big);
  assert.deepEqual(Buffer.from(await s.get(a.digest)), text, 'read before flush (open frame)');
  assert.deepEqual(Buffer.from(await s.get(c.digest)), big, 'read before flush (own frame)');
  await s.flush();
  await s.close();

  const packs = packFiles(root);
  assert.equal(packs.length, 1);
  const body = readFileSync(packs[0]);
  assert.equal(path.basename(packs[0]), sha(body));
  const s2 = await Store.open(new LocalBackend(root));
  // the two small blobs share one zstd frame (text then random); the large one has its own
  const ea = s2.entry(a.digest);
  const eb = s2.entry(b.digest);
  const ec = s2.entry(c.digest);
  assert.ok(ea && eb && ec);
  assert.equal(ea.offset, eb.offset, 'small blobs share a frame');
  assert.deepEqual([ea.at, eb.at, ea.framePlain], [0, text.length, text.length + random.length]);
  assert.ok(ea.flags & 1 && ea.encLength < random.length + text.length / 2, 'the shared frame is compressed');
  assert.ok(s2.storedSize(a.digest) + s2.storedSize(b.digest) <= ea.encLength + 1);
  assert.deepEqual([ec.at, ec.framePlain], [0, big.length]);
  assert.notEqual(ec.offset, ea.offset);
  for (const [e, want] of [
    [ea, Buffer.concat([text, random])],
    [ec, big],
  ] as const) {
    const framePath = path.join(root, 'frame.zst');
    writeFileSync(framePath, body.subarray(e.offset, e.offset + e.encLength));
    assert.deepEqual(await runBuffer('zstd', ['-d', '-c', framePath]), want, 'the reference tool decodes the frame');
  }
  assert.deepEqual(Buffer.from(await s2.get(b.digest)), random);
  assert.deepEqual(Buffer.from(await s2.get(a.digest)), text);
  assert.deepEqual(Buffer.from(await s2.get(c.digest)), big);
  const v = await s2.verify();
  assert.deepEqual(v.errors, []);
  assert.equal(v.blobs, 3);
  await assert.rejects(s2.get('0'.repeat(64)), /not in the store/);
  await s2.close();

  // a frame that zstd cannot shrink is kept plain
  const root2 = tempDir('store-plain');
  const s3 = await Store.open(new LocalBackend(root2));
  const r = await s3.put('data', random);
  await s3.flush();
  const er = s3.entry(r.digest);
  assert.ok(er);
  assert.deepEqual([er.flags, er.encLength, s3.storedSize(r.digest)], [0, random.length, random.length]);
  assert.deepEqual(Buffer.from(await s3.get(r.digest)), random);
  await s3.close();
});

test('compression on the zstd thread and inline give the same frames, and both read back and verify', async () => {
  const blobs = [
    ...Array.from({ length: 40 }, (_, i) => textOf(`offload-${i}`, 150_000 + i)), // shared frames
    bytesOf('offload-random', 300_000), // incompressible, inside a shared frame
    textOf('offload-solo', SOLO_BLOB + 5), // a frame of its own
    bytesOf('offload-solo-random', SOLO_BLOB + 7), // its own, kept plain
  ];
  const shapes: string[][] = [];
  for (const compressInline of [false, true]) {
    const root = tempDir(compressInline ? 'store-inline' : 'store-offload');
    const s = await Store.open(new LocalBackend(root), { compressInline });
    const digests: string[] = [];
    for (const b of blobs) digests.push((await s.put('data', b)).digest);
    await s.flush();
    await s.close();
    const s2 = await Store.open(new LocalBackend(root));
    const shape: string[] = [];
    for (const [i, d] of digests.entries()) {
      assert.deepEqual(Buffer.from(await s2.get(d)), blobs[i], `blob ${i} reads back`);
      const e = s2.entry(d);
      assert.ok(e);
      shape.push(`${e.at}/${e.framePlain}/${e.flags}/${e.encLength}`);
    }
    const v = await s2.verify();
    assert.deepEqual(v.errors, []);
    await s2.close();
    shapes.push(shape);
  }
  assert.deepEqual(shapes[0], shapes[1], 'same frames, flags and compressed sizes');
});

test('the zstd threads answer each frame with its own bytes, whichever thread takes it', async () => {
  const z = ZstdOffload.start();
  assert.ok(z, 'worker threads run here');
  // frames of different sizes, all in flight at once: the threads answer out of order
  const plains = Array.from({ length: 12 }, (_, i) => {
    const b = i === 5 ? bytesOf('threads-random', 70_000) : textOf(`threads-${i}`, 40_000 + i * 90_000);
    const shared = new Uint8Array(new SharedArrayBuffer(b.length));
    shared.set(b);
    return shared;
  });
  const answers = await Promise.all(plains.map((p) => z.compress(p, 3)));
  for (const [i, a] of answers.entries()) {
    if (i === 5) assert.equal(a.enc, undefined, 'incompressible: kept plain');
    else {
      assert.ok(a.enc, `frame ${i} compressed`);
      assert.deepEqual(Buffer.from(zstdDecompress(a.enc, plains[i].length)), Buffer.from(plains[i]), `frame ${i}`);
    }
  }
  await z.close();
  await assert.rejects(z.compress(plains[0], 3), /zstd thread closed/);
});

test('solo blobs and manifests get frames of their own, whatever their size', async () => {
  const root = tempDir('store-solo');
  const s = await Store.open(new LocalBackend(root));
  const shared1 = await s.put('data', textOf('solo-a', 10_000));
  const solo = await s.put('data', textOf('solo-b', 10_000), undefined, { solo: true });
  const tree = await s.put('tree', textOf('solo-c', 10_000));
  const shared2 = await s.put('data', textOf('solo-d', 10_000));
  await s.flush();
  await s.close();
  const s2 = await Store.open(new LocalBackend(root));
  const [e1, eSolo, eTree, e2] = [shared1, solo, tree, shared2].map((r) => s2.entry(r.digest));
  assert.ok(e1 && eSolo && eTree && e2);
  assert.equal(e1.offset, e2.offset, 'plain small data blobs still share a frame');
  for (const e of [eSolo, eTree]) {
    assert.deepEqual([e.at, e.framePlain], [0, 10_000], 'alone in its frame');
    assert.ok(e.offset !== e1.offset);
  }
  assert.notEqual(eSolo.offset, eTree.offset);
  for (const [r, seed] of [
    [solo, 'solo-b'],
    [tree, 'solo-c'],
  ] as const)
    assert.deepEqual(Buffer.from(await s2.get(r.digest)), textOf(seed, 10_000));
  await s2.close();
});

test('a tampered index is refused by name; a pack nobody indexes is an orphan that prune removes', async () => {
  const root = tempDir('store-index');
  const s = await Store.open(new LocalBackend(root));
  await s.put('data', textOf('x', 5000));
  await s.flush();
  await s.close();
  const ixDir = path.join(root, 'index');
  const [ix] = readdirSync(ixDir);
  const orig = readFileSync(path.join(ixDir, ix));
  writeFileSync(path.join(ixDir, ix), Buffer.from(orig.toString().replace('"data"', '"tree"')));
  await assert.rejects(Store.open(new LocalBackend(root)), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'CORRUPT');
    assert.match(e.message, /index/);
    return true;
  });
  // an index that goes missing leaves its pack an orphan: verify says so, prune deletes it
  const { unlinkSync } = await import('node:fs');
  unlinkSync(path.join(ixDir, ix));
  const s2 = await Store.open(new LocalBackend(root));
  const v = await s2.verify();
  assert.equal(v.orphanPacks.length, 1);
  const p = await s2.prune(new Set());
  assert.equal(p.deletedPacks, 1);
  assert.equal(packFiles(root).length, 0);
  await s2.close();
});

test('a store opened while a prune replaces the index loads the new index, not an ENOENT', async () => {
  const root = tempDir('store-open-during-prune');
  const s = await Store.open(new LocalBackend(root));
  const blobs = Array.from({ length: 12 }, (_, i) => bytesOf(`race${i}`, 20_000 + i));
  const digests = [];
  for (const b of blobs) {
    digests.push((await s.put('data', b)).digest);
    await s.flush(); // an index file per flush: several for the prune to replace
  }
  const keep = new Set(digests.filter((_, i) => i % 2 === 0));
  // the opener lists index/, then (before it reads) a real prune in another store deletes what it listed
  let pruned = false;
  class RacingBackend extends LocalBackend {
    override async list(prefix: string) {
      const out = await super.list(prefix);
      if (prefix === 'index/' && !pruned) {
        pruned = true;
        await s.prune(keep);
      }
      return out;
    }
  }
  const s2 = await Store.open(new RacingBackend(root));
  assert.ok(pruned);
  for (let i = 0; i < blobs.length; i++) {
    if (keep.has(digests[i])) assert.deepEqual(Buffer.from(await s2.get(digests[i])), blobs[i]);
    else assert.equal(s2.has(digests[i]), false);
  }
  await s2.close();
  await s.close();
});

test('prune keeps what is asked, rewrites mixed packs, and everything kept still reads back', async () => {
  const root = tempDir('store-prune');
  const s = await Store.open(new LocalBackend(root));
  const blobs = Array.from({ length: 40 }, (_, i) =>
    i % 2 ? textOf(`p${i}`, 30_000 + i) : bytesOf(`p${i}`, 20_000 + i),
  );
  const digests = [];
  for (const b of blobs) digests.push((await s.put('data', b)).digest);
  await s.flush();
  const keep = new Set(digests.filter((_, i) => i % 3 === 0));
  const r = await s.prune(keep);
  assert.equal(r.rewrittenPacks, 1);
  assert.ok(r.freedBytes > 0);
  await s.close();
  const s2 = await Store.open(new LocalBackend(root));
  for (let i = 0; i < blobs.length; i++) {
    if (keep.has(digests[i])) assert.deepEqual(Buffer.from(await s2.get(digests[i])), blobs[i]);
    else assert.equal(s2.has(digests[i]), false);
  }
  assert.deepEqual((await s2.verify()).errors, []);
  assert.equal(readdirSync(path.join(root, 'index')).length, 1, 'one index replaces the old ones');
  await s2.close();
});

test('locks: exclusive waits for shared and gives up with a clear error; a dead holder is stale', async () => {
  const root = tempDir('store-lock');
  const be = new LocalBackend(root);
  const shared = await RepoLock.acquire(be, 'shared', 'test checkin');
  const shared2 = await RepoLock.acquire(be, 'shared', 'another checkin');
  await assert.rejects(RepoLock.acquire(be, 'exclusive', 'gc', 300), /busy: shared lock held by/);
  await shared.release();
  await shared2.release();
  const ex = await RepoLock.acquire(be, 'exclusive', 'gc');
  await assert.rejects(RepoLock.acquire(be, 'shared', 'checkin', 300), /busy: exclusive lock held by gc/);
  await ex.release();
  // a lock left by a process that no longer exists (pid 2^22+1 is above Linux's pid_max default)
  const { hostname } = await import('node:os');
  await be.put(
    'locks/dead',
    Buffer.from(JSON.stringify({ kind: 'exclusive', pid: 4194305, host: hostname(), time: Date.now() })),
  );
  const after = await RepoLock.acquire(be, 'shared', 'checkin', 0);
  await after.release();
  await be.close();
});

test('sweepTemporary removes old leftovers of interrupted puts and keeps fresh ones', async () => {
  const root = tempDir('store-tmp');
  const be = new LocalBackend(root);
  await be.put('packs/ab/x', Buffer.from('x'));
  const { utimesSync } = await import('node:fs');
  const old = path.join(root, 'packs', 'ab', '.tmp-1-dead');
  const fresh = path.join(root, 'packs', 'ab', '.tmp-2-live');
  writeFileSync(old, 'half');
  writeFileSync(fresh, 'half');
  utimesSync(old, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));
  assert.equal(await be.sweepTemporary(600_000), 1);
  assert.deepEqual(readdirSync(path.join(root, 'packs', 'ab')).sort(), ['.tmp-2-live', 'x']);
  await be.close();
});

/** A blob that compresses well and differs from its neighbours: `n` bytes of `i`, a label up front. */
function patterned(i: number, n: number): Buffer {
  const b = Buffer.alloc(n, i & 0xff);
  b.write(`blob ${i} of ${n} bytes\n`, 0);
  return b;
}

test('small blobs share frames; concurrent reads in any order over more frames than the frame cache holds', async () => {
  const root = tempDir('store-frames');
  const s = await Store.open(new LocalBackend(root));
  const blobs = Array.from({ length: 160 }, (_, i) => patterned(i, 512 * 1024 - i));
  const digests: string[] = [];
  for (const b of blobs) digests.push((await s.put('data', b)).digest);
  await s.flush();
  const frames = new Set(digests.map((d) => s.entry(d)?.offset));
  const shared = digests.filter((d) => (s.entry(d)?.at ?? 0) > 0);
  assert.ok(frames.size >= 8, `${frames.size} frames`);
  assert.ok(shared.length > 100, 'most blobs sit inside a shared frame');
  await s.close();
  const s2 = await Store.open(new LocalBackend(root));
  // a shuffled order, 32 reads in flight: frames are evicted while other reads still wait on them
  const order = digests.map((_, i) => i).sort((x, y) => ((x * 7919) % 160) - ((y * 7919) % 160));
  for (let round = 0; round < 2; round++) {
    await Promise.all(
      Array.from({ length: 32 }, async (_, w) => {
        for (let k = w; k < order.length; k += 32) {
          const i = order[k];
          assert.deepEqual(Buffer.from(await s2.get(digests[i])), blobs[i], `blob ${i}`);
        }
      }),
    );
  }
  const v = await s2.verify();
  assert.deepEqual(v.errors, []);
  assert.equal(v.blobs, blobs.length);
  await s2.close();
});

/** Flip one byte of a file at `at`. */
function flip(file: string, at: number): void {
  const body = readFileSync(file);
  body[at] ^= 0x40;
  writeFileSync(file, body);
}

test('a damaged byte inside a shared frame: verify names it, reads of its blobs fail, never wrong bytes', async () => {
  // a compressed shared frame
  const root = tempDir('store-frame-damage');
  const s = await Store.open(new LocalBackend(root));
  const blobs = Array.from({ length: 24 }, (_, i) => textOf(`frame-damage-${i}`, 20_000 + i));
  const digests: string[] = [];
  for (const b of blobs) digests.push((await s.put('data', b)).digest);
  await s.flush();
  const e = s.entry(digests[0]);
  assert.ok(e && e.flags & 1 && s.entry(digests[23])?.offset === e.offset, 'one compressed frame holds them all');
  await s.close();
  const [pack] = packFiles(root);
  flip(pack, e.offset + Math.floor(e.encLength / 2));
  const s2 = await Store.open(new LocalBackend(root));
  const v = await s2.verify();
  assert.ok(v.errors.length > 0, 'verify reports the damage');
  let failed = 0;
  for (let i = 0; i < blobs.length; i++) {
    try {
      assert.deepEqual(Buffer.from(await s2.get(digests[i])), blobs[i], 'a blob that reads is exact');
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'CORRUPT', String(err));
      failed++;
    }
  }
  assert.ok(failed > 0, 'reads of the damaged blobs fail');
  await s2.close();

  // a plain shared frame (incompressible blobs): exactly the blob holding the byte fails
  const root2 = tempDir('store-frame-damage-plain');
  const s3 = await Store.open(new LocalBackend(root2));
  const rnd = Array.from({ length: 10 }, (_, i) => bytesOf(`plain-frame-${i}`, 30_000 + i));
  const ds: string[] = [];
  for (const b of rnd) ds.push((await s3.put('data', b)).digest);
  await s3.flush();
  const victim = s3.entry(ds[6]);
  assert.ok(victim && victim.flags === 0 && victim.at > 0);
  await s3.close();
  const [pack2] = packFiles(root2);
  flip(pack2, victim.offset + victim.at + 100);
  const s4 = await Store.open(new LocalBackend(root2));
  const v2 = await s4.verify();
  // the pack's name no longer matches its bytes, and exactly one blob is damaged
  assert.equal(v2.errors.filter((m) => /content does not match its name/.test(m)).length, 1);
  const blobErrors = v2.errors.filter((m) => /^blob /.test(m));
  assert.equal(blobErrors.length, 1);
  assert.match(blobErrors[0], new RegExp(ds[6]));
  for (let i = 0; i < rnd.length; i++) {
    if (i === 6) await assert.rejects(s4.get(ds[i]), /does not match its sha256/);
    else assert.deepEqual(Buffer.from(await s4.get(ds[i])), rnd[i]);
  }
  await s4.close();
});

test('format 1 packs and index files (one blob per frame) still read and verify; prune rewrites them as format 2', async () => {
  const root = tempDir('store-v1');
  const text = textOf('v1', 50_000);
  const random = bytesOf('v1', 40_000);
  const { zstdCompress } = await import('../../src/util/zstd.js');
  const frame = Buffer.from(zstdCompress(text, 3));
  // [zstd text][plain random][2 x 48-byte entries][trailer "STRPACK1"]
  const header = Buffer.alloc(2 * 48 + 16);
  const entry = (i: number, d: Buffer, flags: number, enc: number, plain: number) => {
    d.copy(header, i * 48);
    header[i * 48 + 33] = flags;
    header.writeUInt32LE(enc, i * 48 + 36);
    header.writeUInt32LE(plain, i * 48 + 40);
  };
  entry(0, createHash('sha256').update(text).digest(), 1, frame.length, text.length);
  entry(1, createHash('sha256').update(random).digest(), 0, random.length, random.length);
  header.writeUInt32LE(2, 96);
  header.writeUInt32LE(96, 100);
  header.write('STRPACK1', 104, 'latin1');
  const body = Buffer.concat([frame, random, header]);
  const id = sha(body);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(path.join(root, 'packs', id.slice(0, 2)), { recursive: true });
  mkdirSync(path.join(root, 'index'), { recursive: true });
  writeFileSync(path.join(root, 'packs', id.slice(0, 2), id), body);
  const ix = Buffer.from(
    JSON.stringify({
      version: 1,
      packs: [
        {
          id,
          blobs: [
            [sha(text), 'data', 0, frame.length, text.length, 1],
            [sha(random), 'data', frame.length, random.length, random.length, 0],
          ],
        },
      ],
    }),
  );
  writeFileSync(path.join(root, 'index', sha(ix)), ix);
  writeFileSync(path.join(root, 'config'), JSON.stringify({ version: 1, kind: 'strata-store' }));

  const s = await Store.open(new LocalBackend(root));
  assert.deepEqual(Buffer.from(await s.get(sha(text))), text);
  assert.deepEqual(Buffer.from(await s.get(sha(random))), random);
  const v = await s.verify();
  assert.deepEqual(v.errors, []);
  assert.equal(v.blobs, 2);
  // dropping one blob rewrites the pack in format 2; the other still reads
  const r = await s.prune(new Set([sha(text)]));
  assert.equal(r.rewrittenPacks, 1);
  await s.close();
  const packs = packFiles(root);
  assert.equal(packs.length, 1);
  assert.equal(readFileSync(packs[0]).subarray(-8).toString('latin1'), 'STRPACK2');
  const s2 = await Store.open(new LocalBackend(root));
  assert.deepEqual(Buffer.from(await s2.get(sha(text))), text);
  assert.equal(s2.has(sha(random)), false);
  assert.deepEqual((await s2.verify()).errors, []);
  await s2.close();
});

test('index files: every blob listed, as small as zstd -1 makes the same JSON (higher levels only cost time on hex digests)', async () => {
  const root = tempDir('store-index-level');
  const s = await Store.open(new LocalBackend(root));
  const want = new Set<string>();
  for (let i = 0; i < 6000; i++) {
    const r = await s.put('data', bytesOf(`index-level-${i}`, 100 + (i % 300)));
    want.add(r.digest);
  }
  await s.flush();
  await s.close();
  const dir = path.join(root, 'index');
  let ours = 0;
  let cli = 0;
  const seen = new Set<string>();
  for (const f of readdirSync(dir)) {
    const file = path.join(dir, f);
    ours += readFileSync(file).length;
    // the reference tool decodes the index file; its JSON lists the blobs
    const json = await runBuffer('zstd', ['-d', '-c', file]);
    for (const p of JSON.parse(json.toString('utf8')).packs) for (const b of p.blobs) seen.add(b[0]);
    const plain = path.join(root, `${f}.json`);
    writeFileSync(plain, json);
    cli += (await runBuffer('zstd', ['-1', '-c', plain])).length;
  }
  assert.deepEqual(
    [...want].filter((d) => !seen.has(d)),
    [],
    'every blob put is in an index file',
  );
  assert.ok(ours <= cli * 1.02, `index files ${ours} bytes, zstd -1 of their JSON ${cli}`);
});

test('an urgent refresh right after another sees what a second store just wrote, and urgent callers meanwhile share one listing', async () => {
  const root = tempDir('store-urgent-refresh');
  class Counting extends LocalBackend {
    lists = 0;
    override async list(prefix: string) {
      this.lists++;
      return super.list(prefix);
    }
  }
  const backend = new Counting(root);
  const s1 = await Store.open(backend);
  const s2 = await Store.open(new LocalBackend(root));
  try {
    await s1.refresh(); // a refresh just done: the next non-urgent one would wait out REFRESH_MS
    const blob = textOf('urgent', 10_000);
    const { digest } = await s2.put('data', blob);
    await s2.flush();
    assert.equal(s1.has(digest), false, 'not known before the refresh');
    const before = backend.lists;
    assert.equal(await s1.refresh(true), true, 'the index changed');
    const one = backend.lists - before;
    assert.ok(one >= 1, 'an urgent refresh lists the index');
    assert.equal(s1.has(digest), true, 'the other store’s blob is known after the urgent refresh');
    assert.deepEqual(Buffer.from(await s1.get(digest)), blob);
    // three urgent callers at once: one refresh (one listing's worth), each sees the same answer
    const { digest: d2 } = await s2.put('data', textOf('urgent-2', 10_000));
    await s2.flush();
    const mid = backend.lists;
    const answers = await Promise.all([s1.refresh(true), s1.refresh(true), s1.refresh(true)]);
    assert.deepEqual(answers, [true, true, true]);
    assert.equal(backend.lists - mid, one, 'the three shared one refresh');
    assert.equal(s1.has(d2), true);
    // a non-urgent call while an urgent one is queued joins it
    const m2 = backend.lists;
    await Promise.all([s1.refresh(true), s1.refresh()]);
    assert.equal(backend.lists - m2, one, 'a non-urgent caller shares a queued urgent refresh');
  } finally {
    await s1.close();
    await s2.close();
  }
});
