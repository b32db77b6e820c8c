import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type DeployEvent, Deployer } from '../../src/deploy/deployer.js';
import { httpLibraryDeploySource } from '../../src/deploy/source.js';
import { loadState, STATE_SUFFIX } from '../../src/deploy/state.js';
import { CLI } from '../helpers/cli.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { type Running, sameAs, startDeploy, twoVersions } from './helpers.js';
import { lighttpd, type WebServer } from './web.js';

/**
 * A deploy's source goes away for longer than a read may wait, and comes back (issue 16
 * leftovers): the background copy waits with backoff, makes what is local durable first, and
 * goes on by itself; a kill -9 while it waits and a --resume lose nothing; a bound on the wait
 * stops the copy cleanly. The source is lighttpd (a real web server) stopped and started
 * again on its port. And a static index that is stale against the store (a gc since, a pack
 * gone) is refused, naming the version and the index, before anything is written. Oracles:
 * qemu-img compare against `strata checkout`'s raw file; the state file read back.
 */
let dir: string;
let lib: string;
let v1: string;
let v2: string;
let web: WebServer;
let libUrl: string;

before(async () => {
  dir = tempDir('deploy-outage');
  ({ lib, v1, v2 } = await twoVersions(dir));
  await run(process.execPath, [CLI, 'export-index', '--library', lib]);
  web = await lighttpd(dir, dir);
  libUrl = `${web.url}/lib`;
});

