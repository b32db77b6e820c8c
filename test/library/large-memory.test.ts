/**
 * Issue 22: listing and extracting a 200,000-entry ext4 tree (test/helpers/large-tree-pair.ts,
 * the fixture large-checkin.test.ts checks in) within `--memory 64M`. The run
 * with the small budget must complete and give exactly the output of an unbounded run
 * (`--memory 4G`), and its peak RSS (GNU time's %M, the kernel's maxrss) must stay under a
 * ceiling: the budget plus Node's own footprint and V8's young generation. The listing is
 * also checked against The Sleuth Kit's `fls -r -p` (every path, nothing more).
 */

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { StrataError } from '../../src/util/errors.js';
import { checkMemory, parseMemorySize, resetMemoryBudget, setMemoryBudget } from '../../src/util/memory.js';
import { outDir, treeManifest } from '../helpers/files.js';
import { LARGE_TREE_TIME, largeTreeImage, largeTreePaths } from '../helpers/large-tree-pair.js';
import { measured } from '../helpers/measured.js';
import { FIXTURES, have, scratch } from '../helpers/tools.js';

const ENTRIES = 200_000;
/**
 * Peak RSS allowed with --memory 64M: the budget (heap and buffers), Node's own ~52 MiB (the
 * CLI's `--version` peaks at 52 MiB here), V8's young generation (two 16 MiB semi-spaces,
 * outside the budget's reach) and 28 MiB of allocator slack. Measured: 160 MiB on the
 * /usr-shaped tree this test used before; 114 MiB (`ls -R -l --json`) on this one.
 */
const CEILING_64M = 176 * 1024 * 1024;
/**
 * Peak RSS allowed reading a saved map of this tree (11 MiB on disk) with --memory 40M: Node's
 * own ~52 MiB and a few MiB of column pages and name offsets (measured 82-86 MiB). This tree's
 * map loaded whole fits as well (84 MiB); the 1,000,000-entry one shows the difference
 * (bench/README, "blockmap --map and whatis --map").
 */
const CEILING_40M_MAP = 100 * 1024 * 1024;

