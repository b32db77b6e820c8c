import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseWml } from '../../src/analytics/wml.js';
import { Library } from '../../src/library/library.js';
import { StrataError } from '../../src/util/errors.js';
import { traceNbdReads, twoVersions } from '../deploy/helpers.js';
import { CLI, strata } from '../helpers/cli.js';
import { ROOT, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/**
 * Issue 25's workload model language: parse errors name the line and the column (known by
 * construction of each bad workload), the shipped examples parse, and a run against a real
 * `strata serve` completes with counts that match the server's own request log (its
 * request_log table, written by the server, counted per operation) and bytes known from the
 * inputs (the boot profile's ranges, the checkouts' sizes from the service itself).
 */
let dir: string;
let lib: string;
let v2: string;

before(async () => {
  dir = tempDir('wml');
  ({ lib, v2 } = await twoVersions(dir));
});

const where = (text: string): string => {
  try {
    parseWml(text, 'w.wml');
  } catch (e) {
    assert.ok(e instanceof StrataError, String(e));
    const m = /w\.wml:(\d+):(\d+): /.exec((e as Error).message);
    assert.ok(m, (e as Error).message);
    return `${m[1]}:${m[2]}`;
  }
  assert.fail('no error');
};

const GOOD = `define images name=s, list=disk@1;disk@2
define process name=p, instances=1
{
  thread name=t, instances=1
  {
    flowop ls name=l, images=s, path=/
  }
}
run iterations=1
`;

describe('WML parse errors name the line and column', () => {
  test('the good workload parses', () => {
    const w = parseWml(GOOD, 'w.wml');
    assert.equal(w.processes[0].threads[0].flowops[0].kind, 'ls');
    assert.equal(w.iterations, 1);
  });
  test('each broken one at its place', () => {
    // an unknown flowop: line 6, the column of its name (5 spaces, "flowop ", then the word)
    assert.equal(where(GOOD.replace('flowop ls', 'flowop lsx')), '6:12');
    // an attribute without '=': line 4, column of "instances" after "  thread name=t, " (17 characters)
    assert.equal(where(GOOD.replace('instances=1\n  {', 'instances\n  {')), '4:18');
    // an unknown statement at line 9 column 1
    assert.equal(where(GOOD.replace('run iterations=1', 'walk 3')), '9:1');
    // an image set nobody defined: line 6, column of "images="
    assert.equal(where(GOOD.replace('images=s, path', 'images=q, path')), '6:23');
    // a missing '{' after the process: reported on the line that should hold it
    assert.equal(where(GOOD.replace('instances=1\n{', 'instances=1\nthread')), '3:1');
    // an unset variable: line 9, column of the '$'
    assert.equal(where(GOOD.replace('run iterations=1', 'run $secs')), '9:5');
    // a bad rate value: line 4 at its "rate=" ("  thread name=t, " is 17 characters)
    assert.equal(where(GOOD.replace('thread name=t, instances=1', 'thread name=t, rate=-2')), '4:18');
    // the process's closing brace missing: `run` moves up to line 8, where a thread was expected
    assert.equal(where(GOOD.replace(/\}\nrun/, 'run')), '8:1');
    // cat without path
    assert.equal(where(GOOD.replace('flowop ls name=l, images=s, path=/', 'flowop cat name=c, images=s')), '6:16');
  });
  test('the shipped example workloads parse', async () => {
    for (const f of ['emulab-day.wml', 'ci-farm.wml']) {
      const r = await strata([
        'bench',
        'run',
        path.join(ROOT, 'workloads', f),
        '--remote',
        'http://127.0.0.1:9',
        '--check',
      ]);
      assert.equal(r.code, 0, r.stderr);
      const w = JSON.parse(r.stdout);
      assert.ok(w.processes.length >= 2, f);
    }
  });
});

