/**
 * Issue 22: nothing holds a large version's whole file list. A 200,000-entry ext4 image
 * (test/helpers/large-tree-pair.ts) checked in, then with `--memory 64M`:
 * - the service's file queries (a directory's listing, `/` recursive, a file's content) stay
 *   under an RSS ceiling and agree with debugfs (`ls -p`, `cat`) and The Sleuth Kit
 *   (`fls -r -p`);
 * - `diff NAME@1 IMAGE` stays under an RSS ceiling and prints exactly what `diff` of the two
 *   image files prints.
 * Main's build (7b5b2aa) held the manifest whole for both: the service peaked at 236 MiB and
 * the diff at 231 MiB here (load 18), over the ceilings below; this build 133 and 173 MiB.
 */

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { compareTreePaths } from '../../src/library/manifest.js';
import { largeTreeImage, largeTreePaths } from '../helpers/large-tree-pair.js';
import { have, ROOT, scratch } from '../helpers/tools.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');
const ENTRIES = 200_000;
const MiB = 2 ** 20;
/** Peak RSS of the service over the queries below with --memory 64M (measured: 133 MiB; main's build 236). */
const SERVE_CEILING = 184 * MiB;
/** Peak RSS of `diff big@1 IMAGE --json` with --memory 64M (measured: 173 MiB; main's build 231). */
const DIFF_CEILING = 204 * MiB;

for (const [cmd, pkg] of [
  ['fls', 'sleuthkit'],
  ['debugfs', 'e2fsprogs'],
  ['/usr/bin/time', 'time'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

/** The CLI under GNU time: exit status, stdout, stderr, peak RSS in bytes. */
function measured(args: string[]): { code: number; stdout: Buffer; stderr: string; maxRss: number } {
  const rssFile = path.join(scratch('verlist-rss'), 'rss');
  try {
    const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', rssFile, process.execPath, CLI, ...args], {
      maxBuffer: 256 * MiB,
    });
    const kb = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString(), maxRss: kb * 1024 };
  } finally {
    rmSync(path.dirname(rssFile), { recursive: true, force: true });
  }
}

