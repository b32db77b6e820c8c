import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, openSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { openLibraryExport } from '../../src/serve/nbd/library-export.js';
import { jsonLines, strata } from '../helpers/cli.js';
import { chainDir, qemuImgMap, startServer } from '../helpers/nbd.js';
import { ROOT, run } from '../helpers/tools.js';
import { baseTree, extImageOf, freeRanges, tempDir } from '../library/images.js';

/**
 * Library versions served over NBD (issue 7, library half), checked with real clients:
 * qemu-img compare/map, nbdinfo --map, nbdcopy, qemu-io through an overlay, qemu-img
 * check; the overlay then checked in with --parent and checked out again.
 */
let dir: string;
let libDir: string;
let lib: Library;
let chain: { child: string; manifest: string; usedBytes: number; virtualSize: number };

before(async () => {
  dir = tempDir('nbd-library');
  libDir = path.join(dir, 'lib');
  lib = await Library.open(libDir);
  const child = path.join(await chainDir(), 'child.qcow2');
  const r = await checkin(lib, child, { name: 'chain', exact: true, tags: ['boot'] });
  assert.equal(r.ref, 'chain@1');
  chain = { child, manifest: r.manifest, usedBytes: r.usedBytes, virtualSize: r.virtualSize };
});
after(async () => {
  await lib?.close();
});

const NBD_WRITES = [
  'write -P 0x11 100k 200k',
  'write -z 3M 128k',
  'write -P 0x44 63M 1M',
  'write -P 0x55 67108352 512',
];

