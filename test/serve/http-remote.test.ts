import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Access } from '../../src/catalog/access.js';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { verifyLibrary } from '../../src/library/library-verbs.js';
import { RemoteLibrary, remoteCheckin } from '../../src/serve/http/client.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { CLI, strata } from '../helpers/cli.js';
import { inspectPair } from '../helpers/inspect-pair.js';
import { baseTree, derivedTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, serve } from './http-helpers.js';

/**
 * Check-in over the network and the CLI's --remote: a derived image sent to a server
 * holding its base uploads only the chunks the base lacks and makes the same manifest as
 * a local check-in; the CLI answers ls/cat/diff/search/checkout the same through the
 * service as from the library; an upload cut off mid-way resumes without resending what
 * arrived; two clients check in one image at once; a server killed with SIGKILL while
 * check-ins run leaves a library that verifies clean and no half version.
 */
let dir: string;
let local: Library;
let srv: Library;
let server: RunningServer;
let tokens: Record<string, string>;
let baseImg: string;
let derivedImg: string;
let localBase: Awaited<ReturnType<typeof checkin>>;
let localDerived: Awaited<ReturnType<typeof checkin>>;

before(async () => {
  dir = tempDir('serve-remote');
  baseImg = await extImageOf('ext4', await baseTree(), 'dedup-base', 64);
  derivedImg = await extImageOf('ext4', await derivedTree(), 'dedup-derived', 64);
  local = await Library.open(path.join(dir, 'local'));
  localBase = await checkin(local, baseImg, { name: 'own/base' });
  localDerived = await checkin(local, derivedImg, { name: 'own/derived', parents: ['own/base'] });
  srv = await Library.open(path.join(dir, 'server'));
  ({ tokens } = await addPeople(srv));
  await checkin(srv, baseImg, { name: 'own/base' });
  server = await serve(srv);
});

after(async () => {
  await server?.close();
  await srv?.close();
  await local?.close();
});

describe('network check-in', () => {
  test('a derived image sent to a server holding its base uploads only what the base lacks', async () => {
    const remote = new RemoteLibrary(server.url, tokens['own-member']);
    const r = await remoteCheckin(remote, derivedImg, { name: 'own/derived', parents: ['own/base'] });
    assert.equal(r.ref, 'own/derived@1');
    // the same cut as a local check-in: the same manifest digest
    assert.equal(r.manifest, localDerived.manifest);
    // exactly the chunks the base lacks were sent
    const base = new Set((await local.layout(localBase.manifest)).chunks);
    const derived = await local.layout(localDerived.manifest);
    let lackBytes = 0;
    let lack = 0;
    derived.chunks.forEach((c, i) => {
      if (!base.has(c)) {
        lack++;
        lackBytes += derived.chunkLengths[i];
      }
    });
    assert.equal(r.chunksSent, lack);
    assert.equal(r.chunkBytesSent, lackBytes);
    assert.ok(lack > 0 && lack < derived.chunks.length / 4, `${lack} of ${derived.chunks.length}`);
    const v = await srv.catalog.resolve('own/derived');
    assert.deepEqual(v.parents, [{ image: 'own/base', number: 1 }]);
    const rep = await verifyLibrary(srv);
    assert.deepEqual([rep.errors, rep.missing], [[], []]);
    // the server inspected it
    const ins = await remote.inspection('own/derived@1');
    assert.equal((ins as { ref: string }).ref, 'own/derived@1');
  });
});