/** `strata --memory 64M serve` of `lib`: its URL, its peak RSS so far (VmHWM), and stop. */
async function serve(lib: string) {
  const srv = spawn(
    process.execPath,
    [CLI, '--memory', '64M', 'serve', '--library', lib, '--listen', '127.0.0.1:0', '--quiet'].concat([
      '--default-visibility',
      'public',
      '--rate-limit',
      '0',
    ]),
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    srv.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = / at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    srv.on('exit', (code) => reject(new Error(`strata serve exited ${code}: ${err}`)));
  });
  return {
    url,
    peakRss: () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${srv.pid}/status`, 'utf8'))?.[1]) * 1024,
    stop: async () => {
      if (srv.exitCode !== null || srv.signalCode !== null) return;
      const gone = new Promise((r) => srv.once('exit', r));
      srv.kill('SIGTERM');
      await gone;
    },
  };
}

function tool(cmd: string, args: string[]): Buffer {
  const r = spawnSync(cmd, args, { maxBuffer: 256 * MiB });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** `fls -r -p` of the image (below inode `ino` when given) as absolute paths, TSK's orphan folder left out. */
function flsPaths(img: string, under = '', ino?: number): string[] {
  return tool('fls', ['-r', '-p', img, ...(ino === undefined ? [] : [String(ino)])])
    .toString('utf8')
    .trimEnd()
    .split('\n')
    .map((l) => `${under}/${l.slice(l.indexOf('\t') + 1)}`)
    .filter((p) => !p.includes('$OrphanFiles'));
}

interface Row {
  path: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  ino: number;
}
interface Page {
  items: Row[];
  total: number;
}

test('200,000 entries in --memory 64M: the service`s file queries (debugfs, fls) and diff of the version against an image (the image diff`s bytes) hold no whole list', async () => {
  const base = await largeTreeImage(ENTRIES);
  const changed = await largeTreeImage(ENTRIES, true);
  const dir = scratch('large-verlist');
  try {
    const lib = path.join(dir, 'lib');
    const ci = measured(['--memory', '64M', 'checkin', base, '--name', 'big', '--library', lib, '--json']);
    assert.equal(ci.code, 0, ci.stderr);

    // diff of the version against the changed image: the bytes diff of the two images prints
    const ours = measured(['--memory', '64M', 'diff', 'big@1', changed, '--json', '--library', lib]);
    const theirs = measured(['--memory', '64M', 'diff', base, changed, '--json']);
    assert.equal(theirs.code, 1, theirs.stderr);
    assert.equal(ours.code, 1, ours.stderr);
    assert.ok(theirs.stdout.length > 100_000, `${theirs.stdout.length} bytes of diff`);
    assert.ok(ours.stdout.equals(theirs.stdout), 'diff big@1 IMAGE differs from diff of the two images');
    assert.ok(
      ours.maxRss < DIFF_CEILING,
      `diff big@1 IMAGE peaked at ${(ours.maxRss / MiB).toFixed(1)} MiB (ceiling ${DIFF_CEILING / MiB})`,
    );

    const srv = await serve(lib);
    try {
      const files = `${srv.url}/v1/images/big/versions/1/files`;
      const get = async (q: string) => {
        const r = await fetch(`${files}${q}`);
        if (r.status !== 200) assert.fail(`${q}: ${r.status} ${await r.text()}`);
        return r;
      };
      const page = async (q: string) => (await (await get(q)).json()) as Page;

      // a directory: what debugfs lists in it (inode, mode, owner, size of each name)
      const d0 = await page('?path=/pkg00/d0&limit=1000');
      const want = tool('debugfs', ['-R', 'ls -p /pkg00/d0', base])
        .toString('utf8')
        .trim()
        .split('\n')
        .map((l) => l.split('/'))
        .filter((f) => f[5] !== '.' && f[5] !== '..')
        .map(([, ino, mode, uid, gid, name, size]) => ({
          path: `/pkg00/d0/${name}`,
          ino: Number(ino),
          mode: Number.parseInt(mode, 8) & 0o7777,
          uid: Number(uid),
          gid: Number(gid),
          size: (Number.parseInt(mode, 8) & 0o170000) === 0o040000 ? null : Number(size),
        }));
      assert.ok(want.length > 50, `${want.length} names in /pkg00/d0`);
      assert.equal(d0.total, want.length);
      const got = d0.items.map((e) => ({
        path: e.path,
        ino: e.ino,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.type === 'dir' ? null : e.size,
      }));
      const byPath = (a: { path: string }, b: { path: string }) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
      assert.deepEqual(got.sort(byPath), want.sort(byPath));

      // a subtree recursive, every page: the paths fls lists below it
      const pkg = tool('debugfs', ['-R', 'stat /pkg05', base]).toString('utf8');
      const pkgIno = Number(/Inode: (\d+)/.exec(pkg)?.[1]);
      const flsPkg = flsPaths(base, '/pkg05', pkgIno);
      const sub: string[] = [];
      for (let off = 0; ; off += 1000) {
        const p = await page(`?path=/pkg05&recursive=true&limit=1000&offset=${off}`);
        assert.equal(p.total, flsPkg.length);
        sub.push(...p.items.map((e) => e.path));
        if (p.items.length < 1000) break;
      }
      assert.ok(flsPkg.length > 1000, `${flsPkg.length} paths under /pkg05`);
      assert.deepEqual([...sub].sort(), [...flsPkg].sort());

      // `/` recursive: as many entries as fls lists, a page at each end among them, in walk order
      const all = new Set(flsPaths(base));
      assert.equal(all.size, largeTreePaths(ENTRIES) + 1); // and mkfs's /lost+found
      const first = await page('?path=/&recursive=true&limit=1000');
      assert.equal(first.total, all.size);
      const last = await page(`?path=/&recursive=true&limit=1000&offset=${all.size - 700}`);
      assert.equal(last.items.length, 700);
      for (const p of [first, last]) {
        for (const e of p.items) assert.ok(all.has(e.path), `${e.path} is not in fls's listing`);
        for (let i = 1; i < p.items.length; i++) assert.ok(compareTreePaths(p.items[i - 1].path, p.items[i].path) < 0);
      }

      // a file's content: what debugfs reads from the image
      const body = Buffer.from(await (await get('/content?path=/pkg00/d0/file-11.txt')).arrayBuffer());
      assert.ok(body.length > 1_000_000, `${body.length} bytes`);
      assert.ok(body.equals(tool('debugfs', ['-R', 'cat /pkg00/d0/file-11.txt', base])));

      const peak = srv.peakRss();
      assert.ok(
        peak < SERVE_CEILING,
        `the service peaked at ${(peak / MiB).toFixed(1)} MiB (ceiling ${SERVE_CEILING / MiB})`,
      );
    } finally {
      await srv.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