function qemuIo(target: string, cmds: string[], format = 'raw'): Promise<string> {
  return run('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), target]);
}

/** qemu-img check on an overlay alone: its backing (strata-library:...) is not something qemu can open. */
function checkOverlayAlone(overlay: string): Promise<string> {
  const spec = { driver: 'qcow2', backing: null, file: { driver: 'file', filename: path.resolve(overlay) } };
  return run('qemu-img', ['check', `json:${JSON.stringify(spec)}`]);
}

/** Start `strata nbd ARGS --json` and hand back its exports and a stop function. */
async function strataNbd(args: string[]) {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/cli/strata.cjs'), 'nbd', ...args, '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = await new Promise<{ exports: Array<{ uri: string; name: string; readOnly: boolean }> }>(
    (resolve, reject) => {
      child.stdout.on('data', (c) => {
        out += c;
        try {
          resolve(JSON.parse(out));
        } catch {}
      });
      exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
    },
  );
  return {
    exports: listening.exports,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

describe('strata nbd REF: library versions', () => {
  test('NAME@1 and NAME:TAG of an --exact check-in of a qcow2 chain compare identical to the chain; holes where the store has nothing', async () => {
    const { server, errors, uri } = await startServer([
      await openLibraryExport(lib, 'chain@1'),
      await openLibraryExport(lib, 'chain:boot', { cacheSize: 1 << 20 }),
      await openLibraryExport(lib, chain.manifest.slice(0, 12), { name: 'by-digest', cacheSize: 0 }),
    ]);
    try {
      for (const name of ['chain@1', 'chain:boot', 'by-digest']) {
        assert.match(await run('qemu-img', ['compare', '-f', 'raw', uri(name), chain.child]), /identical/, name);
      }
      // nbdinfo --map (base:allocation): the hole bytes are exactly what the store does not hold
      const map = JSON.parse(await run('nbdinfo', ['--map', '--json', uri('chain@1')])) as Array<{
        offset: number;
        length: number;
        type: number;
        description: string;
      }>;
      const holes = map.filter((e) => e.description.includes('hole'));
      assert.ok(holes.length > 0, 'some holes');
      for (const h of holes) assert.equal(h.type, 3, 'hole,zero');
      const holeBytes = holes.reduce((a, e) => a + e.length, 0);
      assert.equal(holeBytes, chain.virtualSize - chain.usedBytes);
      // ... and every hole reads as zeros in the original, as qemu-io reads the chain: qemu-img map
      // alone is not the oracle, since a data cluster whose host bytes are a hole (qemu writes
      // the untouched part of a new cluster with write-zeroes) is data to it and zero to Strata.
      const verify = await run('qemu-io', [
        '-r',
        '-f',
        'qcow2',
        ...holes.flatMap((h) => ['-c', `read -P 0 ${h.offset} ${h.length}`]),
        chain.child,
      ]);
      assert.doesNotMatch(verify, /verification failed/i, 'every hole reads as zeros below');
      assert.equal(verify.match(/^read \d+\/\d+ bytes/gm)?.length, holes.length, verify.slice(0, 400));
      // qemu-img map over NBD sees the same runs nbdinfo does
      const viaQemu = await qemuImgMap(uri('chain:boot'), 'raw');
      assert.equal(
        viaQemu.filter((e) => e.zero && !e.data).reduce((a, e) => a + e.length, 0),
        holeBytes,
      );
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  });

  test('several concurrent readers, large requests straight from the store and 64 KiB ones through a small cache (qemu-img compare x3, nbdcopy x2)', async () => {
    const { server, errors, uri } = await startServer([
      await openLibraryExport(lib, 'chain@1', { name: 'c', cacheSize: 2 << 20 }),
    ]);
    try {
      const copies = [0, 1].map((i) => path.join(dir, `copy-${i}.raw`));
      const jobs = [
        ...[0, 1, 2].map(() => run('qemu-img', ['compare', '-f', 'raw', uri('c'), chain.child])),
        // 64 KiB requests over 2 connections each: below the direct-read size, so through the cache
        ...copies.map((c) => run('nbdcopy', ['--request-size=65536', '--connections=2', uri('c'), c])),
      ];
      for (const out of (await Promise.all(jobs)).slice(0, 3)) assert.match(out, /identical/);
      for (const c of copies) {
        assert.match(await run('qemu-img', ['compare', '-f', 'raw', c, chain.child]), /identical/);
      }
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  });

  test('a layout in parts (version 2, parts of 16 ranges) is served a part at a time, identical to the chain, with the same holes', async () => {
    const { PartedVersionSource } = await import('../../src/library/version-source.js');
    const r = await checkin(lib, chain.child, { name: 'parted', exact: true, layoutPartEntries: 16 });
    assert.equal(r.usedBytes, chain.usedBytes);
    const src = await lib.versionSource(r.manifest, 'parted@1');
    assert.ok(src instanceof PartedVersionSource, 'read a part at a time, not joined');
    assert.ok(src.head.parts.length > 4, `${src.head.parts.length} parts`);
    await src.close();
    const { server, errors, uri } = await startServer([
      await openLibraryExport(lib, 'parted@1', { cacheSize: 1 << 20 }),
      await openLibraryExport(lib, 'chain@1', { name: 'whole' }),
    ]);
    try {
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', uri('parted@1'), chain.child]), /identical/);
      const map = async (name: string) => JSON.parse(await run('nbdinfo', ['--map', '--json', uri(name)]));
      assert.deepEqual(await map('parted@1'), await map('whole'), 'block status as the version 1 layout says');
      const copy = path.join(dir, 'parted-copy.raw');
      await run('nbdcopy', ['--request-size=65536', uri('parted@1'), copy]);
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', copy, chain.child]), /identical/);
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  });

  test('default check-in of ext4: the export is the original with its free blocks (dumpe2fs) zeroed', async () => {
    const img = await extImageOf('ext4', await baseTree(), 'base');
    const r = await checkin(lib, img, { name: 'ext', tags: ['t'] });
    assert.ok(r.usedBytes < r.virtualSize);
    const expected = path.join(dir, 'ext-expected.raw');
    copyFileSync(img, expected);
    const fd = openSync(expected, 'r+');
    for (const [s, e] of await freeRanges(img)) writeSync(fd, Buffer.alloc(e - s), 0, e - s, s);
    closeSync(fd);
    const { server, errors, uri } = await startServer([await openLibraryExport(lib, 'ext:t')]);
    try {
      assert.match(await run('qemu-img', ['compare', '-F', 'raw', uri(), expected]), /identical/);
      // the original has garbage in its free space: comparing with it must fail
      await assert.rejects(run('qemu-img', ['compare', '-F', 'raw', uri(), img]));
      // nbdcopy skips the holes; e2fsck finds the copy clean
      const copy = path.join(dir, 'ext-copy.raw');
      await run('nbdcopy', [uri(), copy]);
      await run('e2fsck', ['-fn', copy]);
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
  });

  test('strata nbd REF --overlay: qemu-io writes, qemu-img check clean, checkin OVERLAY --parent makes NAME@2 = the writes applied by qemu-io', async () => {
    const overlay = path.join(dir, 'boot-overlay.qcow2');
    const srv = await strataNbd(['--library', libDir, '--port', '0', '--overlay', overlay, 'chain:boot']);
    try {
      assert.equal(srv.exports.length, 1);
      assert.equal(srv.exports[0].name, 'chain:boot');
      assert.equal(srv.exports[0].readOnly, false);
      await qemuIo(srv.exports[0].uri, [...NBD_WRITES, 'flush']);
    } finally {
      assert.equal(await srv.stop(), 0);
    }
    assert.match(await checkOverlayAlone(overlay), /No errors/);
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', '-U', overlay]));
    assert.equal(info['backing-filename'], `strata-library:${chain.manifest}`);
    assert.equal(info['backing-filename-format'], 'raw');

    // oracle: the chain as raw with the same writes applied by qemu-io
    const expected = path.join(dir, 'boot-expected.raw');
    await run('qemu-img', ['convert', '-O', 'raw', chain.child, expected]);
    await qemuIo(expected, NBD_WRITES);

    const ci = await strata([
      'checkin',
      '--library',
      libDir,
      '--name',
      'chain',
      '--parent',
      'chain:boot',
      overlay,
      '--json',
    ]);
    assert.equal(ci.code, 0, ci.stderr);
    assert.equal(JSON.parse(ci.stdout).ref, 'chain@2');
    const versions = await strata(['versions', '--library', libDir, 'chain', '--json']);
    assert.equal(versions.code, 0, versions.stderr);
    const v2 = jsonLines<{ number: number; parents: unknown }>(versions.stdout).find((v) => v.number === 2);
    assert.deepEqual(v2?.parents, [{ image: 'chain', number: 1 }]);
    // without --parent, under another name: the parent is the version the overlay was booted from
    const d = await strata(['checkin', '--library', libDir, '--name', 'derived', overlay, '--json']);
    assert.equal(d.code, 0, d.stderr);
    const dv = await strata(['versions', '--library', libDir, 'derived', '--json']);
    assert.deepEqual(jsonLines<{ parents: unknown }>(dv.stdout)[0].parents, [{ image: 'chain', number: 1 }]);
    assert.equal(JSON.parse(d.stdout).manifest, JSON.parse(ci.stdout).manifest, 'same bytes, same manifest');
    const out = path.join(dir, 'chain-2.raw');
    const co = await strata(['checkout', '--library', libDir, 'chain@2', out]);
    assert.equal(co.code, 0, co.stderr);
    assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, expected]), /identical/);
    // chain@1 is untouched
    const { server, uri } = await startServer([await openLibraryExport(lib, 'chain@1')]);
    try {
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', uri(), chain.child]), /identical/);
    } finally {
      await server.close();
    }
  });

  test('strata nbd FILE REF: an image file and a library version on one server, read-only', async () => {
    const srv = await strataNbd([
      '--library',
      libDir,
      '--port',
      '0',
      chain.child,
      'chain@1',
      '-x',
      'file',
      '-x',
      'lib',
    ]);
    try {
      assert.deepEqual(
        srv.exports.map((e) => [e.name, e.readOnly]),
        [
          ['file', true],
          ['lib', true],
        ],
      );
      for (const e of srv.exports) {
        assert.match(await run('qemu-img', ['compare', '-f', 'raw', e.uri, chain.child]), /identical/, e.name);
      }
      await assert.rejects(
        qemuIo(srv.exports[1].uri, ['write -P 1 0 4k']),
        /Permission denied/ /* the export says read-only */,
      );
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });

  test('an overlay is reopened only on the version it backs onto; a missing REF or library is a clear error', async () => {
    const overlay = path.join(dir, 'reopen-overlay.qcow2');
    const x = await openLibraryExport(lib, 'chain@1', { overlay });
    await x.close();
    const again = await openLibraryExport(lib, 'chain:boot', { overlay }); // same version: fine
    await again.close();
    // a version of the same size but another manifest: refused, naming the recorded backing
    await checkin(lib, path.join(await chainDir(), 'base.qcow2'), { name: 'chainbase' });
    await assert.rejects(
      openLibraryExport(lib, 'chainbase@1', { overlay }),
      new RegExp(`reopen-overlay.qcow2: backing file name.*backs onto 'strata-library:${chain.manifest}'`),
    );
    const bad = await strata(['nbd', '--library', libDir, '--port', '0', 'nosuch@3']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no such version: nosuch@3/);
    const none = await strata(['nbd', '--library', path.join(dir, 'no-lib'), '--port', '0', 'chain@1']);
    assert.notEqual(none.code, 0);
    assert.match(none.stderr, /chain@1: no such file, and no library at .*no-lib to look it up in as a version/);
  });

  test('checkin of an overlay whose backing version is not in the library fails naming the overlay', async () => {
    const other = path.join(dir, 'other-lib');
    const o2 = await Library.open(other);
    try {
      const raw = path.join(dir, 'foreign.raw');
      writeFileSync(raw, randomBytes(1 << 20)); // a disk no other test checks in
      const r = await checkin(o2, raw, { name: 'b' });
      const overlay = path.join(dir, 'foreign-overlay.qcow2');
      const x = await openLibraryExport(o2, r.ref, { overlay });
      await x.close();
      const ci = await strata(['checkin', '--library', libDir, '--name', 'foreign', overlay]);
      assert.notEqual(ci.code, 0);
      assert.match(ci.stderr, /not in the library/);
      assert.ok(ci.stderr.includes('foreign-overlay.qcow2'), ci.stderr);
    } finally {
      await o2.close();
    }
  });
});