describe('the CLI, local and remote', () => {
  const both = async (args: string[]) => {
    const l = await strata([...args, '--library', path.join(dir, 'local')]);
    const r = await strata([...args, '--remote', server.url], { env: { STRATA_TOKEN: tokens.root } });
    assert.equal(l.code, 0, `local ${args.join(' ')}: ${l.stderr}`);
    assert.equal(r.code, 0, `remote ${args.join(' ')}: ${r.stderr}`);
    return { l, r };
  };
  const lines = (s: string) =>
    s
      .split('\n')
      .filter(Boolean)
      .map((x) => JSON.parse(x));

  test('ls', async () => {
    const all = await both(['ls', 'own/derived', '/', '-R', '--json']);
    const a = lines(all.l.stdout);
    assert.ok(a.length > 250);
    assert.deepEqual(lines(all.r.stdout), a);
    const { l, r } = await both(['ls', 'own/derived@1', '/dir2/sub2', '-l']);
    assert.equal(r.stdout, l.stdout);
    assert.match(l.stdout, /file4\.txt/);
  });

  test('cat', async () => {
    for (const p of ['/dir7/new-config.txt', '/big-random.bin', '/link-rel', '/sparse.bin']) {
      const { l, r } = await both(['cat', 'own/derived', p]);
      assert.ok(l.stdoutBytes.length > 0);
      assert.ok(l.stdoutBytes.equals(r.stdoutBytes), p);
    }
    // against the tree the image was made from
    const { r } = await both(['cat', 'own/derived', '/big-random.bin']);
    assert.ok(r.stdoutBytes.equals(readFileSync(path.join(await derivedTree(), 'big-random.bin'))));
  });

  test('diff', async () => {
    const { l, r } = await both(['diff', 'own/base', 'own/derived', '--json', '--blocks']);
    assert.deepEqual(JSON.parse(r.stdout), JSON.parse(l.stdout));
    const text = await both(['diff', 'own/base@1', 'own/derived@1']);
    assert.equal(text.r.stdout, text.l.stdout);
    assert.match(text.l.stdout, /new-config\.txt/);
  });

  test('search', async () => {
    for (const q of [
      ['--path', '**/file4.txt'],
      ['--path', '/dir7/*'],
      [
        '--digest',
        createHash('sha256')
          .update(readFileSync(path.join(await baseTree(), 'big-random.bin')))
          .digest('hex'),
      ],
    ]) {
      const { l, r } = await both(['search', ...q, '--json']);
      assert.deepEqual(JSON.parse(r.stdout), JSON.parse(l.stdout));
    }
    const { l } = await both(['search', '--path', '/dir7/new-config.txt', '--json']);
    assert.deepEqual(
      JSON.parse(l.stdout).map((h: { ref: string }) => h.ref),
      ['own/derived@1'],
    );
  });

  test('images, versions and describe name the same versions', async () => {
    const { l, r } = await both(['images', '--json']);
    const pick = (rows: Array<{ name: string; versions: number; latest: number }>) =>
      rows.map((x) => [x.name, x.versions, x.latest]);
    assert.deepEqual(pick(JSON.parse(r.stdout)), pick(JSON.parse(l.stdout)));
    const d = await both(['describe', 'own/derived', '--json']);
    const [dl, dr] = [JSON.parse(d.l.stdout), JSON.parse(d.r.stdout)];
    assert.equal(dr.manifest, dl.manifest);
    assert.deepEqual(dr.provenance, dl.provenance);
    assert.deepEqual(dr.layout, dl.layout);
  });

  test('checkout gives the same disk', async () => {
    const out = tempDir('serve-remote-out');
    const a = path.join(out, 'local.raw');
    const b = path.join(out, 'remote.qcow2');
    const c = path.join(out, 'remote.raw');
    assert.equal((await strata(['checkout', 'own/derived', a, '--library', path.join(dir, 'local')])).code, 0);
    const env = { env: { STRATA_TOKEN: tokens.root, STRATA_REMOTE: server.url } };
    const rb = await strata(['checkout', 'own/derived', b, '-O', 'qcow2'], env);
    assert.equal(rb.code, 0, rb.stderr);
    const rc = await strata(['checkout', 'own/derived', c], env);
    assert.equal(rc.code, 0, rc.stderr);
    const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
    assert.equal(sha(c), sha(a));
    // qemu-img, an oracle we did not write, compares the qcow2 with the raw
    const { run } = await import('../helpers/tools.js');
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', a, b]);
  });

  test('without a token a private image is missing, and the CLI says so', async () => {
    const r = await strata(['ls', 'own/derived', '/', '--remote', server.url], { env: { STRATA_TOKEN: '' } });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no such version: own\/derived/);
  });
});