for (const [cmd, pkg] of [
  ['mkfs.ext4', 'e2fsprogs'],
  ['fls', 'sleuthkit'],
  ['debugfs', 'e2fsprogs'],
  ['/usr/bin/time', 'time'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

const image = () => largeTreeImage(ENTRIES);
/** What `ls -R /` lists: the generated paths and mkfs's /lost+found. */
const LISTED = largeTreePaths(ENTRIES) + 1;

function fileSha(p: string): string {
  return createHash('sha256').update(readFileSync(p)).digest('hex');
}

test('ls -R -l --json of 200,000 entries: --memory 64M equals the unbounded run, under the RSS ceiling, and every fls path; ls -R the same paths', async () => {
  const img = await image();
  const dir = scratch('large-ls');
  try {
    const small = await measured(['ls', '-R', '-l', '--json', '--memory', '64M', img, '/'], path.join(dir, 'small'));
    assert.equal(small.code, 0, small.stderr);
    const big = await measured(['ls', '-R', '-l', '--json', '--memory', '4G', img, '/'], path.join(dir, 'big'));
    assert.equal(big.code, 0, big.stderr);
    assert.equal(fileSha(path.join(dir, 'small')), fileSha(path.join(dir, 'big')));
    assert.ok(
      small.maxRss < CEILING_64M,
      `peak RSS ${(small.maxRss / 2 ** 20).toFixed(1)} MiB with --memory 64M (ceiling ${CEILING_64M / 2 ** 20} MiB)`,
    );
    // the budget is what bounds it: the caches of the 4G run are the larger ones
    assert.ok(small.maxRss < big.maxRss, `64M run ${small.maxRss} B, 4G run ${big.maxRss} B`);

    // the oracle: The Sleuth Kit's recursive listing names the same paths
    const ours = readFileSync(path.join(dir, 'small'), 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => (JSON.parse(l) as { path: string }).path);
    const flsOut = await new Promise<string>((resolve, reject) => {
      const c = spawn('fls', ['-r', '-p', img], { stdio: ['ignore', 'pipe', 'inherit'] });
      const parts: Buffer[] = [];
      c.stdout.on('data', (b: Buffer) => parts.push(b));
      c.on('error', reject);
      c.on('close', (code) =>
        code === 0 ? resolve(Buffer.concat(parts).toString('utf8')) : reject(new Error(`fls ${code}`)),
      );
    });
    const theirs = flsOut
      .trimEnd()
      .split('\n')
      .map((l) => `/${l.slice(l.indexOf('\t') + 1)}`)
      .filter((p) => !p.startsWith('/$OrphanFiles'));
    assert.equal(ours.length, LISTED); // the tree and lost+found
    assert.deepEqual([...ours].sort(), [...theirs].sort());

    // names only (lines made as bytes, not records): the same paths in the same order
    const names = await measured(['ls', '-R', '--memory', '64M', img, '/'], path.join(dir, 'names'));
    assert.equal(names.code, 0, names.stderr);
    assert.ok(names.maxRss < CEILING_64M, `names-only peak RSS ${(names.maxRss / 2 ** 20).toFixed(1)} MiB`);
    assert.deepEqual(readFileSync(path.join(dir, 'names'), 'utf8').trimEnd().split('\n'), ours);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('extract / of 200,000 entries: --memory 64M writes the same tree as the unbounded run, under the RSS ceiling', async () => {
  const img = await image();
  const small = outDir('large-extract-64m');
  const big = outDir('large-extract-4g');
  const logs = scratch('large-extract-logs');
  try {
    const a = await measured(['extract', '--memory', '64M', img, '/', small], path.join(logs, 'small'));
    assert.equal(a.code, 0, a.stderr);
    const b = await measured(['extract', '--memory', '4G', img, '/', big], path.join(logs, 'big'));
    assert.equal(b.code, 0, b.stderr);
    assert.ok(
      a.maxRss < CEILING_64M,
      `peak RSS ${(a.maxRss / 2 ** 20).toFixed(1)} MiB with --memory 64M (ceiling ${CEILING_64M / 2 ** 20} MiB)`,
    );
    const ma = treeManifest(small);
    assert.equal(ma.split('\n').length, LISTED);
    assert.equal(ma, treeManifest(big));
    // directory times were set after their contents (the streaming finish): the fixed mtime of the recipe
    const st = lstatSync(path.join(small, 'pkg00', 'd0'), { bigint: true });
    assert.equal(st.mtimeNs, BigInt(LARGE_TREE_TIME) * 1_000_000_000n);
  } finally {
    for (const d of [small, big, logs]) rmSync(d, { recursive: true, force: true });
  }
});

test('--memory takes sizes and refuses nonsense with a usage error', async () => {
  const dir = scratch('large-usage');
  try {
    const r = await measured(['ls', '--memory', '1M', path.join(FIXTURES, 'no-such-image'), '/'], path.join(dir, 'o'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--memory 1M is below/);
    const r2 = await measured(
      ['ls', '--memory', 'lots', path.join(FIXTURES, 'no-such-image'), '/'],
      path.join(dir, 'o'),
    );
    assert.match(r2.stderr, /--memory: not a size: "lots"/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('blockmap of 200,000 entries: --memory 64M (claims and names spilled) equals the map kept whole, under the RSS ceiling; debugfs agrees', async () => {
  const img = await image();
  const dir = scratch('large-blockmap');
  try {
    const small = await measured(['blockmap', '--json', '--memory', '64M', img], path.join(dir, 'small'));
    assert.equal(small.code, 0, small.stderr);
    // the whole map in memory (--save keeps it whole), unbounded
    const big = await measured(
      ['blockmap', '--json', '--memory', '4G', '--save', path.join(dir, 'map.bm'), img],
      path.join(dir, 'big'),
    );
    assert.equal(big.code, 0, big.stderr);
    assert.equal(fileSha(path.join(dir, 'small')), fileSha(path.join(dir, 'big')));
    assert.ok(
      small.maxRss < CEILING_64M,
      `peak RSS ${(small.maxRss / 2 ** 20).toFixed(1)} MiB with --memory 64M (ceiling ${CEILING_64M / 2 ** 20} MiB)`,
    );
    assert.ok(small.maxRss < big.maxRss, `64M run ${small.maxRss} B, 4G run ${big.maxRss} B`);
    // the saved map read back from its file a page at a time (not loaded whole) in 40M, where
    // the map kept whole does not fit (next test): the same records, and whatis the same owners
    const fromFile = await measured(
      ['blockmap', '--json', '--memory', '40M', '--map', path.join(dir, 'map.bm'), img],
      path.join(dir, 'from-file'),
    );
    assert.equal(fromFile.code, 0, fromFile.stderr);
    assert.equal(fileSha(path.join(dir, 'from-file')), fileSha(path.join(dir, 'big')));
    assert.ok(
      fromFile.maxRss < CEILING_40M_MAP,
      `blockmap --map at 40M: peak RSS ${(fromFile.maxRss / 2 ** 20).toFixed(1)} MiB (ceiling ${CEILING_40M_MAP / 2 ** 20} MiB)`,
    );
    // --summary streamed in the small budget: its counts are those of the records listed
    const sum = await measured(['blockmap', '--summary', '--json', '--memory', '64M', img], path.join(dir, 'sum'));
    assert.equal(sum.code, 0, sum.stderr);
    const records = readFileSync(path.join(dir, 'small'), 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { start: number; length: number; kind: string; path?: string; fileOffset?: number });
    const s = JSON.parse(readFileSync(path.join(dir, 'sum'), 'utf8')) as {
      records: number;
      kinds: Array<{ kind: string; bytes: number; records: number }>;
    };
    assert.equal(s.records, records.length);
    // the default budget (no --memory) is a whole-process figure: the same map within 256 MiB of peak RSS
    const dflt = await measured(['blockmap', '--json', img], path.join(dir, 'default'));
    assert.equal(dflt.code, 0, dflt.stderr);
    assert.equal(fileSha(path.join(dir, 'default')), fileSha(path.join(dir, 'big')));
    assert.ok(dflt.maxRss < 256 * 2 ** 20, `default budget: peak RSS ${(dflt.maxRss / 2 ** 20).toFixed(1)} MiB`);
    // whatis streams the map too: a range over two records of the listing, clipped, at 64M
    const f = records.findIndex((r, i) => i > 1000 && r.kind === 'file' && records[i + 1]?.kind === 'file');
    const [r0, r1] = [records[f], records[f + 1]];
    const w = await measured(
      ['whatis', '--memory', '64M', img, `${r0.start + 1}+${r0.length + r1.length - 2}`, '--json'],
      path.join(dir, 'whatis'),
    );
    assert.equal(w.code, 0, w.stderr);
    const clip = (r: (typeof records)[number], start: number, length: number) => ({
      ...r,
      start,
      length,
      ...(r.fileOffset !== undefined ? { fileOffset: r.fileOffset + (start - r.start) } : {}),
    });
    assert.deepEqual(
      readFileSync(path.join(dir, 'whatis'), 'utf8')
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l)),
      [clip(r0, r0.start + 1, r0.length - 1), clip(r1, r1.start, r1.length - 1)],
    );
    assert.ok(w.maxRss < CEILING_64M, `whatis --memory 64M: peak RSS ${(w.maxRss / 2 ** 20).toFixed(1)} MiB`);
    const wm = await measured(
      [
        'whatis',
        '--memory',
        '40M',
        '--map',
        path.join(dir, 'map.bm'),
        img,
        `${r0.start + 1}+${r0.length + r1.length - 2}`,
        '--json',
      ],
      path.join(dir, 'whatis-map'),
    );
    assert.equal(wm.code, 0, wm.stderr);
    assert.equal(readFileSync(path.join(dir, 'whatis-map'), 'utf8'), readFileSync(path.join(dir, 'whatis'), 'utf8'));
    assert.ok(wm.maxRss < CEILING_40M_MAP, `whatis --map at 40M: peak RSS ${(wm.maxRss / 2 ** 20).toFixed(1)} MiB`);
    for (const k of s.kinds) {
      const mine = records.filter((r) => r.kind === k.kind);
      assert.equal(mine.length, k.records, k.kind);
      assert.equal(
        mine.reduce((a, r) => a + r.length, 0),
        k.bytes,
        k.kind,
      );
    }
    // the oracle: debugfs's block list of a few hundred files holds every block the map gives them
    const files = records.filter((r) => r.kind === 'file' && r.path?.endsWith('.txt')).filter((_, i) => i % 250 === 0);
    assert.ok(files.length > 100, `${files.length} files`);
    const cmds = path.join(dir, 'cmds');
    writeFileSync(cmds, files.map((r) => `blocks "${r.path}"\n`).join(''));
    const out = spawnSync('debugfs', ['-f', cmds, img], { encoding: 'utf8', maxBuffer: 1 << 28 });
    assert.equal(out.status, 0, out.stderr);
    const lists = out.stdout
      .split(/^debugfs: .*$/m)
      .slice(1)
      .map((t) => new Set(t.trim().split(/\s+/).map(Number)));
    assert.equal(lists.length, files.length);
    files.forEach((r, i) => {
      for (let b = r.start; b < r.start + r.length; b += 4096)
        assert.ok(lists[i].has(b / 4096), `${r.path}: block ${b / 4096}`);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('blockmap --save of 200,000 entries (the map kept whole) in --memory 40M stops with the memory error (status 1), not a partial map', async () => {
  const img = await image();
  const dir = scratch('large-blockmap');
  try {
    const r = await measured(
      ['blockmap', '--summary', '--memory', '40M', '--save', path.join(dir, 'm.bm'), img],
      path.join(dir, 'o'),
    );
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      /^strata: memory budget: limit of 40 MiB exceeded while building the block map \(\d+ MiB of heap and buffers in use, \d+ MiB resident\); raise it with --memory\n$/,
    );
    assert.equal(readFileSync(path.join(dir, 'o'), 'utf8'), '');
    assert.ok(r.maxRss < CEILING_64M, `peak RSS ${r.maxRss}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('checkMemory: live data above the budget is a LIMIT StrataError; garbage is collected, not counted', () => {
  try {
    setMemoryBudget(parseMemorySize('32M'));
    // garbage only: made and dropped, then checked
    for (let i = 0; i < 64; i++) Buffer.alloc(1 << 20).fill(i);
    checkMemory('testing garbage');
    resetMemoryBudget();
    setMemoryBudget(parseMemorySize('32M'));
    const live = Array.from({ length: 48 }, (_, i) => Buffer.alloc(1 << 20).fill(i));
    assert.throws(
      () => checkMemory('testing'),
      (e: unknown) =>
        e instanceof StrataError &&
        e.code === 'LIMIT' &&
        /^memory budget: limit of 32 MiB exceeded while testing/.test(e.message),
    );
    assert.equal(live.length, 48);
  } finally {
    resetMemoryBudget();
  }
});
