import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Library } from '../../src/library/library.js';
import { traceNbdReads } from '../deploy/helpers.js';
import { strata } from '../helpers/cli.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { fixture, ROOT, run, scratch } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { serveProcess } from '../serve/http-helpers.js';

/**
 * Issue 25: the shipped example workloads (workloads/emulab-day.wml, workloads/ci-farm.wml),
 * unchanged, RUN against a real `strata serve` (`--iterations 1`: each thread one pass, so
 * every count is known from the file: a process's instances times its threads' instances),
 * and their counts and bytes checked against the server's own request log (the request_log
 * rows the server wrote, counted per operation) and against the inputs (file sizes the test
 * wrote, the boot profile's ranges, the disks' sizes).
 *
 * The library holds debian@1 and debian@2 (the versions emulab-day.wml names by default):
 * ext4 made by mkfs.ext4 -d from a tree with /etc/os-release and /etc/hostname (the files the
 * examples read), the same in both versions, so a cat's bytes do not depend on the choice.
 */
const OS_RELEASE =
  'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n';
const HOSTNAME = 'ci-runner-7\n';
const DISK_MIB = 32;

function debianImage(n: 1 | 2): Promise<string> {
  return fixture(`wml-examples-v1-debian${n}-${DISK_MIB}m.img`, async (out) => {
    const tree = scratch(`wml-tree-${n}`);
    try {
      mkdirSync(path.join(tree, 'etc'), { recursive: true });
      mkdirSync(path.join(tree, 'usr/share/doc'), { recursive: true });
      writeFileSync(path.join(tree, 'etc/os-release'), OS_RELEASE);
      writeFileSync(path.join(tree, 'etc/hostname'), HOSTNAME);
      writeFileSync(path.join(tree, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n');
      writeFileSync(path.join(tree, 'usr/share/doc/payload.bin'), bytesOf('wml-examples:payload', 2 << 20));
      // the second version adds a file, as an update would
      if (n === 2) writeFileSync(path.join(tree, 'usr/share/doc/update.bin'), bytesOf('wml-examples:update', 1 << 20));
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, out, `${DISK_MIB}M`]);
    } finally {
      await run('rm', ['-rf', tree]);
    }
  });
}

let dir: string;
let lib: string;
let token: string;
let stopServer: (() => Promise<void>) | undefined;

/** `strata serve` on a free port; its URL. */
async function serve(): Promise<string> {
  const s = await serveProcess(lib, ['--default-visibility', 'public', '--rate-limit', '0']);
  stopServer = s.stop;
  return s.url;
}

/** Stop the server (its request log rows are flushed on close). */
async function stop(): Promise<void> {
  const s = stopServer;
  stopServer = undefined;
  await s?.();
}

interface LogRow {
  op: string;
  n: number;
  bytes: number;
}
/** The server's request log since `since` (ISO time): answered requests per operation, with their bytes out. */
async function serverLog(since: string): Promise<(op: string) => { n: number; bytes: number }> {
  const l = await Library.open(lib, { create: false });
  try {
    const rows = await l.catalog.db.all<LogRow>(
      'SELECT op, COUNT(*) AS n, SUM(bytes_out) AS bytes FROM request_log WHERE status < 400 AND at >= ? GROUP BY op',
      [since],
    );
    const failed = await l.catalog.db.all<{ op: string; status: number }>(
      'SELECT op, status FROM request_log WHERE status >= 400 AND at >= ?',
      [since],
    );
    assert.deepEqual(failed, [], 'no request of the run failed');
    return (op: string) => {
      const r = rows.find((x) => x.op === op);
      return { n: Number(r?.n ?? 0), bytes: Number(r?.bytes ?? 0) };
    };
  } finally {
    await l.close();
  }
}

interface Stat {
  flowop: string;
  count: number;
  errors: number;
  bytes: number;
  latencyMs: { p50: number; max: number; p99: number };
}
async function bench(file: string, url: string, sets: string[]): Promise<(name: string) => Stat> {
  const r = await strata(
    [
      'bench',
      'run',
      path.join(ROOT, 'workloads', file),
      '--remote',
      url,
      '--iterations',
      '1',
      '--json',
      ...sets.flatMap((s) => ['--set', s]),
    ],
    { env: { STRATA_TOKEN: token } },
  );
  assert.equal(r.code, 0, r.stderr);
  const flowops = JSON.parse(r.stdout).flowops as Stat[];
  return (name: string) => {
    const f = flowops.find((x) => x.flowop === name);
    assert.ok(f, `${name} in ${JSON.stringify(flowops)}`);
    return f;
  };
}

/** Each flowop ran `n` times, none failed, and its latencies are real. */
function ran(by: (name: string) => Stat, counts: Array<[string, number]>): void {
  for (const [name, n] of counts) {
    const f = by(name);
    assert.equal(f.count, n, `${name}: ${JSON.stringify(f)}`);
    assert.equal(f.errors, 0, `${name}: ${JSON.stringify(f)}`);
    assert.ok(f.latencyMs.p50 > 0 && f.latencyMs.max >= f.latencyMs.p99, `${name}: ${JSON.stringify(f)}`);
  }
}

before(async () => {
  dir = tempDir('wml-examples');
  lib = path.join(dir, 'lib');
  for (const n of [1, 2] as const) {
    const c = await strata(['checkin', await debianImage(n), '--name', 'debian', '--library', lib]);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`debian@${n}`));
  }
  assert.equal(
    (await strata(['user', 'add', 'alice', '--project', 'ci', '--role', 'admin', '--library', lib])).code,
    0,
  );
  const t = await strata([
    'token',
    'create',
    '--user',
    'alice',
    '--project',
    'ci',
    '--scope',
    'write',
    '--library',
    lib,
  ]);
  assert.equal(t.code, 0, t.stderr);
  token = t.stdout.trim();
});

