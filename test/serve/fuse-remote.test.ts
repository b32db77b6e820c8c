import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { checkUpperState, RemoteLibrary, upperToChangeSet } from '../../src/serve/index.js';
import { CLI, jsonLines, strata } from '../helpers/cli.js';
import {
  bytesOf,
  type ExtImageSpec,
  extImage,
  type KernelEntry,
  kernelView,
  kernelViewCached,
  treeView,
} from '../helpers/ext-tree.js';
import { mountPoint, type StrataMount, strataMount } from '../helpers/fuse-mount.js';
import { have, scratch } from '../helpers/tools.js';

/**
 * `strata mount REF MOUNTPOINT --remote URL`: a version held by a real `strata serve` (a
 * child process on port 0, the image private to its project, read with a reader's token)
 * mounted through the service's API: the tree equals the kernel's own loop mount of the
 * image checked in; every blob lands in the local chunk cache, so a second mount reads no
 * chunk from the service (its /metrics counts the chunk reads); without a token the
 * version does not exist. With --rw, `strata commit` sends the change set to the service:
 * a reader's token or none makes no version, a project member's write token makes one,
 * which e2fsck -fn finds clean and the kernel's loop mount shows as edited. The service takes
 * edit bodies of 2 MiB at most: a commit of a 9 MiB file and 40 files of 48 KiB sends them as
 * chunks first, and the edit names them (the same edit with the bytes inline is refused, 413).
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
let writer: string;
let img: string;
let lib: string;

before(async () => {
  img = await extImage(EXT4_4K);
  dir = scratch('fuse-remote');
  lib = path.join(dir, 'lib');
  const ci = await strata(['checkin', '--library', lib, '--name', 'ops/ext', img]);
  assert.equal(ci.code, 0, ci.stderr);
  const L = ['--library', lib];
  const u = await strata(['user', 'add', 'rita', '--project', 'ops', '--role', 'reader', ...L]);
  assert.equal(u.code, 0, u.stderr);
  const t = await strata(['token', 'create', '--user', 'rita', '--project', 'ops', '--scope', 'read', ...L]);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
  const w = await strata(['user', 'add', 'wes', '--project', 'ops', '--role', 'member', ...L]);
  assert.equal(w.code, 0, w.stderr);
  const wt = await strata(['token', 'create', '--user', 'wes', '--project', 'ops', '--scope', 'write', ...L]);
  assert.equal(wt.code, 0, wt.stderr);
  writer = wt.stdout.trim();
  const srv = spawn(
    process.execPath,
    // a commit or edit body of at most 2 MiB: the big-file commit below must not fit in one
    [CLI, 'serve', ...L, '--listen', '127.0.0.1:0', '--default-project', 'ops', '--quiet', '--commit-limit', '2M'],
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

/** What differs between two walks in the fields an edit may change: "PATH: FIELD", "PATH: gone", "PATH: new". */
function changed(a: Map<string, KernelEntry>, b: Map<string, KernelEntry>): string[] {
  const out: string[] = [];
  const fields: Array<keyof KernelEntry> = ['type', 'mode', 'uid', 'gid', 'size', 'target', 'sha256', 'xattrs', 'rdev'];
  for (const [p, x] of a) {
    const y = b.get(p);
    if (!y) out.push(`${p}: gone`);
    else for (const f of fields) if (JSON.stringify(x[f]) !== JSON.stringify(y[f])) out.push(`${p}: ${f}`);
  }
  for (const p of b.keys()) if (!a.has(p)) out.push(`${p}: new`);
  return out.sort();
}

async function serverVersions(): Promise<number[]> {
  const r = await strata(['versions', 'ops/ext', '--json', '--remote', url], { env: { STRATA_TOKEN: writer } });
  assert.equal(r.code, 0, r.stderr);
  return jsonLines<{ number: number }>(r.stdout).map((v) => v.number);
}

