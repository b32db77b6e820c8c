import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readdirSync, rmdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
import { type ExtImageSpec, extImage, type KernelEntry, kernelViewCached, treeView } from '../helpers/ext-tree.js';
import { mountPoint, type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { have, scratch } from '../helpers/tools.js';

/**
 * `strata mount REF MOUNTPOINT --remote URL`: a version held by a real `strata serve` (a
 * child process on port 0, the image private to its project, read with a reader's token)
 * mounted through the service's API: the tree equals the kernel's own loop mount of the
 * image checked in; every blob lands in the local chunk cache, so a second mount reads no
 * chunk from the service (its /metrics counts the chunk reads); without a token the
 * version does not exist.
 */

for (const tool of ['mount', 'umount', 'mkfs.ext4', 'sha256sum']) {
  test(`tool ${tool} is installed`, () => assert.ok(have(tool), `${tool} is missing`));
}

const MiB = 1 << 20;
const EXT4_4K: ExtImageSpec = {
  name: 'ext4-4k',
  mkfs: 'mkfs.ext4',
  args: ['-b', '4096', '-N', '30000'],
  size: 160 * MiB,
};

let dir: string;
let server: ChildProcess | undefined;
let url: string;
let token: string;
let img: string;

before(async () => {
  img = await extImage(EXT4_4K);
  dir = scratch('fuse-remote');
  const lib = path.join(dir, 'lib');
  const ci = await strata(['checkin', '--library', lib, '--name', 'ops/ext', img]);
  assert.equal(ci.code, 0, ci.stderr);
  const L = ['--library', lib];
  const u = await strata(['user', 'add', 'rita', '--project', 'ops', '--role', 'reader', ...L]);
  assert.equal(u.code, 0, u.stderr);
  const t = await strata(['token', 'create', '--user', 'rita', '--project', 'ops', '--scope', 'read', ...L]);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
  const srv = spawn(
    process.execPath,
    [CLI, 'serve', ...L, '--listen', '127.0.0.1:0', '--default-project', 'ops', '--quiet'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  server = srv;
  url = await new Promise<string>((resolve, reject) => {
    let err = '';
    srv.stderr?.on('data', (d) => {
      err += d;
      const m = / at (http:\/\/127\.0\.0\.1:\d+) /.exec(err);
      if (m) resolve(m[1]);
    });
    srv.on('close', (c) => reject(new Error(`strata serve exited ${c}: ${err}`)));
  });
});

after(async () => {
  if (server && server.exitCode === null) {
    const done = new Promise((r) => server?.on('close', r));
    server.kill('SIGTERM');
    await done;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** GETs of /v1/chunks/:digest the server answered, from its /metrics. */
async function chunkReads(): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let n = 0;
  for (const m of text.matchAll(/^strata_http_requests_total\{([^}]*)\} (\d+)$/gm)) {
    if (m[1].includes('/v1/chunks/:digest') && m[1].includes('GET')) n += Number(m[2]);
  }
  return n;
}

const FIELDS: Array<keyof KernelEntry> = [
  'type',
  'mode',
  'uid',
  'gid',
  'size',
  'nlink',
  'ino',
  'mtimeNs',
  'atimeNs',
  'ctimeNs',
  'birthNs',
  'rdev',
  'target',
  'sha256',
  'xattrs',
];

function differences(kernel: Map<string, KernelEntry>, ours: Map<string, KernelEntry>): string[] {
  const diffs: string[] = [];
  for (const [p, k] of kernel) {
    if (p === '/') continue; // the manifest keeps no record of the root directory itself
    const o = ours.get(p);
    if (!o) {
      diffs.push(`${p}: missing`);
      continue;
    }
    for (const f of FIELDS) {
      const a = JSON.stringify(k[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      const b = JSON.stringify(o[f], (_k, x) => (typeof x === 'bigint' ? String(x) : x));
      if (a !== b) diffs.push(`${p}: ${f} kernel ${a} mount ${b}`);
    }
  }
  for (const p of ours.keys()) if (!kernel.has(p)) diffs.push(`${p}: only in the mount`);
  return diffs;
}

async function stopClean(m: StrataMount): Promise<void> {
  assert.equal(await m.stop(), 0, m.stderr());
}

test('mount --remote: the tree of a version on a library service equals the kernel loop mount; a second mount reads every chunk from the local cache', async () => {
  const kernel = await kernelViewCached(img);
  const cache = path.join(dir, 'chunk-cache');
  const prev = process.env.STRATA_TOKEN;
  process.env.STRATA_TOKEN = token;
  try {
    const before = await chunkReads();
    const m = await strataMount(['ops/ext@1', '--remote', url, '--chunk-cache', cache], 'remote');
    try {
      const ours = treeView(m.mnt);
      const diffs = differences(kernel, ours);
      assert.deepEqual(diffs.slice(0, 40), [], `${diffs.length} differences`);
      assert.ok(kernel.size > 20_000, 'the big directory is there');
      assert.equal(ours.get('/links/hard-1')?.ino, ours.get('/links/target.txt')?.ino, 'hard links: one inode');
      const r = spawnSync('sh', ['-c', `cat '${m.mnt}/files/size-1500000' | sha256sum`], { encoding: 'utf8' });
      assert.equal(r.stdout.split(' ')[0], kernel.get('/files/size-1500000')?.sha256);
    } finally {
      await stopClean(m);
    }
    const first = (await chunkReads()) - before;
    assert.ok(first > 10, `the first mount fetched its manifests and chunks from the service (${first} reads)`);
    const cached = readdirSync(cache).filter((d) => /^[0-9a-f]{2}$/.test(d));
    assert.ok(cached.length > 0, 'the chunk cache holds chunks');

    // again: every byte from the cache (the service only resolves the ref)
    const mid = await chunkReads();
    const m2 = await strataMount(['ops/ext@1', '--remote', url, '--chunk-cache', cache], 'remote2');
    try {
      const again = treeView(m2.mnt);
      const diffs = differences(kernel, again);
      assert.deepEqual(diffs.slice(0, 40), [], `${diffs.length} differences on the cached mount`);
    } finally {
      await stopClean(m2);
    }
    assert.equal((await chunkReads()) - mid, 0, 'no chunk read from the service the second time');
  } finally {
    if (prev === undefined) delete process.env.STRATA_TOKEN;
    else process.env.STRATA_TOKEN = prev;
  }
});

test('mount --remote without a token, or with a bad one: the private version is not found, nothing is mounted', async () => {
  for (const t of ['', 'strata_not-a-token-at-all-000000000000000000000']) {
    const mnt = mountPoint('remote-denied');
    try {
      const r = await strata(['mount', 'ops/ext@1', mnt, '--remote', url, '--no-chunk-cache'], {
        env: { STRATA_TOKEN: t },
      });
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, t ? /unknown, expired or revoked|token/i : /no such (image|version): ops\/ext/);
      assert.deepEqual(readdirSync(mnt), []);
    } finally {
      rmdirSync(mnt);
    }
  }
});
