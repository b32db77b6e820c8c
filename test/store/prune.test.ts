import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { LocalBackend } from '../../src/store/local-backend.js';
import { type IndexEntry, type PruneStep, planPrune, Store } from '../../src/store/store.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { tempDir, textOf } from '../library/images.js';

/**
 * Prune as a plan and an execute: the plan against a model of which blobs the test put in
 * which pack, and the execute stopped after each of its steps (a throw from its hook, as a
 * kill there would) leaving a store that verifies clean and reads every live blob.
 */

/** Every file under `root` (relative path -> sha256), to see that planning writes nothing. */
function snapshot(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(root, p), createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(root);
  return out;
}

const packPath = (root: string, id: string) => path.join(root, 'packs', id.slice(0, 2), id);
const indexFiles = (root: string): string[] => {
  try {
    return readdirSync(path.join(root, 'index'));
  } catch {
    return []; // not made until the first index file
  }
};

interface Crafted {
  root: string;
  /** The blobs of each pack, as the test put them (one flush per pack). */
  packs: Array<{ name: string; blobs: Array<{ digest: string; bytes: Buffer }> }>;
  /** The pack ids, by name. */
  ids: Map<string, string>;
  live: Set<string>;
  all: Map<string, Buffer>;
}

/** After a prune that finished: the store verifies clean with the 6 live blobs, each readable, the rest gone. */
async function assertFinished(c: Crafted, label: string): Promise<void> {
  const done = await Store.open(new LocalBackend(c.root));
  const v = await done.verify();
  assert.deepEqual([v.errors, v.orphanPacks, v.blobs], [[], [], 6], label);
  for (const [d, bytes] of c.all) {
    if (c.live.has(d)) assert.deepEqual(Buffer.from(await done.get(d)), bytes);
    else assert.equal(done.has(d), false);
  }
  await done.close();
}

/**
 * A small store: pack "all-live" (every blob live), "half-dead" (shared frame, some live),
 * "solo-mixed" (blobs with frames of their own, one live), "all-dead", and "orphan" (its
 * index file deleted, as a writer killed between pack and index leaves it).
 */
async function craft(name: string): Promise<Crafted> {
  const root = tempDir(name);
  const s = await Store.open(new LocalBackend(root), { compressInline: true });
  const spec: Array<{ name: string; sizes: number[]; live: boolean[]; solo?: boolean }> = [
    { name: 'all-live', sizes: [9000, 12000, 7000], live: [true, true, true] },
    { name: 'half-dead', sizes: [8000, 9000, 10000, 11000], live: [true, false, true, false] },
    { name: 'solo-mixed', sizes: [30000, 40000], live: [false, true], solo: true },
    { name: 'all-dead', sizes: [5000, 6000], live: [false, false] },
    { name: 'orphan', sizes: [4000], live: [false] },
  ];
  const c: Crafted = { root, packs: [], ids: new Map(), live: new Set(), all: new Map() };
  for (const p of spec) {
    const before = new Set(indexFiles(root));
    const blobs: Crafted['packs'][number]['blobs'] = [];
    for (let i = 0; i < p.sizes.length; i++) {
      const bytes =
        i % 2 ? bytesOf(`${name}-${p.name}-${i}`, p.sizes[i]) : textOf(`${name}-${p.name}-${i}`, p.sizes[i]);
      const { digest, added } = await s.put('data', bytes, undefined, { solo: p.solo });
      assert.ok(added);
      blobs.push({ digest, bytes });
      c.all.set(digest, bytes);
      if (p.live[i]) c.live.add(digest);
    }
    await s.flush();
    const id = (s.entry(blobs[0].digest) as IndexEntry).pack;
    for (const b of blobs) assert.equal(s.entry(b.digest)?.pack, id, 'one flush, one pack');
    c.packs.push({ name: p.name, blobs });
    c.ids.set(p.name, id);
    if (p.name === 'orphan') {
      const fresh = indexFiles(root).filter((f) => !before.has(f));
      assert.equal(fresh.length, 1, 'one index file per pack');
      unlinkSync(path.join(root, 'index', fresh[0]));
    }
  }
  await s.close();
  return c;
}

/** The live blobs of the packs a prune rewrites (those with live and dead blobs). */
const copied = (c: Crafted): string[] =>
  c.packs
    .filter((p) => p.name === 'half-dead' || p.name === 'solo-mixed')
    .flatMap((p) => p.blobs.map((b) => b.digest))
    .filter((d) => c.live.has(d));

