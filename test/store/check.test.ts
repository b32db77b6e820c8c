import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { BlobMap, SPILL_AFTER } from '../../src/store/blob-map.js';
import { LocalBackend } from '../../src/store/local-backend.js';
import { describeFinding, type IndexEntry, Store, type StoreFinding } from '../../src/store/store.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { tempDir, textOf } from '../library/images.js';

/**
 * verify's typed findings, one kind of damage at a time, each made by really changing the
 * files of a store on disk: a deleted pack, a flipped byte, a broken zstd frame, a cut
 * pack, a pack replaced by another (past its end, another layout, a blob it lacks), a
 * deleted index file.
 */

const packPath = (root: string, id: string) => path.join(root, 'packs', id.slice(0, 2), id);

/** A store of one pack holding `blobs` (one flush); the pack id and each blob's entry. */
async function onePack(
  name: string,
  blobs: Buffer[],
  opts: { solo?: boolean } = {},
): Promise<{ root: string; pack: string; digests: string[]; entries: IndexEntry[] }> {
  const root = tempDir(name);
  const s = await Store.open(new LocalBackend(root), { compressInline: true });
  const digests: string[] = [];
  for (const b of blobs) digests.push((await s.put('data', b, undefined, opts)).digest);
  await s.flush();
  const entries = digests.map((d) => s.entry(d) as IndexEntry);
  await s.close();
  const pack = entries[0].pack;
  for (const e of entries) assert.equal(e.pack, pack);
  return { root, pack, digests, entries };
}

async function findings(root: string): Promise<{ findings: StoreFinding[]; errors: string[]; orphans: string[] }> {
  const s = await Store.open(new LocalBackend(root));
  try {
    const v = await s.verify();
    // the text lines are the findings described, the harmless ones apart
    assert.deepEqual(
      v.errors,
      v.findings.filter((f) => f.kind !== 'orphan-pack').map((f) => describeFinding(f, s.name)),
    );
    return { findings: v.findings, errors: v.errors, orphans: v.orphanPacks };
  } finally {
    await s.close();
  }
}

const kinds = (fs: StoreFinding[]) => fs.map((f) => f.kind).sort();

test('a clean store has no findings', async () => {
  const { root } = await onePack('check-clean', [textOf('c1', 9000), bytesOf('c2', 9000)]);
  assert.deepEqual((await findings(root)).findings, []);
});

test('a deleted pack: missing-pack for each blob it held', async () => {
  const { root, pack, digests } = await onePack('check-missing', [textOf('m1', 9000), textOf('m2', 7000)]);
  unlinkSync(packPath(root, pack));
  const f = await findings(root);
  assert.deepEqual(
    f.findings.sort((a, b) => (('blob' in a ? a.blob : '') < ('blob' in b ? b.blob : '') ? -1 : 1)),
    [...digests].sort().map((blob) => ({ kind: 'missing-pack', blob, pack })),
  );
  assert.match(f.errors[0], /its pack .* is missing/);
});

test('a flipped byte in a plain frame: pack-name-mismatch and digest-mismatch of exactly that blob', async () => {
  // incompressible blobs are kept plain, so the flipped byte lands in one blob's bytes
  const { root, pack, digests, entries } = await onePack(
    'check-flip',
    Array.from({ length: 5 }, (_, i) => bytesOf(`flip-${i}`, 9000 + i)),
  );
  const victim = entries[3];
  assert.equal(victim.flags, 0, 'a plain frame');
  const file = packPath(root, pack);
  const body = readFileSync(file);
  body[victim.offset + victim.at + 17] ^= 0x01;
  writeFileSync(file, body);
  const f = await findings(root);
  assert.deepEqual(kinds(f.findings), ['digest-mismatch', 'pack-name-mismatch']);
  const dm = f.findings.find((x) => x.kind === 'digest-mismatch');
  assert.deepEqual(dm, { kind: 'digest-mismatch', pack, blob: digests[3], offset: victim.offset });
  const nm = f.findings.find((x) => x.kind === 'pack-name-mismatch');
  assert.ok(nm && nm.kind === 'pack-name-mismatch' && nm.pack === pack && nm.sha256 !== pack);
});

test('a broken zstd frame: undecodable-frame naming every blob of the frame', async () => {
  const { root, pack, digests, entries } = await onePack(
    'check-zstd',
    Array.from({ length: 4 }, (_, i) => textOf(`zstd-${i}`, 12000 + i)),
  );
  const e = entries[0];
  assert.ok(e.flags & 1, 'a zstd frame');
  const file = packPath(root, pack);
  const body = readFileSync(file);
  // the zstd frame magic (28 b5 2f fd) no longer says zstd
  assert.deepEqual([...body.subarray(e.offset, e.offset + 4)], [0x28, 0xb5, 0x2f, 0xfd]);
  body[e.offset] = 0;
  writeFileSync(file, body);
  const f = await findings(root);
  assert.deepEqual(kinds(f.findings), ['pack-name-mismatch', 'undecodable-frame']);
  const u = f.findings.find((x) => x.kind === 'undecodable-frame');
  assert.ok(u && u.kind === 'undecodable-frame');
  assert.deepEqual([u.pack, u.offset, [...u.blobs].sort()], [pack, e.offset, [...digests].sort()]);
  assert.match(u.message, /zstd frame does not decode/);
});

