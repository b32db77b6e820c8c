import assert from 'node:assert/strict';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { openImage, resolveReference } from '../../src/formats/open.js';
import { StrataError } from '../../src/util/errors.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { scratch, sha256 } from '../helpers/tools.js';

test('a file with no known header opens as raw and reads back identically', async () => {
  const dir = scratch('raw');
  const f = path.join(dir, 'disk.img');
  writePatternDisk(f, 5 * 1024 * 1024 + 511, 11);
  const img = await openImage(f);
  assert.equal(img.format, 'raw');
  assert.equal(img.size, 5 * 1024 * 1024 + 511);
  assert.equal(sha256(await img.read(0, img.size)), sha256(readFileSync(f)));
  await img.close();
});

test('an empty file is refused with a clear error', async () => {
  const dir = scratch('raw-empty');
  const f = path.join(dir, 'empty.img');
  writeFileSync(f, '');
  await assert.rejects(
    openImage(f),
    (e: StrataError) => e instanceof StrataError && /empty file/.test(e.message) && e.message.includes(f),
  );
});

test('references are confined to the image folder, symlinks included', () => {
  const dir = scratch('confine');
  const img = path.join(dir, 'a.qcow2');
  writeFileSync(img, 'x');
  writeFileSync(path.join(dir, 'base.raw'), 'x');
  assert.equal(resolveReference(img, 'base.raw', {}, 'backing file'), path.join(dir, 'base.raw'));
  assert.throws(
    () => resolveReference(img, '/etc/passwd', {}, 'backing file'),
    (e: StrataError) => e.code === 'DENIED',
  );
  assert.throws(
    () => resolveReference(img, '../../x', {}, 'backing file'),
    (e: StrataError) => e.code === 'DENIED',
  );
  symlinkSync('/etc/hostname', path.join(dir, 'sneaky'));
  assert.throws(
    () => resolveReference(img, 'sneaky', {}, 'backing file'),
    (e: StrataError) => e.code === 'DENIED',
  );
  assert.equal(resolveReference(img, '/etc/passwd', { allowRoots: ['/etc'] }, 'backing file'), '/etc/passwd');
  assert.throws(
    () => resolveReference(img, 'nbd://host/x', {}, 'backing file'),
    (e: StrataError) => e.code === 'UNSUPPORTED',
  );
});