/** The model: a pack stays when all its blobs are live, goes when none are, else is rewritten. */
function model(c: Crafted) {
  const id = (n: string) => c.ids.get(n) as string;
  const size = (n: string) => statSync(packPath(c.root, id(n))).size;
  return {
    keep: [id('all-live')],
    rewrite: [id('half-dead'), id('solo-mixed')].sort(),
    drop: [id('all-dead')],
    orphans: [id('orphan')],
    copyBlobs: copied(c).length,
    liveBlobs: 6,
    deadBlobs: 5,
    freedBytes: size('half-dead') + size('solo-mixed') + size('all-dead') + size('orphan'),
  };
}

test('the prune plan of a crafted store matches the model and changes nothing on disk', async () => {
  const c = await craft('prune-plan');
  const before = snapshot(c.root);
  const s = await Store.open(new LocalBackend(c.root));
  const plan = await s.planPrune(c.live);
  assert.deepEqual({ ...plan, rewrite: [...plan.rewrite].sort() }, model(c));
  // the pure function gives the same from the index and a listing, and does not touch them
  const index = new Map(s.entries());
  const listing = await s.packFiles();
  assert.equal(listing.length, 5);
  const plan2 = planPrune(index, listing, c.live);
  assert.deepEqual(plan2, plan);
  assert.deepEqual(index, new Map(s.entries()));
  assert.deepEqual(snapshot(c.root), before, 'planning writes and deletes nothing');

  // the execute does what the plan said
  const r = await s.prune(c.live);
  // solo-mixed's live blob has a frame of its own: copied as it is; half-dead's frame is
  // shared with dead blobs: its live blobs are put again
  assert.deepEqual(r, {
    deletedPacks: 4,
    rewrittenPacks: 2,
    freedBytes: plan.freedBytes,
    wholeFrames: 1,
    repackedFrames: 1,
  });
  await s.close();
  for (const id of [...plan.rewrite, ...plan.drop, ...plan.orphans]) {
    assert.throws(() => statSync(packPath(c.root, id)), /ENOENT/);
  }
  assert.ok(statSync(packPath(c.root, plan.keep[0])).isFile());
  const s2 = await Store.open(new LocalBackend(c.root));
  for (const [d, bytes] of c.all) {
    if (c.live.has(d)) assert.deepEqual(Buffer.from(await s2.get(d)), bytes);
    else assert.equal(s2.has(d), false, `dead blob ${d} is gone`);
  }
  // the copied blobs are in one new pack (not an old one), the others where they were
  const newPacks = new Set(copied(c).map((d) => s2.entry(d)?.pack));
  assert.equal(newPacks.size, 1);
  assert.ok(![...c.ids.values()].includes([...newPacks][0] as string), 'copies are in a new pack');
  for (const b of c.packs[0].blobs) assert.equal(s2.entry(b.digest)?.pack, plan.keep[0]);
  const v = await s2.verify();
  assert.deepEqual([v.errors, v.orphanPacks, v.blobs], [[], [], 6]);
  assert.equal(indexFiles(c.root).length, 1);
  // a second plan finds nothing to do
  const again = await s2.planPrune(c.live);
  assert.deepEqual([again.rewrite, again.drop, again.orphans, again.deadBlobs], [[], [], [], 0]);
  await s2.close();
});

/**
 * One pack of two shared frames of 1 MiB (a write budget of 32 MiB) and a blob alone in its
 * frame: frame 1 all live, frame 2 half live, the lone blob dead.
 */
async function twoFrames(name: string) {
  const root = tempDir(name);
  const s = await Store.open(new LocalBackend(root), { compressInline: true });
  s.setWriteBudget(32 * 2 ** 20);
  const blobs = [0, 1, 2, 3].map((i) => textOf(`${name}-${i}`, 400_000 + i));
  const lone = bytesOf(`${name}-lone`, 1_100_000);
  const digests: string[] = [];
  for (const b of [...blobs, lone]) digests.push((await s.put('data', b)).digest);
  await s.flush();
  const entries = digests.map((d) => s.entry(d) as IndexEntry);
  await s.close();
  assert.equal(new Set(entries.map((e) => e.pack)).size, 1, 'one pack');
  assert.equal(new Set(entries.map((e) => e.offset)).size, 3, 'three frames');
  assert.equal(entries[0].offset, entries[1].offset);
  assert.equal(entries[2].offset, entries[3].offset);
  const live = new Set([digests[0], digests[1], digests[2]]);
  return { root, blobs, digests, entries, live };
}

