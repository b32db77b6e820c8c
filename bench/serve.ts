/**
 * bench:serve — the library service (issue 17). JSON on stdout.
 *
 * 1. Network check-in of a derived Debian image to a server (`strata serve`, a child
 *    process) holding its base: bytes sent and wall time, beside `rsync` of the raw
 *    derived image over the same loopback onto a copy of the base (rsync daemon; its
 *    delta transfer is what people use) and a local check-in of the derived image into a
 *    library holding the base. Targets: bytes sent <= 1.1x the chunks the base lacks;
 *    time <= 1.5x the local check-in.
 * 2. Load: autocannon, C connections for D seconds, on the metadata routes (image list,
 *    ls, stat, inspection, search, version) and on downloads (1 MiB ranges of the disk):
 *    requests/s, p50/p99 latency, errors.
 *
 * Inputs: the Debian pair of the tests (test/helpers/inspect-pair.ts, 40 MiB ext4 images
 * made by mkfs.ext4 -d from a debootstrapped tree; cached in $STRATA_FIXTURES), or
 * --base FILE --derived FILE (e.g. the 1200 MiB images bench:checkin builds).
 * Options: --duration S (60), --connections C (50), --images N (500: the server's library
 * holds N more images, versions of the base spread over 10 projects, a third each
 * private, shared and public, each one inspected, so lists, search and the access checks
 * run over a library of that size), --rate R (4: requests/s of each client in the paced
 * metadata run; the first runs are closed loops, each client asking again as soon as it is
 * answered), --out DIR, --server-prof DIR (the server runs under `node --cpu-prof`, its
 * profile written to DIR when it exits), --workers N (`strata serve --workers N`: N server
 * processes on the port).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import autocannon from 'autocannon';
import { Access } from '../src/catalog/access.js';
import type { VersionRow } from '../src/catalog/catalog.js';
import { checkin } from '../src/library/checkin.js';
import { inspectAfterCheckin } from '../src/library/inspection.js';
import { Library } from '../src/library/library.js';
import { inspectPair } from '../test/helpers/inspect-pair.js';
import { CLI, need, opt } from './common.js';

const OUT = opt('--out') ?? '/dev/shm/strata-bench-serve';
const DURATION = Number(opt('--duration') ?? 60);
const CONNECTIONS = Number(opt('--connections') ?? 50);
const IMAGES = Number(opt('--images') ?? 500);
const RATE = Number(opt('--rate') ?? 4);
const WORKERS = opt('--workers');
const log = (m: string) => process.stderr.write(`bench:serve: ${m}\n`);

function run(
  cmd: string,
  argv: string[],
  env: Record<string, string> = {},
): Promise<{ s: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    c.stdout.on('data', (b: Buffer) => (out += b));
    c.stderr.on('data', (b: Buffer) => (err += b));
    c.on('error', reject);
    c.on('close', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`${cmd} ${argv.join(' ')}: ${code}: ${err}`));
      else resolve({ s, out, err });
    });
  });
}

const PROF = opt('--server-prof');

async function startServe(libDir: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(
    process.execPath,
    [
      ...(PROF ? ['--cpu-prof', '--cpu-prof-dir', PROF] : []),
      CLI,
      'serve',
      '--library',
      libDir,
      '--listen',
      '127.0.0.1:0',
      '--quiet',
      '--rate-limit',
      '0',
      '--default-project',
      'bench',
      ...(WORKERS ? ['--workers', WORKERS] : []),
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = /at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    child.on('exit', () => reject(new Error(`strata serve exited: ${err}`)));
  });
  return { url, child };
}

/**
 * IMAGES more images in the server's library: each a version of the base's manifest (no
 * new chunks: a check-in of each would take hours here, and what is measured is the
 * catalog and the access checks), in projects p0..p9 (bench is a member of p0 and p1),
 * visibility private, shared (accepted by bench for half of them) or public; each
 * inspected, as a check-in would, so search finds them.
 */