after(async () => {
  await web?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Every block the state file says is local holds the version's bytes in TARGET; returns how many data blocks. */
function stateSound(target: string, version: string): number {
  const st = loadState(target + STATE_SUFFIX);
  assert.ok(st, 'a state file beside TARGET');
  const t = readFileSync(target);
  const good = readFileSync(version);
  const bs = st.header.blockSize;
  let data = 0;
  for (let i = 0; i < st.local.length; i++) {
    if (!st.local[i] || st.dirty[i]) continue;
    const want = good.subarray(i * bs, (i + 1) * bs);
    assert.ok(t.subarray(i * bs, (i + 1) * bs).equals(want), `block ${i} is recorded local and holds the version`);
    if (want.some((b) => b !== 0)) data++;
  }
  return data;
}

const fetched = (d: Running) =>
  Math.max(0, ...d.events.filter((e) => e.event === 'progress').map((e) => Number(e.fetchedBytes)));

describe('the source goes away and comes back', () => {
  test('away longer than a read may wait: the copy waits, what is local is recorded, it goes on by itself; TARGET identical', async () => {
    const target = path.join(dir, 'away.raw');
    // a read waits 1 s at most; before, the copy gave up every range after that long
    const d = await startDeploy([
      'disk@1',
      '--library',
      libUrl,
      '--to',
      target,
      '--bandwidth',
      '2M',
      '--fetch-timeout',
      '1',
      '--exit-when-complete',
    ]);
    try {
      await until('some of the copy', () => fetched(d) > 0);
      await web.stop();
      const stalled = await d.event('stalled');
      assert.match(String(stalled.error), new RegExp(`connection refused by 127\\.0\\.0\\.1:${web.port}`));
      // three times the read timeout: the old copier had given up and left TARGET incomplete
      await sleep(3000);
      assert.deepEqual(
        d.events.filter((e) => e.event === 'error'),
        [],
        'no range given up',
      );
      // what the state says is local is on disk, and it is what was copied before the server went
      const recorded = stateSound(target, v1);
      assert.ok(recorded > 0, 'data blocks recorded local while the source is away');
      const retries = d.events.filter((e) => e.event === 'retry').length;
      assert.ok(retries >= 2, `retried (${retries})`);
      await web.start();
      const resumed = await d.event('resumed');
      assert.ok(Number(resumed.seconds) >= 3, JSON.stringify(resumed));
      assert.equal(await d.exited, 0, d.stderr());
    } finally {
      d.child.kill('SIGKILL');
      await web.start();
    }
    assert.ok(d.events.some((e) => e.event === 'complete'));
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
  });

  test('kill -9 while the copy waits, --resume while the source is still away, then it comes back: TARGET identical', async () => {
    const target = path.join(dir, 'kill-away.raw');
    const args = ['disk@1', '--library', libUrl, '--to', target, '--bandwidth', '2M', '--fetch-timeout', '1'];
    const a = await startDeploy(args);
    let b: Running | undefined;
    try {
      await until('some of the copy', () => fetched(a) > 0);
      await web.stop();
      await a.event('stalled');
      a.child.kill('SIGKILL');
      await a.exited;
      const recorded = stateSound(target, v1);
      assert.ok(recorded > 0, 'data blocks recorded before the kill');
      const stateBytes = readFileSync(target + STATE_SUFFIX);
      // --resume with the source still away: refused at once, naming what it could not reach; nothing changed
      const early = spawnSync(process.execPath, [CLI, 'deploy', ...args, '--resume', '--port', '0'], {
        encoding: 'utf8',
        timeout: 120_000,
      });
      assert.notEqual(early.status, 0);
      assert.match(early.stderr, /strata-index\.json.*connection refused/);
      assert.ok(readFileSync(target + STATE_SUFFIX).equals(stateBytes), 'the state is untouched');
      // the source back: --resume goes on from what was recorded, and a second outage is waited out too
      await web.start();
      b = await startDeploy([...args, '--resume', '--exit-when-complete']);
      const start = await b.event('start');
      assert.equal(start.mode, 'resume');
      assert.ok(Number(start.local) > 0, 'what was local is not fetched again');
      await until('some of the resumed copy', () => fetched(b!) > 0);
      await web.stop();
      await b.event('stalled');
      await sleep(2000);
      await web.start();
      await b.event('resumed');
      assert.equal(await b.exited, 0, b.stderr());
    } finally {
      a.child.kill('SIGKILL');
      b?.child.kill('SIGKILL');
      await web.start();
    }
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
  });

  test('a bound on the wait: the copy stops cleanly, names why, and --resume finishes it once the source is back', async () => {
    const target = path.join(dir, 'bound.raw');
    const events: DeployEvent[] = [];
    const src = await httpLibraryDeploySource(libUrl, 'disk@1');
    const d = await Deployer.open(src, target, {
      fetchTimeout: 500,
      sourceWait: 1500,
      maxRetryDelay: 200,
      bandwidth: 2 << 20,
      onEvent: (e) => events.push(e),
    });
    try {
      d.start();
      await until('some of the copy', () => d.fetchedBytes > 0);
      await web.stop();
      // the copier ends by itself (it does not hang, and does not try every range for the full wait)
      await d.copying();
      assert.equal(d.isComplete, false);
      const errors = events.filter((e) => e.event === 'error').map((e) => (e as { error: string }).error);
      assert.equal(errors.length, 1, errors.join('\n'));
      assert.match(
        errors[0],
        /the background copy stopped: .*gave up a background fetch of \d+ bytes at \d+ after \d+ attempts/,
      );
      assert.match(errors[0], /--resume/);
      assert.ok(events.some((e) => e.event === 'stalled'));
    } finally {
      await d.close();
      await web.start();
    }
    assert.ok(stateSound(target, v1) > 0);
    const r = await startDeploy(['disk@1', '--library', libUrl, '--to', target, '--resume', '--exit-when-complete']);
    assert.equal(await r.exited, 0, r.stderr());
    assert.equal(await sameAs(v1, target), true, 'qemu-img compare: TARGET identical');
  });
});

describe('a static index stale against the store', () => {
  /** A copy of the library served by the same lighttpd; `change` alters it, then the old index is put back. */
  async function staleCopy(name: string, change: (copy: string) => Promise<void>): Promise<string> {
    const copy = path.join(dir, name);
    rmSync(copy, { recursive: true, force: true });
    cpSync(lib, copy, { recursive: true });
    const index = readFileSync(path.join(copy, 'strata-index.json'));
    await change(copy);
    writeFileSync(path.join(copy, 'strata-index.json'), index);
    return copy;
  }

  async function refused(copy: string, ref: string, why: RegExp): Promise<void> {
    const target = path.join(dir, `${path.basename(copy)}.raw`);
    const p = spawnSync(
      process.execPath,
      [CLI, 'deploy', ref, '--library', `${web.url}/${path.basename(copy)}`, '--to', target, '--port', '0'],
      { encoding: 'utf8', timeout: 120_000 },
    );
    assert.notEqual(p.status, 0, 'the deploy is refused');
    const r = p.stderr;
    assert.match(r, /stale against the store/);
    assert.match(r, new RegExp(ref.replace(/[@]/g, '\\$&')));
    assert.ok(r.includes(`${web.url}/${path.basename(copy)}/strata-index.json`), r);
    assert.match(r, /strata export-index/);
    assert.match(r, why);
    assert.equal(existsSync(target), false, 'no TARGET written');
  }

  test('a version removed and collected since the index was written: refused, naming the version and the index', async () => {
    const copy = await staleCopy('lib-gc', async (c) => {
      await run(process.execPath, [CLI, 'rm', 'disk@1', '--library', c]);
      await run(process.execPath, [CLI, 'gc', '--library', c]);
    });
    await refused(copy, 'disk@1', /not on the server|does not hold|not in the store/);
  });

  test('a pack gone from the server: refused before anything is written', async () => {
    const copy = await staleCopy('lib-pack', async (c) => {
      const packs = path.join(c, 'store', 'packs');
      const files = readdirSync(packs, { recursive: true, withFileTypes: true })
        .filter((e) => e.isFile())
        .map((e) => path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
        .sort((x, y) => statSync(y).size - statSync(x).size);
      assert.ok(files.length > 0);
      rmSync(files[0]);
    });
    await refused(copy, 'disk@1', /packs\/\S+, which is not on the server/);
  });
});

describe('profiles from a library over plain HTTP', () => {
  test("the static index names each version's profile file by its sha256: deploy takes it from the web server, a damaged one is refused", async () => {
    const deploy = (args: string[]) =>
      spawnSync(process.execPath, [CLI, 'deploy', ...args, '--port', '0', '--json'], {
        encoding: 'utf8',
        timeout: 300_000,
      });
    // none recorded yet: --profile REF says so, naming the index; nothing is written
    const t0 = path.join(dir, 'profile-none.raw');
    const none = deploy(['disk@1', '--library', libUrl, '--profile', 'disk@1', '--to', t0]);
    assert.notEqual(none.status, 0);
    assert.match(none.stderr, /strata-index\.json: no boot profile recorded for disk@1 or a version before it/);
    assert.equal(existsSync(t0), false, 'no TARGET written');

    // recorded on the local library (a read of the superblock): the CLI rewrites the index beside it
    const trace = path.join(dir, 'superblock.trace');
    writeFileSync(trace, '1024,1024\n');
    await run(process.execPath, [CLI, 'profile', 'record', 'disk@1', '--trace', trace, '--library', lib]);
    const ix = JSON.parse(readFileSync(path.join(lib, 'strata-index.json'), 'utf8'));
    const listed = ix.images
      .find((i: { name: string }) => i.name === 'disk')
      .versions.map((v: { number: number; profile?: { digest: string; entries: number; bytes: number } }) => [
        v.number,
        v.profile,
      ]);
    assert.equal(listed.length, 2);
    assert.equal(listed[1][1], undefined, 'disk@2 has no profile of its own');
    const entry = listed[0][1];
    assert.deepEqual([entry.entries, entry.bytes], [1, 1024]);
    const file = path.join(lib, 'profiles', `${entry.digest}.json`);
    assert.equal((await run('sha256sum', [file])).split(' ')[0], entry.digest, 'sha256sum of the file it names');

    // disk@2 from the web server: the nearest earlier version's profile, applied (the superblock stays put)
    const t1 = path.join(dir, 'profile-http.raw');
    // (the copy capped: a deploy that completes before the profile's plan is made never reports it)
    const ok = deploy(['disk@2', '--library', libUrl, '--to', t1, '--bandwidth', '2M', '--exit-when-complete']);
    assert.equal(ok.status, 0, ok.stderr);
    const ev = ok.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as DeployEvent & Record<string, unknown>)
      .find((e) => e.event === ('profile' as string));
    assert.ok(ev, ok.stdout);
    assert.deepEqual([ev.profile, ev.bytes, ev.same, ev.missing], ['disk@1', 1024, 1, 0]);
    assert.equal(await sameAs(v2, t1), true, 'qemu-img compare: TARGET holds disk@2');

    // one byte of the profile file changed on the server: refused by its digest, nothing written
    const good = readFileSync(file);
    const bad = Buffer.from(good);
    bad[bad.indexOf('1024')] ^= 1;
    writeFileSync(file, bad);
    try {
      const t2 = path.join(dir, 'profile-bad.raw');
      const refused = deploy(['disk@2', '--library', libUrl, '--to', t2]);
      assert.notEqual(refused.status, 0);
      assert.match(refused.stderr, /boot profile hashes to [0-9a-f]{64}, not [0-9a-f]{64}/);
      assert.equal(existsSync(t2), false, 'no TARGET written');
    } finally {
      writeFileSync(file, good);
    }
  });
});