test('a prune copies a frame whose every blob stays as it is, and puts the live blobs of a mixed frame again', async () => {
  const c = await twoFrames('prune-whole-frame');
  const old = c.entries[0];
  const frameBytes = (e: IndexEntry) =>
    readFileSync(packPath(c.root, e.pack)).subarray(e.offset, e.offset + e.encLength);
  const before = frameBytes(old);
  const s = await Store.open(new LocalBackend(c.root));
  const r = await s.prune(c.live);
  assert.deepEqual([r.rewrittenPacks, r.wholeFrames, r.repackedFrames], [1, 1, 1]);
  await s.close();
  const s2 = await Store.open(new LocalBackend(c.root));
  for (const i of [0, 1]) {
    const e = s2.entry(c.digests[i]) as IndexEntry;
    assert.notEqual(e.pack, old.pack);
    // the frame is the same bytes in the new pack, its blobs at the same places in it
    assert.deepEqual(
      [e.encLength, e.framePlain, e.flags, e.at, e.plainLength],
      [old.encLength, old.framePlain, old.flags, c.entries[i].at, c.entries[i].plainLength],
    );
    assert.deepEqual(frameBytes(e), before);
    assert.deepEqual(Buffer.from(await s2.get(c.digests[i])), c.blobs[i]);
  }
  // blob 2's frame held a dead blob: it is in a frame of its own making now
  const e2 = s2.entry(c.digests[2]) as IndexEntry;
  assert.equal(e2.framePlain, c.blobs[2].length);
  assert.deepEqual(Buffer.from(await s2.get(c.digests[2])), c.blobs[2]);
  for (const d of [c.digests[3], c.digests[4]]) assert.equal(s2.has(d), false);
  const v = await s2.verify();
  assert.deepEqual([v.errors, v.orphanPacks, v.blobs], [[], [], 3]);
  await s2.close();
});

test('a prune that meets a damaged frame it would copy whole stops with CORRUPT and deletes nothing', async () => {
  const c = await twoFrames('prune-whole-frame-damaged');
  const e = c.entries[0];
  const file = packPath(c.root, e.pack);
  const bytes = readFileSync(file);
  bytes[e.offset + Math.floor(e.encLength / 2)] ^= 0x40;
  writeFileSync(file, bytes);
  const before = snapshot(c.root);
  const s = await Store.open(new LocalBackend(c.root));
  await assert.rejects(s.prune(c.live), (err: { code?: string }) => err.code === 'CORRUPT');
  await s.close();
  // no new pack was written (the damaged frame is the first copied) and nothing went
  assert.deepEqual(snapshot(c.root), before);
});

test('planPrune against a model on random synthetic indexes (second copies included)', () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const hex = (i: number, tag: string) => createHash('sha256').update(`${tag}${i}`).digest('hex');
  const entry = (pack: string): IndexEntry => ({
    pack,
    type: 'data',
    flags: 0,
    offset: 0,
    encLength: 1,
    framePlain: 1,
    at: 0,
    plainLength: 1,
  });
  for (let round = 0; round < 300; round++) {
    const nPacks = 1 + rnd(6);
    const packs = Array.from({ length: nPacks }, (_, i) => ({ id: hex(i, `pack${round}-`), size: 100 + rnd(1000) }));
    const index = new Map<string, IndexEntry>();
    const duplicates = new Map<string, number>();
    const live = new Set<string>();
    /** The model: what each indexed pack holds, and whether each one is a live first copy. */
    const held = new Map<string, Array<{ digest: string; keep: boolean }>>();
    let b = 0;
    for (const p of packs) {
      // a pack listed but in no index is an orphan; an indexed pack missing from the listing still gets planned
      if (rnd(5) === 0) continue;
      const n = 1 + rnd(5);
      const list: Array<{ digest: string; keep: boolean }> = [];
      for (let i = 0; i < n; i++) {
        if (index.size > 0 && rnd(6) === 0) {
          // a second copy of a blob another pack holds: never the one kept
          const d = [...index.keys()][rnd(index.size)];
          if (index.get(d)?.pack === p.id) continue;
          duplicates.set(p.id, (duplicates.get(p.id) ?? 0) + 1);
          list.push({ digest: d, keep: false });
          continue;
        }
        const d = hex(b++, `blob${round}-`);
        index.set(d, entry(p.id));
        const isLive = rnd(2) === 0;
        if (isLive) live.add(d);
        list.push({ digest: d, keep: isLive });
      }
      if (list.length > 0) held.set(p.id, list);
    }
    live.add(hex(999, 'not-indexed')); // a live digest the store does not hold changes nothing
    const listed = packs.filter(() => rnd(8) !== 0);
    const plan = planPrune(index, listed, live, duplicates);
    const want = { keep: [] as string[], rewrite: [] as string[], drop: [] as string[], orphans: [] as string[] };
    let freed = 0;
    let copy = 0;
    for (const [id, list] of held) {
      const n = list.filter((x) => x.keep).length;
      const where = n === list.length ? want.keep : n === 0 ? want.drop : want.rewrite;
      where.push(id);
      if (where === want.rewrite) copy += list.filter((x) => x.keep).length;
      if (where !== want.keep) freed += listed.find((p) => p.id === id)?.size ?? 0;
    }
    for (const p of listed) {
      if (!held.has(p.id)) {
        want.orphans.push(p.id);
        freed += p.size;
      }
    }
    const sort = (a: string[]) => [...a].sort();
    assert.deepEqual(
      [sort(plan.keep), sort(plan.rewrite), sort(plan.drop), sort(plan.orphans)],
      [sort(want.keep), sort(want.rewrite), sort(want.drop), sort(want.orphans)],
      `round ${round}`,
    );
    assert.equal(plan.copyBlobs, copy);
    assert.equal(plan.freedBytes, freed);
    assert.equal(plan.liveBlobs + plan.deadBlobs, index.size + [...duplicates.values()].reduce((a, b) => a + b, 0));
    assert.equal(plan.liveBlobs, [...index.keys()].filter((d) => live.has(d)).length);
  }
});