describe('the Debian pair, local and remote', () => {
  before(async () => {
    const pair = await inspectPair();
    await checkin(local, pair.a, { name: 'own/deb-a' });
    await checkin(local, pair.b, { name: 'own/deb-b', parents: ['own/deb-a'] });
    const remote = new RemoteLibrary(server.url, tokens['own-member']);
    const a = await remoteCheckin(remote, pair.a, { name: 'own/deb-a' });
    const b = await remoteCheckin(remote, pair.b, { name: 'own/deb-b', parents: ['own/deb-a'] });
    assert.equal(a.manifest, (await local.catalog.resolve('own/deb-a')).manifest);
    assert.equal(b.manifest, (await local.catalog.resolve('own/deb-b')).manifest);
    assert.ok(b.chunksSent < b.chunks / 2, `${b.chunksSent} of ${b.chunks} chunks sent`);
  });

  const both = async (args: string[]) => {
    const l = await strata([...args, '--library', path.join(dir, 'local')]);
    const r = await strata([...args, '--remote', server.url], { env: { STRATA_TOKEN: tokens['own-reader'] } });
    assert.equal(l.code, 0, `local ${args.join(' ')}: ${l.stderr}`);
    assert.equal(r.code, 0, `remote ${args.join(' ')}: ${r.stderr}`);
    return { l, r };
  };

  test('search by package, OS and user', async () => {
    for (const q of [
      ['--package', 'bash'],
      ['--package', 'gzip<1.12'],
      ['--package', 'bash>=9'],
      ['--os', 'debian'],
      ['--user', 'probe'],
      ['--path', '/etc/*.conf', '--package', 'dash'],
    ]) {
      const { l, r } = await both(['search', ...q, '--json']);
      assert.deepEqual(JSON.parse(r.stdout), JSON.parse(l.stdout), q.join(' '));
      assert.ok(JSON.parse(l.stdout).length > 0, q.join(' '));
    }
  });

  test('diff with packages and blocks, ls and cat', async () => {
    const { l, r } = await both(['diff', 'own/deb-a', 'own/deb-b', '--packages', '--blocks', '--json']);
    const [dl, dr] = [JSON.parse(l.stdout), JSON.parse(r.stdout)];
    assert.deepEqual(dr, dl);
    // what the pair was made with (test/helpers/inspect-pair.ts): bash upgraded to 9.9-1
    assert.ok(JSON.stringify(dl.packages).includes('9.9-1'));
    const text = await both(['diff', 'own/deb-a', 'own/deb-b', '--packages']);
    assert.equal(text.r.stdout, text.l.stdout);
    const ls = await both(['ls', 'own/deb-b', '/etc', '-l']);
    assert.equal(ls.r.stdout, ls.l.stdout);
    for (const p of ['/etc/passwd', '/var/lib/dpkg/status', '/usr/bin/ls']) {
      const c = await both(['cat', 'own/deb-b', p]);
      assert.ok(c.l.stdoutBytes.length > 0 && c.r.stdoutBytes.equals(c.l.stdoutBytes), p);
    }
  });
});

