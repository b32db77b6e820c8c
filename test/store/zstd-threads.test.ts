import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { test } from 'node:test';
import { nativeZstd } from '../../src/io/native.js';
import { LocalBackend } from '../../src/store/local-backend.js';
import { SOLO_BLOB, Store } from '../../src/store/store.js';
import { compressBound, compressInto } from '../../src/store/zstd-into.js';
import { NativeZstdThreads, startZstdThreads, ZstdOffload } from '../../src/store/zstd-offload.js';
import { bytesOf } from '../helpers/ext-tree.js';
import { runBuffer } from '../helpers/tools.js';
import { tempDir, textOf } from '../library/images.js';

/**
 * The store's frames compressed by the addon's zstd (native/zstd.c, on libuv's pool: no worker
 * isolate) against zstd-napi's binding (the same zstd, run by its own authors' code), which the
 * worker isolates and inline compression use: a frame must be the same bytes whichever made it,
 * so a store's packs do not depend on whether the addon was built.
 */
const native = nativeZstd();
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** `n` bytes of the Node binary from `at`: real machine code and data, not generated text. */
function binarySlice(at: number, n: number): Uint8Array {
  const fd = openSync(process.execPath, 'r');
  try {
    const size = statSync(process.execPath).size;
    const out = new Uint8Array(n);
    let got = 0;
    // the binary may be smaller than asked for: wrap around
    while (got < n) got += readSync(fd, out, got, n - got, (at + got) % Math.max(1, size - 1));
    return out;
  } finally {
    closeSync(fd);
  }
}

/** zstd-napi's frame of `src` (src/store/zstd-into.ts: what the worker isolates and inline compression make). */
function napiFrame(src: Uint8Array, level: number, windowLog?: number): Uint8Array | null {
  const dst = new Uint8Array(compressBound(src.length));
  const n = compressInto(dst, src, level, windowLog);
  return n < src.length ? dst.subarray(0, n) : null;
}

test('the addon has the native zstd, the version zstd-napi ships (native/zstd.c)', () => {
  assert.ok(native, 'npm run build builds native/build/Release/strata_native.node with zstd-napi/deps/zstd');
  const napi = createRequire(import.meta.url)('zstd-napi/binding') as { versionNumber(): number };
  assert.equal(native.version, napi.versionNumber());
});

test('native frames are byte for byte zstd-napi frames, and the zstd CLI decodes them', { skip: !native }, async () => {
  const z = native as NonNullable<typeof native>;
  const cases: Array<[string, Uint8Array, number, number]> = [
    ['text, shared frame (7, window 2^23)', textOf('zt-text', 4 << 20), 7, 23],
    ['binary, shared frame (7, window 2^23)', binarySlice(1 << 20, 4 << 20), 7, 23],
    ['binary, 8 MiB frame (7, window 2^23)', binarySlice(9 << 20, 8 << 20), 7, 23],
    ['binary, solo chunk (7)', binarySlice(20 << 20, SOLO_BLOB), 7, 0],
    ['binary, odd length (3)', binarySlice(30 << 20, 123_457), 3, 0],
    ['text, fast level (-3)', textOf('zt-fast', 300_001), -3, 0],
    ['zeros (7, window 2^23)', new Uint8Array(2 << 20), 7, 23],
    ['random: not smaller, kept plain (7)', bytesOf('zt-random', 200_000), 7, 0],
    ['random in a window (7, window 2^23)', bytesOf('zt-random-w', 1 << 20), 7, 23],
    ['tiny (7)', textOf('zt-tiny', 100), 7, 0],
    ['empty (7)', new Uint8Array(0), 7, 0],
  ];
  const dir = tempDir('zstd-native');
  for (const [what, src, level, windowLog] of cases) {
    // the input in shared memory too (the worker's frames are), as the check-in's may be
    for (const input of [src, new Uint8Array(new SharedArrayBuffer(src.length))]) {
      if (input !== src) input.set(src);
      const got = await z.compress(input, level, windowLog);
      const want = napiFrame(src, level, windowLog || undefined);
      if (want === null) {
        assert.equal(got, null, `${what}: not smaller, so no frame`);
        continue;
      }
      assert.ok(got, `${what}: a frame`);
      assert.equal(sha(new Uint8Array(got)), sha(want), `${what}: the same frame as zstd-napi's`);
    }
    const frame = await z.compress(src, level, windowLog);
    if (frame && src.length > 0) {
      const file = path.join(dir, 'frame.zst');
      writeFileSync(file, new Uint8Array(frame));
      assert.equal(sha(await runBuffer('zstd', ['-d', '-c', file])), sha(src), `${what}: the zstd CLI decodes it`);
    }
  }
  z.release();
});