test('prune stopped after any step leaves a store that verifies clean and reads every live blob', async () => {
  // how many steps a whole execute has (each one a place to stop)
  const probe = await craft('prune-steps');
  const steps: PruneStep[] = [];
  const s = await Store.open(new LocalBackend(probe.root));
  await s.prune(probe.live, { after: (st) => void steps.push(st) });
  await s.close();
  const kinds = steps.map((st) => st.step);
  // 2 packs rewritten into new packs; one new index; 4 old index files (the orphan's was
  // deleted) and the new packs' own index file go; 4 packs go
  assert.deepEqual(kinds, [
    'packs-written',
    'index-written',
    ...Array(5).fill('index-deleted'),
    ...Array(4).fill('pack-deleted'),
  ]);
  for (let stop = 0; stop < steps.length; stop++) {
    const c = await craft(`prune-kill-${stop}`);
    const st = await Store.open(new LocalBackend(c.root));
    let n = 0;
    await assert.rejects(
      st.prune(c.live, {
        after: () => {
          if (n++ === stop) throw new Error('killed');
        },
      }),
      /killed/,
    );
    await st.close();
    const after = await Store.open(new LocalBackend(c.root));
    const v = await after.verify();
    assert.deepEqual(v.errors, [], `stopped after step ${stop} (${kinds[stop]})`);
    for (const d of c.live)
      assert.deepEqual(Buffer.from(await after.get(d)), c.all.get(d), `live blob after step ${stop}`);
    // the next prune finishes the job
    await after.prune(c.live);
    await after.close();
    await assertFinished(c, `after the next prune (${stop})`);
  }
});

test('a prune writing its index in several files, stopped after any step, leaves every live blob readable', async () => {
  // 6 blobs stay: index files of 2 blobs make 3 new files
  const probe = await craft('prune-split-steps');
  const steps: PruneStep[] = [];
  const s = await Store.open(new LocalBackend(probe.root));
  await s.prune(probe.live, { after: (st) => void steps.push(st) }, { indexBlobs: 2 });
  await s.close();
  assert.deepEqual(
    steps.map((st) => st.step).filter((k) => k !== 'pack-deleted' && k !== 'index-deleted'),
    ['packs-written', 'index-written', 'index-written', 'index-written'],
  );
  assert.equal(indexFiles(probe.root).length, 3);
  for (let stop = 1; stop < steps.length; stop++) {
    const c = await craft(`prune-split-kill-${stop}`);
    const st = await Store.open(new LocalBackend(c.root));
    let n = 0;
    const after = (): void => {
      if (n++ === stop) throw new Error('killed');
    };
    await assert.rejects(st.prune(c.live, { after }, { indexBlobs: 2 }), /killed/);
    await st.close();
    const again = await Store.open(new LocalBackend(c.root));
    const v = await again.verify();
    assert.deepEqual(v.errors, [], `stopped after step ${stop} (${steps[stop].step})`);
    for (const d of c.live) assert.deepEqual(Buffer.from(await again.get(d)), c.all.get(d), `after step ${stop}`);
    await again.prune(c.live, {}, { indexBlobs: 2 });
    await again.close();
    await assertFinished(c, `after the next prune (${stop})`);
  }
});