describe('a run against a real strata serve', () => {
  let server: ChildProcess | undefined;
  after(() => {
    server?.kill('SIGKILL');
  });

  test('completes, and its counts per flowop are what the server logged', async () => {
    // a boot profile recorded from real NBD reads of disk@2 (strata nbd --trace, libnbd's nbdsh)
    const trace = path.join(dir, 'boot-trace.jsonl');
    await traceNbdReads(lib, 'disk@2', trace, [
      [0, 4096],
      [1024, 65536],
      [2 << 20, 131072],
    ]);
    const rec = await strata(['profile', 'record', 'disk@2', '--trace', trace, '--library', lib]);
    assert.equal(rec.code, 0, rec.stderr);
    const shown = await strata(['profile', 'show', 'disk@2', '--library', lib, '--json']);
    const profile = JSON.parse(shown.stdout).profile;
    const profileFile = path.join(dir, 'boot-profile.json');
    writeFileSync(profileFile, JSON.stringify(profile));
    const bootBytes = profile.entries.reduce((s: number, e: { length: number }) => s + e.length, 0);
    // at least the union of the reads: [0, 66560) and [2 MiB, 2 MiB + 128 KiB)
    assert.ok(bootBytes >= 66560 + 131072, String(bootBytes));

    // a writer's token: the checkin flowop uploads
    assert.equal(
      (await strata(['user', 'add', 'alice', '--project', 'ops', '--role', 'admin', '--library', lib])).code,
      0,
    );
    const t = await strata([
      'token',
      'create',
      '--user',
      'alice',
      '--project',
      'ops',
      '--scope',
      'write',
      '--library',
      lib,
    ]);
    assert.equal(t.code, 0, t.stderr);
    const token = t.stdout.trim();
    server = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--library',
        lib,
        '--listen',
        '127.0.0.1:0',
        '--default-visibility',
        'public',
        '--quiet',
        '--rate-limit',
        '0',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    const url = await new Promise<string>((resolve, reject) => {
      server?.stderr?.on('data', (c) => {
        err += c;
        const m = / at (http:\/\/\S+) /.exec(err);
        if (m) resolve(m[1]);
      });
      server?.on('exit', () => reject(new Error(`strata serve exited: ${err}`)));
    });
    const wml = path.join(dir, 'run.wml');
    writeFileSync(
      wml,
      `# two processes of two threads, three passes each
set $n = 3
define images name=both, list=disk@1;disk@2
define images name=two, list=disk@2
define process name=users, instances=2
{
  thread name=look, instances=2
  {
    flowop ls name=ls-root, images=both, path=/
    flowop cat name=cat-update, images=two, path=/update.bin
    flowop think name=pause, ms=5
    flowop diff name=d, a=disk@1, b=disk@2
  }
}
define process name=ops, instances=1
{
  thread name=batch, instances=1
  {
    flowop search name=s, path=/update.bin
    flowop checkout name=co, images=two
    flowop boot name=boot, images=two, profile=boot-profile.json
    flowop boot name=boot-q, images=two, profile=boot-profile.json, client=qemu-io
    flowop checkin name=ci, file=${v2}, image=ops/built
  }
}
run iterations=$n
`,
    );
    const r = await strata(['bench', 'run', wml, '--remote', url, '--json'], {
      env: { ...process.env, STRATA_TOKEN: token },
    });
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout);
    const by = (name: string) => res.flowops.find((f: { flowop: string }) => f.flowop === name);
    // by construction: users 2 instances x 2 threads x 3 passes; ops 1 x 1 x 3
    for (const [name, n] of [
      ['ls-root', 12],
      ['cat-update', 12],
      ['pause', 12],
      ['d', 12],
      ['s', 3],
      ['co', 3],
      ['boot', 3],
      ['boot-q', 3],
      ['ci', 3],
    ] as const) {
      assert.equal(by(name).count, n, `${name}: ${JSON.stringify(by(name))}`);
      assert.equal(by(name).errors, 0, `${name}: ${JSON.stringify(by(name))}`);
      assert.ok(by(name).latencyMs.p50 > 0 && by(name).latencyMs.max >= by(name).latencyMs.p99);
    }
    assert.equal(by('cat-update').bytes, 12 * (3 << 20)); // the 3 MiB file debugfs wrote into disk@2
    // the boots read over NBD (our server, libnbd's nbdsh and qemu-io as clients): the profile's bytes each
    assert.equal(by('boot').bytes, 3 * bootBytes);
    assert.equal(by('boot-q').bytes, 3 * bootBytes);
    // the server's request log, once it has stopped (rows are flushed on close)
    server.kill('SIGTERM');
    await new Promise((res2) => server?.on('exit', res2));
    server = undefined;
    const l = await Library.open(lib, { create: false });
    try {
      const rows = await l.catalog.db.all<{ op: string; n: number | string }>(
        'SELECT op, COUNT(*) AS n FROM request_log WHERE status < 400 GROUP BY op',
      );
      const n = (op: string) => Number(rows.find((x) => x.op === op)?.n ?? 0);
      assert.equal(n('files.list'), 12, JSON.stringify(rows));
      assert.equal(n('files.read'), 12, JSON.stringify(rows));
      assert.equal(n('versions.diff'), 12, JSON.stringify(rows));
      assert.equal(n('search'), 3, JSON.stringify(rows));
      assert.equal(n('versions.download'), 3, JSON.stringify(rows));
      const size = Number(
        (
          await l.catalog.db.get<{ s: number }>(
            "SELECT virtual_size AS s FROM versions WHERE image = 'disk' AND number = 2",
          )
        )?.s,
      );
      assert.equal(by('co').bytes, 3 * size);
      // each checkin flowop committed a version of ops/built on the server
      assert.equal(n('versions.commit'), 3, JSON.stringify(rows));
      const built = await l.catalog.db.all<{ number: number | string }>(
        "SELECT number FROM versions WHERE image = 'ops/built' ORDER BY number",
      );
      assert.deepEqual(
        built.map((x) => Number(x.number)),
        [1, 2, 3],
      );
    } finally {
      await l.close();
    }
    // and what landed is the image checked in: qemu-img compares a checkout of the last with it
    const builtRaw = path.join(dir, 'built.raw');
    const co = await strata(['checkout', 'ops/built@3', builtRaw, '--library', lib]);
    assert.equal(co.code, 0, co.stderr);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', builtRaw, v2]);
  });
});
