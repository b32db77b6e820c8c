/**
 * Issue 22: `strata nbd` serving a library version of the 200,000-entry ext4 tree
 * (test/helpers/large-tree-pair.ts) to nbdcopy (libnbd's copier: four connections, 64
 * requests in flight on each) within `--memory 64M`. The server's peak RSS (GNU time's %M)
 * must stay under a ceiling: the budget plus Node's own footprint and allocator slack; before
 * the store's and the server's shares were divided in one place (util/memory.ts SHARES) and
 * what a pool drops was freed at once, the shares alone summed past the budget. The bytes are
 * checked against the image file itself (the version is checked in `--exact`).
 * Run alone: the figure is a peak, and no timing is asserted.
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileSha } from '../helpers/files.js';
import { largeTreeImage } from '../helpers/large-tree-pair.js';
import { have, ROOT, run, scratch } from '../helpers/tools.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');
const ENTRIES = 200_000;
const MiB = 1 << 20;
/**
 * Peak RSS allowed to the server with --memory 64M: the 64 MiB data budget, Node's own ~52 MiB
 * with the server's modules loaded, V8's heap slack and the allocator's. Measured (nbdmem,
 * load 13-22): 131-145 MiB; main's build before (each share sized on its own, a pool's dropped
 * buffers left to the collector, the V8 heap unbounded by the keeper) 148-158 MiB.
 */
const CEILING_64M = 152 * MiB;

for (const [cmd, pkg] of [
  ['mkfs.ext4', 'e2fsprogs'],
  ['nbdcopy', 'libnbd-bin'],
  ['/usr/bin/time', 'time'],
]) {
  if (!have(cmd)) throw new Error(`${cmd} is needed (apt-get install ${pkg})`);
}

test('nbd of a 200,000-entry version under nbdcopy: --memory 64M serves the image byte for byte under the RSS ceiling', async () => {
  const img = await largeTreeImage(ENTRIES);
  const dir = scratch('nbd-memory');
  try {
    const lib = path.join(dir, 'lib');
    await run(process.execPath, [CLI, 'checkin', img, '--name', 'big', '--exact', '--library', lib]);
    const sock = path.join(dir, 'nbd.sock');
    const rssFile = path.join(dir, 'rss');
    const server = spawn(
      '/usr/bin/time',
      [
        '-f',
        '%M',
        '-o',
        rssFile,
        process.execPath,
        CLI,
        'nbd',
        'big@1',
        '--library',
        lib,
        '--socket',
        sock,
        '--memory',
        '64M',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    server.stderr.on('data', (b: Buffer) => {
      stderr += b;
    });
    const exited = new Promise<number | null>((resolve) => server.on('close', (code) => resolve(code)));
    try {
      for (let i = 0; i < 600 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(existsSync(sock), `the server did not listen: ${stderr}`);
      // the whole disk, holes included, through a pipe: hashed as it comes
      const h = createHash('sha256');
      const copy = spawn('nbdcopy', [`nbd+unix:///big@1?socket=${sock}`, '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let copyErr = '';
      copy.stderr.on('data', (b: Buffer) => {
        copyErr += b;
      });
      copy.stdout.on('data', (b: Buffer) => h.update(b));
      const code = await new Promise<number | null>((resolve) => copy.on('close', (c) => resolve(c)));
      assert.equal(code, 0, `nbdcopy: ${copyErr}`);
      assert.equal(h.digest('hex'), await fileSha(img), 'the served disk is not the image');
    } finally {
      // GNU time has the server as its child: signal that (time passes no signal on)
      let kids: string[] = [];
      try {
        kids = readFileSync(`/proc/${server.pid}/task/${server.pid}/children`, 'utf8').trim().split(/\s+/);
      } catch {
        // already gone
      }
      for (const k of kids.filter(Boolean)) process.kill(Number(k), 'SIGTERM');
    }
    await exited;
    const maxRss = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop()) * 1024;
    console.log(`nbd --memory 64M: peak RSS ${(maxRss / MiB).toFixed(1)} MiB`);
    assert.ok(maxRss > 50 * MiB, `a peak RSS of ${maxRss} B is not a Node process's`);
    assert.ok(
      maxRss < CEILING_64M,
      `nbd --memory 64M peaked at ${(maxRss / MiB).toFixed(1)} MiB RSS (ceiling ${CEILING_64M / MiB} MiB)`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