test('a prune re-run after one stopped past its new packs keeps the live blobs, whatever order the index files load in', async () => {
  // The re-run copies the same live blobs in the same order, so it writes a pack of the same
  // name as the one the stopped prune wrote; that pack must stay. Which copy of each blob the
  // index loads first depends on the index files' names, so try several stores.
  for (let round = 0; round < 8; round++) {
    const root = tempDir(`prune-rerun-${round}`);
    const s = await Store.open(new LocalBackend(root), { compressInline: true });
    const live = new Set<string>();
    const all = new Map<string, Buffer>();
    const groups: Array<Array<[number, boolean]>> = [
      [
        [9000, true],
        [9100, true],
      ],
      [
        [8000, true],
        [8100, false],
        [8200, true],
      ],
      [[5000, false]],
    ];
    for (const [g, group] of groups.entries()) {
      for (const [i, [n, isLive]] of group.entries()) {
        const bytes = textOf(`rerun-${round}-${g}-${i}`, n);
        const { digest } = await s.put('data', bytes);
        all.set(digest, bytes);
        if (isLive) live.add(digest);
      }
      await s.flush();
    }
    await s.close();
    const s1 = await Store.open(new LocalBackend(root));
    await assert.rejects(
      s1.prune(live, {
        after: (st) => {
          if (st.step === 'packs-written') throw new Error('killed');
        },
      }),
      /killed/,
    );
    await s1.close();
    const s2 = await Store.open(new LocalBackend(root));
    await s2.prune(live);
    await s2.close();
    const s3 = await Store.open(new LocalBackend(root));
    const v = await s3.verify();
    assert.deepEqual([v.errors, v.orphanPacks, v.blobs], [[], [], live.size], `round ${round}`);
    for (const [d, bytes] of all) {
      if (live.has(d)) assert.deepEqual(Buffer.from(await s3.get(d)), bytes, `round ${round}: live blob`);
      else assert.equal(s3.has(d), false);
    }
    await s3.close();
  }
});

/** Run test/helpers/prune-child.ts on `root`, killed before its `killAt`-th change (0: never). */
function pruneChild(root: string, live: Set<string>, killAt: number): Promise<{ signal: string | null; out: string }> {
  const liveFile = path.join(root, '..', `live-${path.basename(root)}.json`);
  writeFileSync(liveFile, JSON.stringify([...live]));
  const script = new URL('../helpers/prune-child.js', import.meta.url).pathname;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, root, liveFile, String(killAt)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal === null && code !== 0) reject(new Error(`prune child failed: ${Buffer.concat(err)}`));
      else resolve({ signal, out: Buffer.concat(out).toString('utf8') });
    });
  });
}

test('prune in a process killed (SIGKILL) before each of its changes to the store leaves it clean and whole', async () => {
  // how many changes a whole prune makes
  const probe = await craft('prune-sigkill-probe');
  const whole = await pruneChild(probe.root, probe.live, 0);
  assert.equal(whole.signal, null);
  const { changes } = JSON.parse(whole.out) as { changes: number };
  // new pack and its index file, the new index, 5 old index files, 4 old packs
  assert.equal(changes, 12);
  for (let killAt = 1; killAt <= changes; killAt++) {
    const c = await craft(`prune-sigkill-${killAt}`);
    const r = await pruneChild(c.root, c.live, killAt);
    assert.equal(r.signal, 'SIGKILL', `killed before change ${killAt}`);
    const s = await Store.open(new LocalBackend(c.root));
    const v = await s.verify();
    assert.deepEqual(v.errors, [], `killed before change ${killAt}`);
    for (const d of c.live) assert.deepEqual(Buffer.from(await s.get(d)), c.all.get(d), `live blob (${killAt})`);
    await s.prune(c.live);
    const v2 = await s.verify();
    assert.deepEqual([v2.errors, v2.orphanPacks, v2.blobs], [[], [], 6], `after the next prune (${killAt})`);
    for (const [d, bytes] of c.all) {
      if (c.live.has(d)) assert.deepEqual(Buffer.from(await s.get(d)), bytes);
      else assert.equal(s.has(d), false);
    }
    await s.close();
  }
});
