import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { ROOT, run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { nbdReads, sameAs, startDeploy } from './helpers.js';
import { debugfsBlocks, profileLibrary } from './profile-helpers.js';

/**
 * The profile verbs through the CLI: a deploy's own access log (`deploy --trace`) of libnbd
 * reads of N (the superblock, a file, the head of another), recorded with `profile record`,
 * shown on N+1 with `profile show` (it falls back to N's), and used by `deploy` of N+1:
 * the plan's bytes are the superblock (same place) plus the files' read ranges at their
 * new places (debugfs on N+1), and TARGET ends identical to N+1.
 */
const BS = 4096;
let dir: string;
let fx: Awaited<ReturnType<typeof profileLibrary>>;
const strata = (args: string[]) => run(process.execPath, [path.join(ROOT, 'dist/cli/strata.cjs'), ...args]);

before(async () => {
  dir = tempDir('deploy-profile-cli');
  fx = await profileLibrary(dir);
});

describe('strata profile', () => {
  test('deploy --trace, profile record, profile show, deploy of N+1 with the profile of N', async () => {
    const log = path.join(dir, 'deploy.trace');
    const d1 = await startDeploy(['disk@1', '--library', fx.lib, '--to', path.join(dir, 't1.raw'), '--trace', log]);
    const fstab = await debugfsBlocks(fx.n, '/etc/fstab');
    const vmlinuz = await debugfsBlocks(fx.n, '/boot/vmlinuz');
    try {
      assert.equal(
        d1.events.find((e) => e.event === 'profile'),
        undefined,
        'N has no profile yet',
      );
      const got = await nbdReads(d1.uri, [
        [1024, 1024],
        [fstab[0] * BS, BS],
        [vmlinuz[0] * BS, 16 * BS],
      ]);
      // the superblock's magic (0xEF53 at 56 in it): the read went through
      assert.equal(got.readUInt16LE(56), 0xef53);
    } finally {
      d1.child.kill('SIGTERM');
      assert.equal(await d1.exited, 0, d1.stderr());
    }
    const reads = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { op: string; offset: number; length: number })
      .filter((r) => r.op === 'read');
    assert.deepEqual(
      reads.map((r) => [r.offset, r.length]),
      [
        [1024, 1024],
        [fstab[0] * BS, BS],
        [vmlinuz[0] * BS, 16 * BS],
      ],
    );

    const rec = JSON.parse(
      await strata(['profile', 'record', 'disk@1', '--trace', log, '--library', fx.lib, '--json']),
    );
    assert.equal(rec.reads, 3);
    assert.deepEqual(rec.byKind.map((k: { kind: string; bytes: number }) => [k.kind, k.bytes]).sort(), [
      ['file', BS + 16 * BS],
      ['superblock', 1024],
    ]);

    const shown = JSON.parse(await strata(['profile', 'show', 'disk@2', '--library', fx.lib, '--json']));
    assert.equal(shown.profile.number, 1, 'N+1 shows the profile of N');
    assert.deepEqual(
      shown.summary.byFile.map((f: { path: string; bytes: number }) => [f.path, f.bytes]),
      [
        ['/etc/fstab', BS],
        ['/boot/vmlinuz', 16 * BS],
      ],
    );
    const text = await strata(['profile', 'show', 'disk@1', '--library', fx.lib]);
    assert.match(text, /bytes per file/);
    assert.match(text, /"\/boot\/vmlinuz" @0-65536/);
    await assert.rejects(strata(['profile', 'show', 'nosuch', '--library', fx.lib]), /nosuch/);

    // deploy N+1: the plan is the superblock where it was and the two files where N+1 put them
    const target = path.join(dir, 't2.raw');
    const d2 = await startDeploy(['disk@2', '--library', fx.lib, '--to', target, '--exit-when-complete']);
    assert.equal(await d2.exited, 0, d2.stderr());
    const ev = d2.events.find((e) => e.event === 'profile');
    assert.ok(ev, 'a profile event');
    assert.equal(ev.profile, 'disk@1');
    assert.equal(ev.bytes, 1024 + BS + 16 * BS);
    assert.equal(ev.same, 1);
    assert.equal(ev.moved, 2);
    assert.equal(ev.missing, 0);
    const fstab2 = await debugfsBlocks(fx.n1, '/etc/fstab');
    const vmlinuz2 = await debugfsBlocks(fx.n1, '/boot/vmlinuz');
    assert.notEqual(fstab2[0], fstab[0]);
    assert.equal(await sameAs(fx.v2, target), true, 'TARGET holds N+1');

    // a profile given as a file (what profile show --json prints), and --profile none
    const pfile = path.join(dir, 'profile.json');
    writeFileSync(pfile, JSON.stringify(shown.profile));
    const t3 = path.join(dir, 't3.raw');
    const d3 = await startDeploy([
      'disk@2',
      '--library',
      fx.lib,
      '--to',
      t3,
      '--profile',
      pfile,
      '--exit-when-complete',
    ]);
    assert.equal(await d3.exited, 0, d3.stderr());
    assert.equal(d3.events.find((e) => e.event === 'profile')?.bytes, ev.bytes);
    assert.equal(vmlinuz2.length, vmlinuz.length);
    const d4 = await startDeploy([
      'disk@2',
      '--library',
      fx.lib,
      '--to',
      path.join(dir, 't4.raw'),
      '--profile',
      'none',
      '--exit-when-complete',
    ]);
    assert.equal(await d4.exited, 0, d4.stderr());
    assert.equal(
      d4.events.find((e) => e.event === 'profile'),
      undefined,
      '--profile none',
    );
  });
});