describe('interrupted, concurrent and killed', () => {
  test('an upload cut off mid-way resumes without sending again what arrived', async () => {
    const lib2 = await Library.open(path.join(dir, 'server2'));
    const { tokens: t2 } = await addPeople(lib2);
    const s2 = await serve(lib2);
    try {
      let uploads = 0;
      let sentChunks = 0;
      class Flaky extends RemoteLibrary {
        override async uploadChunks(chunks: Array<{ digest: string; data: Uint8Array }>) {
          if (++uploads > 3) throw new Error('connection reset (test)');
          sentChunks += chunks.length;
          return super.uploadChunks(chunks);
        }
      }
      await assert.rejects(
        remoteCheckin(new Flaky(s2.url, t2['own-member']), derivedImg, { name: 'own/derived', batchBytes: 1 << 20 }),
        /connection reset/,
      );
      assert.ok(sentChunks > 0);
      assert.equal(await lib2.catalog.image('own/derived'), undefined, 'no version after the cut');
      const r = await remoteCheckin(new RemoteLibrary(s2.url, t2['own-member']), derivedImg, {
        name: 'own/derived',
        batchBytes: 1 << 20,
      });
      assert.equal(r.manifest, localDerived.manifest);
      const all = (await local.layout(localDerived.manifest)).chunks.length;
      assert.equal(r.chunksSent, all - sentChunks, 'only what had not arrived');
      const rep = await verifyLibrary(lib2);
      assert.deepEqual([rep.errors, rep.missing], [[], []]);
    } finally {
      await s2.close();
      await lib2.close();
    }
  });

  test('two clients check in one image at once', async () => {
    const lib3 = await Library.open(path.join(dir, 'server3'));
    const { tokens: t3 } = await addPeople(lib3);
    const s3 = await serve(lib3);
    try {
      const [a, b] = await Promise.all([
        remoteCheckin(new RemoteLibrary(s3.url, t3['own-member']), baseImg, { name: 'own/both', batchBytes: 2 << 20 }),
        remoteCheckin(new RemoteLibrary(s3.url, t3['own-admin']), derivedImg, {
          name: 'own/both',
          batchBytes: 2 << 20,
        }),
      ]);
      assert.deepEqual([a.number, b.number].sort(), [1, 2]);
      const vs = await lib3.catalog.versions('own/both');
      assert.deepEqual(vs.map((v) => v.manifest).sort(), [localBase.manifest, localDerived.manifest].sort());
      const rep = await verifyLibrary(lib3);
      assert.deepEqual([rep.errors, rep.missing], [[], []]);
    } finally {
      await s3.close();
      await lib3.close();
    }
  });

  test('a server killed with SIGKILL during check-ins leaves no half version and a clean library', async () => {
    const libDir = path.join(dir, 'server4');
    const lib4 = await Library.open(libDir);
    const acc = await Access.open(lib4.catalog.db);
    await acc.addUser('u');
    await acc.addProject('own');
    await acc.setRole('own', 'u', 'member');
    const token = (await acc.createToken({ user: 'u', project: 'own', scope: 'write' })).token;
    await lib4.close();
    const child: ChildProcess = spawn(
      process.execPath,
      [CLI, 'serve', '--library', libDir, '--listen', '127.0.0.1:0', '--quiet', '--rate-limit', '0'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const url = await new Promise<string>((resolve, reject) => {
      let err = '';
      child.stderr?.on('data', (b: Buffer) => {
        err += b.toString();
        const m = /at (http:\/\/\S+) /.exec(err);
        if (m) resolve(m[1]);
      });
      child.on('exit', () => reject(new Error(`server exited: ${err}`)));
    });
    // three check-ins in flight; kill the server once the first upload has landed
    const runs = [baseImg, derivedImg, baseImg].map((img, i) =>
      remoteCheckin(new RemoteLibrary(url, token), img, { name: `own/k${i}`, batchBytes: 1 << 20 }).then(
        () => 'done',
        (e: Error) => e.message,
      ),
    );
    for (;;) {
      const m = await (await fetch(`${url}/metrics`)).text();
      if (
        /route="\/v1\/chunks",status="200"\} [1-9]/.test(m) ||
        /route="\/v1\/images\/:name\/versions",status="201"/.test(m)
      )
        break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const outcomes = await Promise.all(runs);
    assert.ok(
      outcomes.some((o) => o !== 'done'),
      `the kill cut something off: ${outcomes.join(' | ')}`,
    );
    const v = await strata(['verify', '--library', libDir, '--json']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const again = await Library.open(libDir, { create: false });
    try {
      // every version there is complete: each reads back whole
      for (const img of await again.catalog.images()) {
        for (const ver of await again.catalog.versions(img.name)) {
          const rep = await verifyLibrary(again, `${ver.image}@${ver.number}`);
          assert.deepEqual([rep.errors, rep.missing], [[], []]);
          assert.ok([localBase.manifest, localDerived.manifest].includes(ver.manifest));
        }
      }
    } finally {
      await again.close();
    }
  });
});