test('native zstd refuses bad arguments with a TypeError, never a crash', { skip: !native }, () => {
  const z = native as NonNullable<typeof native>;
  const src = textOf('zt-bad', 1000);
  for (const [args, why] of [
    [[src, 7, 9], 'window below 2^10'],
    [[src, 7, 28], 'window above 2^27'],
    [[src, 99, 0], 'level above the maximum'],
    [[new Float64Array(4), 7, 0], 'not bytes'],
    [['text', 7, 0], 'not a typed array'],
  ] as const) {
    assert.throws(() => (z.compress as (...a: unknown[]) => unknown)(...args), TypeError, why);
  }
});

test('the native zstd threads answer each frame with its own bytes, one thread at a time', {
  skip: !native,
}, async () => {
  const t = new NativeZstdThreads(native as NonNullable<typeof native>, 1);
  const plains = Array.from({ length: 12 }, (_, i) =>
    i === 5 ? bytesOf('nt-random', 70_000) : textOf(`nt-${i}`, 40_000 + i * 90_000),
  );
  const answers = await Promise.all(plains.map((p) => t.compress(p, 7, i23(p))));
  for (const [i, a] of answers.entries()) {
    if (i === 5) assert.equal(a.enc, undefined, 'incompressible: kept plain');
    else {
      assert.ok(a.enc, `frame ${i} compressed`);
      assert.equal(sha(a.enc), sha(napiFrame(plains[i], 7, i23(plains[i])) as Uint8Array), `frame ${i}`);
    }
  }
  await t.close();
  await assert.rejects(t.compress(plains[0], 3), /zstd thread closed/);
});

/** A window of 2^23 for every other input (both kinds of call in one batch). */
function i23(p: Uint8Array): number | undefined {
  return p.length % 2 === 0 ? 23 : undefined;
}

test('a store writes the same packs with the native zstd, with worker isolates and inline', {
  skip: !native,
}, async () => {
  const blobs = [
    ...Array.from({ length: 40 }, (_, i) => textOf(`nz-${i}`, 150_000 + i)), // shared frames
    binarySlice(40 << 20, 600_000), // machine code in a shared frame
    bytesOf('nz-random', 300_000), // incompressible, inside a shared frame
    textOf('nz-solo', SOLO_BLOB + 5), // a frame of its own
    binarySlice(50 << 20, SOLO_BLOB + 3), // its own, real bytes
    bytesOf('nz-solo-random', SOLO_BLOB + 7), // its own, kept plain
  ];
  const runs: Array<{ what: string; packs: string[] }> = [];
  const before = process.env.STRATA_NO_NATIVE_ZSTD;
  try {
    for (const [what, noNative, compressInline] of [
      ['native', false, false],
      ['worker isolates', true, false],
      ['inline', true, true],
    ] as const) {
      if (noNative) process.env.STRATA_NO_NATIVE_ZSTD = '1';
      else delete process.env.STRATA_NO_NATIVE_ZSTD;
      const threads = startZstdThreads(1);
      assert.ok(threads, 'compression threads start here');
      assert.equal(threads instanceof NativeZstdThreads, !noNative, `${what}: the expected kind of thread`);
      assert.equal(threads instanceof ZstdOffload, noNative);
      await threads.close();
      const root = tempDir(`zstd-store-${what.replace(' ', '-')}`);
      const writer = await Store.open(new LocalBackend(root), { compressInline });
      for (const b of blobs) assert.equal((await writer.put('data', b)).digest, sha(b));
      await writer.flush();
      await writer.close();
      const reader = await Store.open(new LocalBackend(root));
      for (const b of blobs) assert.equal(sha(await reader.get(sha(b))), sha(b), `${what}: a blob reads back`);
      assert.deepEqual((await reader.verify()).errors, []);
      await reader.close();
      const packs: string[] = [];
      const walk = (d: string) => {
        for (const e of readdirSync(d, { withFileTypes: true })) {
          if (e.isDirectory()) walk(path.join(d, e.name));
          else if (!e.name.startsWith('.')) packs.push(sha(readFileSync(path.join(d, e.name))));
        }
      };
      walk(path.join(root, 'packs'));
      runs.push({ what, packs: packs.sort() });
    }
  } finally {
    if (before === undefined) delete process.env.STRATA_NO_NATIVE_ZSTD;
    else process.env.STRATA_NO_NATIVE_ZSTD = before;
  }
  assert.ok(runs[0].packs.length > 0);
  assert.deepEqual(runs[1].packs, runs[0].packs, 'worker isolates: the same pack files');
  assert.deepEqual(runs[2].packs, runs[0].packs, 'inline: the same pack files');
});