test('a cut pack (trailer gone): unreadable-pack', async () => {
  const { root, pack } = await onePack('check-cut', [textOf('cut-1', 9000), textOf('cut-2', 9000)]);
  const file = packPath(root, pack);
  truncateSync(file, statSync(file).size - 5);
  const f = await findings(root);
  assert.deepEqual(kinds(f.findings), ['pack-name-mismatch', 'unreadable-pack']);
  const u = f.findings.find((x) => x.kind === 'unreadable-pack');
  assert.ok(u && u.kind === 'unreadable-pack' && u.pack === pack);
  assert.match(u.message, /trailer magic missing/);
});

test('a pack replaced by a smaller one: index entries past its end', async () => {
  const big = bytesOf('past-big', 1024 * 1024 + 1000);
  const small = bytesOf('past-small', 3000);
  const a = await onePack('check-past-a', [big, small]);
  const b = await onePack('check-past-b', [small]);
  copyFileSync(packPath(b.root, b.pack), packPath(a.root, a.pack));
  const size = statSync(packPath(a.root, a.pack)).size;
  const f = await findings(a.root);
  const past = f.findings.filter((x) => x.kind === 'index-past-pack-end');
  assert.deepEqual(
    past.map((x) => x.kind === 'index-past-pack-end' && [x.blob, x.pack, x.packSize]),
    a.entries
      .map((e, i) => [a.digests[i], a.pack, size, e.offset + e.encLength] as const)
      .filter(([, , , end]) => end > size)
      .map(([d, p, s]) => [d, p, s]),
  );
  assert.ok(past.length >= 1);
  assert.deepEqual(kinds(f.findings), [...past.map(() => 'index-past-pack-end'), 'pack-name-mismatch'].sort());
});

/** A pack replaced by one of another layout: index-mismatch, and blob-not-in-pack for a blob it lacks. */
async function anotherLayout(tag: string): Promise<void> {
  // plain (incompressible) frames, so sizes are known: the replacement is larger
  const x = bytesOf('lay-x', 6000);
  const y = bytesOf('lay-y', 5000);
  const z = bytesOf('lay-z', 9000);
  const a = await onePack(`check-layout-a${tag}`, [x, y]);
  const b = await onePack(`check-layout-b${tag}`, [x, z]);
  copyFileSync(packPath(b.root, b.pack), packPath(a.root, a.pack));
  const f = await findings(a.root);
  assert.deepEqual(kinds(f.findings), ['blob-not-in-pack', 'index-mismatch', 'pack-name-mismatch']);
  assert.deepEqual(
    f.findings.filter((q) => q.kind !== 'pack-name-mismatch').sort((p, q) => (p.kind < q.kind ? -1 : 1)),
    [
      { kind: 'blob-not-in-pack', blob: a.digests[1], pack: a.pack },
      { kind: 'index-mismatch', blob: a.digests[0], pack: a.pack },
    ],
  );
}

test('a pack replaced by one of another layout: index-mismatch, and blob-not-in-pack for a blob it lacks', async () => {
  await anotherLayout('');
});

test('the same findings with the index on its spill file (as in a store of more than 65,536 blobs)', async () => {
  BlobMap.spillAfter = 1;
  try {
    await anotherLayout('-spilled');
    const { root, pack, digests } = await onePack('check-missing-spilled', [textOf('ms1', 9000), textOf('ms2', 7000)]);
    unlinkSync(packPath(root, pack));
    const f = await findings(root);
    assert.deepEqual(f.findings.map((x) => x.kind === 'missing-pack' && x.blob).sort(), [...digests].sort());
  } finally {
    BlobMap.spillAfter = SPILL_AFTER;
  }
});

test('a deleted index file: its pack is an orphan, harmless', async () => {
  const { root, pack } = await onePack('check-orphan', [textOf('o1', 9000)]);
  const [ix] = readdirSync(path.join(root, 'index'));
  unlinkSync(path.join(root, 'index', ix));
  const f = await findings(root);
  assert.deepEqual(f.findings, [{ kind: 'orphan-pack', pack, bytes: statSync(packPath(root, pack)).size }]);
  assert.deepEqual([f.errors, f.orphans], [[], [pack]]);
});

test('strata verify prints the findings as lines, and --json gives them typed', async () => {
  const { Library } = await import('../../src/library/library.js');
  const { strata } = await import('../helpers/cli.js');
  const libDir = path.join(tempDir('check-cli'), 'lib');
  const lib = await Library.open(libDir);
  const blobs = Array.from({ length: 3 }, (_, i) => bytesOf(`cli-${i}`, 9000 + i));
  const digests: string[] = [];
  for (const b of blobs) digests.push((await lib.store.put('data', b)).digest);
  await lib.store.flush();
  const e = lib.store.entry(digests[1]) as IndexEntry;
  await lib.close();
  const file = packPath(path.join(libDir, 'store'), e.pack);
  const body = readFileSync(file);
  body[e.offset + e.at + 5] ^= 0x10;
  writeFileSync(file, body);
  const text = await strata(['verify', '--library', libDir]);
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, /; 2 errors, 0 missing blobs, 0 orphan packs/);
  assert.match(text.stdout, new RegExp(`error: blob ${digests[1]} in .* content does not match its sha256`));
  assert.match(text.stdout, new RegExp(`error: pack ${e.pack}: content does not match its name`));
  const json = await strata(['verify', '--library', libDir, '--json']);
  assert.equal(json.code, 1, json.stderr);
  const r = JSON.parse(json.stdout) as { findings: StoreFinding[]; errors: string[] };
  assert.deepEqual(
    r.findings.map((f) => f.kind),
    ['pack-name-mismatch', 'digest-mismatch'],
  );
  assert.deepEqual(r.findings[1], { kind: 'digest-mismatch', pack: e.pack, blob: digests[1], offset: e.offset });
  assert.equal(r.errors.length, 2);
});
