import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { ROOT, run } from '../helpers/tools.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'strata.cjs');

/**
 * V8 old-space limit for `strata deploy` of a 200,000-entry version (its layout in 13 parts
 * of 16,384 ranges). Measured (load ~20): reading the layout a part at a time, every form of
 * deploy passes with 24 MiB; joined, the layout alone is ~185,000 chunks and ~200,000 ranges
 * as objects (checkout died out of heap so with 24 and 28), and the differential's block
 * signatures and --compare's chunk map of before came on top of it.
 * 28, not 24: at 24 the differential died once out of heap in a CI run beside another test
 * file (load ~15; it passed in every run alone); with the layout joined (libraryDeploySource
 * on lib.layout) the plain deploy still dies at 28 (checked 2026-12-07), so 28 keeps the test's
 * point with a margin.
 */
export const DEPLOY_HEAP_MIB = 28;

interface DeployRun {
  events: Array<Record<string, unknown>>;
}

/** `strata deploy REF --to TARGET --exit-when-complete` in a heap of DEPLOY_HEAP_MIB; its events. */
function deploy(lib: string, ref: string, target: string, sock: string, extra: string[] = []): DeployRun {
  const r = spawnSync(
    process.execPath,
    [
      `--max-old-space-size=${DEPLOY_HEAP_MIB}`,
      CLI,
      'deploy',
      ref,
      '--to',
      target,
      '--library',
      lib,
      '--socket',
      sock,
      '--exit-when-complete',
      '--json',
      ...extra,
    ],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  assert.equal(
    r.status,
    0,
    `deploy ${ref} ${extra.join(' ')} with a ${DEPLOY_HEAP_MIB} MiB heap: ${r.signal ?? ''} ${r.stderr.slice(-2000)}`,
  );
  const events = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { events };
}

const eventOf = (r: DeployRun, name: string) => {
  const e = r.events.find((x) => x.event === name);
  assert.ok(e, `a '${name}' event in ${JSON.stringify(r.events.slice(0, 4))}`);
  return e;
};

/** Overwrite `n` bytes at each of `offsets` of `file` with other bytes (0xa5). */
function damage(file: string, offsets: number[], n: number): void {
  const fd = openSync(file, 'r+');
  try {
    for (const o of offsets) writeSync(fd, Buffer.alloc(n, 0xa5), 0, n, o);
  } finally {
    closeSync(fd);
  }
}

/**
 * Issue 22: every form of deploy of a large version in a small V8 heap, each TARGET equal to
 * its image byte for byte (cmp): `first` (image `firstImage`) onto a new TARGET; then, its
 * state removed and a few MiB of it overwritten, `first` again with --compare (hashed along the
 * chunks: only the damaged chunks fetched); then `second` onto that TARGET (the differential:
 * its state names `first`'s layout).
 */
export async function deploysInSmallHeap(
  lib: string,
  first: string,
  firstImage: string,
  second: string,
  secondImage: string,
  dir: string,
): Promise<void> {
  const target = path.join(dir, 'deploy.raw');
  const sock = path.join(dir, 'deploy.sock');
  try {
    const plain = deploy(lib, first, target, sock);
    const start = eventOf(plain, 'start');
    assert.equal(start.mode, 'new');
    assert.equal(eventOf(plain, 'exit').complete, true);
    await run('cmp', [target, firstImage]);

    // an unknown TARGET: the version but for 8 stretches of 256 KiB
    rmSync(`${target}.strata-deploy`);
    const size = Number(start.size);
    damage(
      target,
      Array.from({ length: 8 }, (_, i) => Math.floor(((i + 0.5) * size) / 8 / 4096) * 4096),
      256 << 10,
    );
    const cmp = deploy(lib, first, target, sock, ['--compare']);
    assert.equal(eventOf(cmp, 'start').mode, 'compare');
    const c = eventOf(cmp, 'compared');
    assert.ok(Number(c.matched) > 1000 && Number(c.mismatched) > 0, `compare: ${JSON.stringify(c)}`);
    assert.ok(Number(c.mismatched) < Number(c.matched) / 100, `compare: ${JSON.stringify(c)}`);
    const fetched = Number(eventOf(cmp, 'exit').fetchedBytes);
    assert.ok(fetched > 0 && fetched < 64 << 20, `compare fetched ${fetched} bytes`);
    assert.equal(eventOf(cmp, 'exit').complete, true);
    await run('cmp', [target, firstImage]);

    const diff = deploy(lib, second, target, sock);
    assert.equal(eventOf(diff, 'start').mode, 'differential');
    assert.equal(eventOf(diff, 'exit').complete, true);
    await run('cmp', [target, secondImage]);
  } finally {
    rmSync(target, { force: true });
    rmSync(`${target}.strata-deploy`, { force: true });
  }
}