test('mount --remote --rw, then commit to the service: a reader or no token makes nothing, a member makes a version; the kernel mounts it as edited', async () => {
  const kernel = await kernelViewCached(img);
  const upper = path.join(dir, 'upper-remote');
  const prev = process.env.STRATA_TOKEN;
  process.env.STRATA_TOKEN = token; // the mount reads with the reader's token
  let m: StrataMount | undefined;
  try {
    m = await strataMount(['ops/ext@1', '--remote', url, '--no-chunk-cache', '--rw', '--upper', upper], 'remote-rw');
    const at = (p: string) => path.join((m as StrataMount).mnt, p);
    writeFileSync(at('files/from-remote.txt'), 'made on a remote mount\n');
    appendFileSync(at('files/size-4096'), 'appended on a remote mount\n');
    rmSync(at('files/size-65536'));
    renameSync(at('files/size-1023'), at('files/renamed-1023'));
    chmodSync(at('files/size-1'), 0o600);
    mkdirSync(at('new-dir'));
    symlinkSync('../files/from-remote.txt', at('new-dir/link'));

    const dry = await strata(['commit', m.mnt, '--dry-run', '--json']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(JSON.parse(dry.stdout).remote, { url, ref: 'ops/ext@1' }, 'the upper folder names the service');

    // the reader's token reads, but may not write: refused, no version
    const denied = await strata(['commit', m.mnt, '-m', 'not allowed'], { env: { STRATA_TOKEN: token } });
    assert.equal(denied.code, 1, denied.stdout);
    assert.match(denied.stderr, /rita .*may not write to ops\/ext/);
    const anon = await strata(['commit', m.mnt, '-m', 'not allowed'], { env: { STRATA_TOKEN: '' } });
    assert.equal(anon.code, 1, anon.stdout);
    assert.match(anon.stderr, /no such (image|version): ops\/ext/);
    assert.deepEqual(await serverVersions(), [1], 'no version was made');

    // a member's write token: the edit is made on the service
    const c = await strata(['commit', m.mnt, '-m', 'edited on a remote mount', '--json'], {
      env: { STRATA_TOKEN: writer },
    });
    assert.equal(c.code, 0, c.stderr);
    const made = JSON.parse(c.stdout) as { ref: string; parent: string; remote: string; changes: number };
    assert.equal(made.ref, 'ops/ext@2');
    assert.equal(made.parent, 'ops/ext@1');
    assert.equal(made.remote, url);
    assert.equal(made.changes, 7);

    // again without a change: nothing is made; one change more: a version of all of them, the last as a parent too
    const same = await strata(['commit', m.mnt, '--json'], { env: { STRATA_TOKEN: writer } });
    assert.equal(same.code, 0, same.stderr);
    assert.equal(JSON.parse(same.stdout).unchanged, true);
    assert.deepEqual(await serverVersions(), [1, 2]);
    writeFileSync(at('new-dir/second.txt'), 'a second commit\n');
    const c3 = await strata(['commit', m.mnt, '--json'], { env: { STRATA_TOKEN: writer } });
    assert.equal(c3.code, 0, c3.stderr);
    assert.equal(JSON.parse(c3.stdout).ref, 'ops/ext@3');
    const prov = await new RemoteLibrary(url, writer).provenance('ops/ext@3');
    assert.deepEqual(prov.parents.map((p) => `${p.image}@${p.number}`).sort(), ['ops/ext@1', 'ops/ext@2']);
  } finally {
    if (m) await stopClean(m);
    if (prev === undefined) delete process.env.STRATA_TOKEN;
    else process.env.STRATA_TOKEN = prev;
  }

  // the oracles: the service's version checked out of its library, e2fsck -fn, the kernel's loop mount
  const disk = path.join(dir, 'remote-edited.raw');
  const co = await strata(['checkout', '--library', lib, 'ops/ext@3', disk]);
  assert.equal(co.code, 0, co.stderr);
  const fsck = spawnSync('e2fsck', ['-fn', disk], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  const edited = await kernelView(disk);
  rmSync(disk);
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');
  assert.deepEqual(
    changed(kernel, edited),
    [
      '/files/from-remote.txt: new',
      '/files/renamed-1023: new',
      '/files/size-1: mode',
      '/files/size-1023: gone',
      '/files/size-4096: sha256',
      '/files/size-4096: size',
      '/files/size-65536: gone',
      '/new-dir/link: new',
      '/new-dir/second.txt: new',
      '/new-dir: new',
    ].sort(),
  );
  assert.equal(edited.get('/files/from-remote.txt')?.sha256, sha('made on a remote mount\n'));
  assert.equal(edited.get('/new-dir/second.txt')?.sha256, sha('a second commit\n'));
  assert.equal(edited.get('/files/renamed-1023')?.sha256, kernel.get('/files/size-1023')?.sha256);
  assert.equal(edited.get('/files/size-1')?.mode, 0o600);
  assert.equal(edited.get('/new-dir/link')?.target, '../files/from-remote.txt');
  const grown = Buffer.concat([bytesOf('size-4096', 4096), Buffer.from('appended on a remote mount\n')]);
  assert.equal(edited.get('/files/size-4096')?.sha256, createHash('sha256').update(grown).digest('hex'));
});

test('mount --remote --rw, commit of files larger than the service takes in one body: sent as chunks, the version holds them', async () => {
  const upper = path.join(dir, 'upper-big');
  const prev = process.env.STRATA_TOKEN;
  process.env.STRATA_TOKEN = token;
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  const big = randomBytes(9 * MiB + 12_345); // > the 2 MiB commit limit, not a multiple of the 4 MiB pieces
  const small = Array.from({ length: 40 }, (_v, i) => randomBytes(48 * 1024 + i)); // ~1.9 MiB: some inline, some chunked
  let m: StrataMount | undefined;
  let made: { ref: string; parent: string; changes: number; chunksSent: number; chunkBytesSent: number };
  try {
    m = await strataMount(['ops/ext@1', '--remote', url, '--no-chunk-cache', '--rw', '--upper', upper], 'remote-big');
    const at = (p: string) => path.join((m as StrataMount).mnt, p);
    writeFileSync(at('files/big.bin'), big);
    mkdirSync(at('many'));
    for (const [i, b] of small.entries()) writeFileSync(at(`many/f${i}`), b);

    // the same change set with every byte in the body: the service refuses it (413), nothing is made
    const before = await serverVersions();
    const set = JSON.parse((await strata(['commit', m.mnt, '--dry-run', '--json'])).stdout) as { changes: unknown[] };
    assert.equal(set.changes.length, 42);
    // the dry run made the server save its state: the change set it stands for
    const stateFile = path.join(upper, 'state.json');
    const cs = upperToChangeSet(checkUpperState(JSON.parse(readFileSync(stateFile, 'utf8')), stateFile), upper);
    await assert.rejects(
      new RemoteLibrary(url, writer).edit('ops/ext@1', cs.changes, { inlineBytes: { each: 1 << 30, total: 1 << 30 } }),
      (e: Error) => /413|too large|body/i.test(e.message),
    );
    assert.deepEqual(await serverVersions(), before, 'no version was made');
    // an edit naming chunks the caller never uploaded (nor may read) is refused, as is one whose sizes do not add up
    const post = (content: unknown) =>
      fetch(`${url}/v1/images/ops%2Fext/edits`, {
        method: 'POST',
        headers: { authorization: `Bearer ${writer}`, 'content-type': 'application/json' },
        body: JSON.stringify({ from: 'ops/ext@1', changes: [{ op: 'put', path: '/x', content }] }),
      });
    const unknown = await post({ kind: 'chunks', chunks: [sha(randomBytes(8))], size: 8 });
    assert.equal(unknown.status, 409, await unknown.text());
    const piece = randomBytes(1000);
    await new RemoteLibrary(url, writer).uploadChunks([{ digest: sha(piece), data: piece }]);
    const wrongSize = await post({ kind: 'chunks', chunks: [sha(piece)], size: 1001 });
    assert.equal(wrongSize.status, 422, await wrongSize.text());
    assert.deepEqual(await serverVersions(), before, 'no version was made');

    const c = await strata(['commit', m.mnt, '-m', 'big files', '--json'], { env: { STRATA_TOKEN: writer } });
    assert.equal(c.code, 0, c.stderr);
    made = JSON.parse(c.stdout);
    assert.equal(made.parent, 'ops/ext@1');
    assert.equal(made.changes, 42);
    // the big file's 3 pieces, and the small files past the 1 MiB inline budget, went as chunks
    assert.ok(made.chunksSent >= 3, `chunks sent: ${made.chunksSent}`);
    assert.ok(made.chunkBytesSent >= big.length, `chunk bytes sent: ${made.chunkBytesSent}`);
  } finally {
    if (m) await stopClean(m);
    if (prev === undefined) delete process.env.STRATA_TOKEN;
    else process.env.STRATA_TOKEN = prev;
  }

  // the oracles: the version checked out of the service's library, e2fsck -fn, the kernel's loop mount
  const disk = path.join(dir, 'remote-big.raw');
  const co = await strata(['checkout', '--library', lib, made.ref, disk]);
  assert.equal(co.code, 0, co.stderr);
  const fsck = spawnSync('e2fsck', ['-fn', disk], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  const edited = await kernelView(disk);
  rmSync(disk);
  assert.equal(edited.get('/files/big.bin')?.size, big.length);
  assert.equal(edited.get('/files/big.bin')?.sha256, sha(big));
  for (const [i, b] of small.entries()) assert.equal(edited.get(`/many/f${i}`)?.sha256, sha(b), `/many/f${i}`);
  const kernel = await kernelViewCached(img);
  assert.deepEqual(
    changed(kernel, edited),
    ['/files/big.bin: new', '/many: new', ...small.map((_b, i) => `/many/f${i}: new`)].sort(),
  );
});