async function manyImages(lib: Library, access: Access, base: VersionRow): Promise<void> {
  const t0 = Date.now();
  for (let p = 0; p < 10; p++) await access.addProject(`p${p}`);
  await access.setRole('p0', 'bench', 'member');
  await access.setRole('p1', 'bench', 'reader');
  const vis = ['private', 'shared', 'public'] as const;
  for (let i = 0; i < IMAGES; i++) {
    const name = `p${i % 10}/image-${String(i).padStart(4, '0')}`;
    const row = await lib.catalog.addVersion({
      image: name,
      description: `bench image ${i}`,
      manifest: base.manifest,
      createdBy: 'bench',
      sourceName: base.sourceName ?? undefined,
      sourceFormat: base.sourceFormat ?? undefined,
      virtualSize: base.virtualSize,
      usedBytes: base.usedBytes,
      storedBytes: base.storedBytes,
      newBytes: 0,
      exact: base.exact,
      parents: [{ image: base.image, number: base.number }],
      tags: i % 4 === 0 ? ['stable'] : [],
    });
    const v = vis[i % 3];
    await access.setImageAccess(name, `p${i % 10}`, v);
    if (v === 'shared') {
      await access.addMember(name, 'bench');
      if (i % 2 === 0) await access.setMemberStatus(name, 'bench', 'accepted');
    }
    await inspectAfterCheckin(lib, row, []);
  }
  log(`${IMAGES} more images in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

async function main() {
  need('rsync', 'rsync');
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const pair = opt('--base') && opt('--derived') ? undefined : await inspectPair();
  const base = opt('--base') ?? (pair as { a: string }).a;
  const derived = opt('--derived') ?? (pair as { b: string }).b;

  // a server library holding the base, with a write token
  const srvDir = path.join(OUT, 'server');
  const lib = await Library.open(srvDir);
  await checkin(lib, base, { name: 'bench/base' });
  const access = await Access.open(lib.catalog.db);
  await access.addUser('bench');
  await access.addProject('bench');
  await access.setRole('bench', 'bench', 'member');
  const token = (await access.createToken({ user: 'bench', project: 'bench', scope: 'write' })).token;
  const baseRow = await lib.catalog.resolve('bench/base');
  const baseChunks = new Set((await lib.layout(baseRow.manifest)).chunks);
  await manyImages(lib, access, baseRow);
  await lib.close();

  // the local check-in, into a library holding the base
  const locDir = path.join(OUT, 'local');
  const loc = await Library.open(locDir);
  await checkin(loc, base, { name: 'bench/base' });
  await loc.close();
  const local = await run(process.execPath, [
    CLI,
    'checkin',
    derived,
    '--name',
    'bench/derived',
    '--library',
    locDir,
    '--json',
  ]);
  const localR = JSON.parse(local.out) as { manifest: string };
  const loc2 = await Library.open(locDir);
  const dl = await loc2.layout(localR.manifest);
  let lackBytes = 0;
  let lackChunks = 0;
  dl.chunks.forEach((c, i) => {
    if (!baseChunks.has(c)) {
      lackBytes += dl.chunkLengths[i];
      lackChunks++;
    }
  });
  let manifestBytes = 0;
  for (const v of dl.volumes) if (v.fs) manifestBytes += (await loc2.store.get(v.fs.files)).length;
  await loc2.close();

  // the network check-in
  const srv = await startServe(srvDir);
  let result: Record<string, unknown> = {};
  try {
    const net = await run(
      process.execPath,
      [CLI, 'checkin', derived, '--name', 'bench/derived', '--parent', 'bench/base', '--remote', srv.url, '--json'],
      { STRATA_TOKEN: token },
    );
    const netR = JSON.parse(net.out) as {
      manifest: string;
      chunkBytesSent: number;
      requestBytes: number;
      chunksSent: number;
    };
    if (netR.manifest !== localR.manifest) throw new Error('network and local check-in made different manifests');

    // rsync daemon on loopback: the derived raw image onto a copy of the base
    const rsDir = path.join(OUT, 'rsync');
    mkdirSync(path.join(rsDir, 'mod'), { recursive: true });
    copyFileSync(base, path.join(rsDir, 'mod', 'disk.img'));
    const port = 20000 + Math.floor(Math.random() * 20000);
    writeFileSync(
      path.join(rsDir, 'rsyncd.conf'),
      `use chroot = no\npid file = ${rsDir}/rsyncd.pid\n[mod]\npath = ${rsDir}/mod\nread only = no\nuid = ${process.getuid?.() ?? 0}\ngid = ${process.getgid?.() ?? 0}\n`,
    );
    const daemon = spawn('rsync', ['--daemon', '--no-detach', `--port=${port}`, `--config=${rsDir}/rsyncd.conf`], {
      stdio: 'ignore',
    });
    await new Promise((r) => setTimeout(r, 500));
    let rsync: { s: number; sent: number };
    try {
      const r = await run('rsync', [
        '--stats',
        '--inplace',
        '--no-whole-file',
        derived,
        `rsync://127.0.0.1:${port}/mod/disk.img`,
      ]);
      const sent = Number(/Total bytes sent: ([\d,]+)/.exec(r.out)?.[1].replace(/,/g, ''));
      rsync = { s: r.s, sent };
    } finally {
      daemon.kill('SIGTERM');
    }

    // load
    log(`load: ${CONNECTIONS} connections, ${DURATION} s per mix`);
    const v = '/v1/images/bench%2Fderived/versions/1';
    const auth = { authorization: `Bearer ${token}` };
    // what a browser of the library asks: pages of the image list, a folder, a file's
    // stat and text, an inspection, a search, a version, other projects' images
    const meta = [
      '/v1/images?limit=20',
      '/v1/images?prefix=p0/&limit=20',
      `${v}/files?path=/etc`,
      `${v}/files/stat?path=/etc/passwd`,
      `${v}/inspection`,
      '/v1/search?path=/etc/passwd&limit=20',
      v,
      `${v}/files/content?path=/etc/hostname`,
      ...(IMAGES > 2
        ? ['/v1/images/p2%2Fimage-0002/versions/1/files/stat?path=/etc/hostname', '/v1/images/p5%2Fimage-0005/versions']
        : []),
    ];
    const load = async (paths: string[], headers: Record<string, string> = {}, connectionRate?: number) => {
      const r = await autocannon({
        url: srv.url,
        connections: CONNECTIONS,
        duration: DURATION,
        connectionRate,
        requests: paths.map((p) => ({ method: 'GET', path: p, headers: { ...auth, ...headers } })),
      });
      return {
        requestsPerS: r.requests.average,
        p50Ms: r.latency.p50,
        p99Ms: r.latency.p99,
        errors: r.errors + r.timeouts,
        non2xx: r.non2xx,
        requests: r.requests.total,
      };
    };
    const metaLoad = await load(meta);
    // the same clients at RATE requests/s each (a person browsing clicks far less often
    // than a closed loop asks): latency is then the service's time, not a queue of 50
    const metaPaced = await load(meta, {}, RATE);
    const downloads = await load([`${v}/disk`], { range: 'bytes=1048576-2097151' });

    result = {
      bench: 'serve',
      images: { base, derived },
      checkin: {
        chunksBaseLacks: lackChunks,
        chunkBytesBaseLacks: lackBytes,
        fileManifestBytes: manifestBytes,
        network: {
          s: net.s,
          chunksSent: netR.chunksSent,
          chunkBytesSent: netR.chunkBytesSent,
          requestBytes: netR.requestBytes,
        },
        local: { s: local.s },
        rsync: { s: rsync.s, bytesSent: rsync.sent },
        ratioSentToLacking: netR.requestBytes / lackBytes,
        ratioTimeToLocal: net.s / local.s,
        ratioSentToRsync: netR.requestBytes / rsync.sent,
      },
      load: {
        connections: CONNECTIONS,
        durationS: DURATION,
        images: IMAGES + 2,
        metadata: metaLoad,
        metadataPaced: { perClientPerS: RATE, ...metaPaced },
        downloads1MiB: downloads,
      },
    };
  } finally {
    srv.child.kill('SIGTERM');
  }
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}

main().catch((e) => {
  process.stderr.write(`bench:serve: ${(e as Error).stack}\n`);
  process.exit(1);
});