after(async () => {
  await stop();
});

describe('the shipped example workloads run against a real strata serve', { timeout: 900_000 }, () => {
  test('emulab-day.wml: every flowop ran as often as the file says, and the server logged each', async () => {
    const since = new Date().toISOString();
    const url = await serve();
    // the file's own defaults: versions debian@1;debian@2, a generated popularity over them
    const by = await bench('emulab-day.wml', url, []);
    await stop();
    // experimenters: 4 instances x swapin 2 instances; poke 1 instance; operators 1 x audit 1
    ran(by, [
      ['deploy', 8],
      ['booting', 8],
      ['ls-etc', 4],
      ['os-release', 4],
      ['what-changed', 4],
      ['reading', 4],
      ['find-openssl', 1],
      ['find-shadow', 1],
    ]);
    assert.equal(by('os-release').bytes, 4 * Buffer.byteLength(OS_RELEASE));
    const log = await serverLog(since);
    assert.equal(log('files.list').n, 4);
    assert.equal(log('files.read').n, 4);
    // what the server sent for the cats is what the bench counted
    assert.equal(log('files.read').bytes, by('os-release').bytes);
    assert.equal(log('versions.diff').n, 4);
    assert.equal(log('search').n, 2);
    // a version is resolved once by each ls, cat and deploy (a deploy then reads chunks)
    assert.equal(log('versions.resolve').n, 4 + 4 + 8);
    assert.ok(log('chunks.read').n >= 8, `chunks.read ${log('chunks.read').n}`);
  });

  test('ci-farm.wml: boots over NBD, reads, a checkin and a checkout, as the server logged them', async () => {
    // the farm's request log: the image choice comes from it (3 requests of debian@2, 1 of debian@1)
    const reqLog = path.join(dir, 'requests.jsonl');
    const line = (v: number, at: string) =>
      JSON.stringify({ at, user: 'ci', project: 'ci', image: 'debian', version: v, op: 'deploy', bytes: 0 });
    writeFileSync(
      reqLog,
      [
        line(2, '2026-12-01T08:00:00Z'),
        line(1, '2026-12-01T09:00:00Z'),
        line(2, '2026-12-01T10:00:00Z'),
        line(2, '2026-12-01T11:00:00Z'),
        '',
      ].join('\n'),
    );
    // a boot profile recorded from real NBD reads of debian@1 (strata nbd --trace, libnbd's nbdsh)
    const trace = path.join(dir, 'boot-trace.jsonl');
    await traceNbdReads(lib, 'debian@1', trace, [
      [0, 4096],
      [1024, 8192],
      [4 << 20, 262144],
    ]);
    const rec = await strata(['profile', 'record', 'debian@1', '--trace', trace, '--library', lib]);
    assert.equal(rec.code, 0, rec.stderr);
    const shown = await strata(['profile', 'show', 'debian@1', '--library', lib, '--json']);
    assert.equal(shown.code, 0, shown.stderr);
    const profile = JSON.parse(shown.stdout).profile;
    const profileFile = path.join(dir, 'boot-profile.json');
    writeFileSync(profileFile, JSON.stringify(profile));
    const bootBytes = profile.entries.reduce((s: number, e: { length: number }) => s + e.length, 0);
    // at least the union of the reads: [0, 9216) and [4 MiB, 4 MiB + 256 KiB); both disks are larger
    assert.ok(bootBytes >= 9216 + 262144 && bootBytes < DISK_MIB << 20, String(bootBytes));
    // the builder's image: debian@2 as qcow2 (qemu-img)
    const image = path.join(dir, 'build.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', await debianImage(2), image]);

    const since = new Date().toISOString();
    const url = await serve();
    const by = await bench('ci-farm.wml', url, [`log=${reqLog}`, `profile=${profileFile}`, `image=${image}`]);
    await stop();
    // runners: 8 instances x job 1; builder: 1 x nightly 1
    ran(by, [
      ['boot', 8],
      ['read-config', 8],
      ['test-suite', 8],
      ['publish', 1],
      ['verify', 1],
    ]);
    // each boot made the profile's reads through a real NBD client (nbdsh)
    assert.equal(by('boot').bytes, 8 * bootBytes);
    assert.equal(by('read-config').bytes, 8 * Buffer.byteLength(HOSTNAME));
    assert.equal(by('verify').bytes, DISK_MIB << 20);
    const log = await serverLog(since);
    assert.equal(log('files.read').n, 8);
    assert.equal(log('files.read').bytes, by('read-config').bytes);
    assert.equal(log('versions.download').n, 1);
    assert.equal(log('versions.download').bytes, by('verify').bytes);
    assert.equal(log('versions.commit').n, 1);
    assert.ok(log('chunks.read').n >= 8, `chunks.read ${log('chunks.read').n}`);
    // what the checkin flowop published is the image: qemu-img compares a checkout of it with the qcow2
    const built = path.join(dir, 'built.raw');
    const co = await strata(['checkout', 'ci/build@1', built, '--library', lib]);
    assert.equal(co.code, 0, co.stderr);
    await run('qemu-img', ['compare', '-F', 'qcow2', '-f', 'raw', built, image]);
  });
});
