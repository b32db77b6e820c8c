import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { run } from '../helpers/tools.js';
import { tempDir } from './images.js';

/**
 * `ls` and `cat` of a library version stream its file manifest (issue 22): a tree of
 * ~9,000 entries (three manifest parts of 4,096) with names whose code-unit order differs
 * from their byte order (a surrogate pair and a private-use character), a directory
 * symlink and `..` on the way to a file. Checked against `fls -r -p` (The Sleuth Kit: every
 * path), the byte order of each directory's names, the host files, and the same command on
 * the image file.
 */
test('ls -R and cat of a stored version: every fls path, byte order, symlinks followed; equal to the image listing', async () => {
  const dir = tempDir('stored-listing');
  const tree = path.join(dir, 'tree');
  const names = ['plain', '\u{1F600}-emoji', '\uE000-private', 'zz', 'Ab'];
  for (let d = 0; d < 9; d++) {
    const sub = path.join(tree, `d${d}`);
    mkdirSync(sub, { recursive: true });
    for (let i = 0; i < 1000; i++) writeFileSync(path.join(sub, `f${i}`), d === 8 && i === 999 ? 'last\n' : '');
  }
  for (const n of names) {
    mkdirSync(path.join(tree, n, 'in'), { recursive: true });
    writeFileSync(path.join(tree, n, 'in', 'file.txt'), `content of ${n}\n`);
  }
  symlinkSync('d8', path.join(tree, 'to-d8'));
  symlinkSync('../\uE000-private/in/file.txt', path.join(tree, 'zz', 'link'));
  const img = path.join(dir, 'tree.img');
  await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-N', '12000', '-E', 'root_owner=0:0', '-d', tree, img, '64M']);
  const env = { STRATA_LIBRARY: path.join(dir, 'lib') };
  const ok = async (args: string[]) => {
    const r = await strata(args, { env });
    assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  await ok(['checkin', img, '--name', 't']);

  const stored = (await ok(['ls', '-R', 't@1', '/'])).stdout;
  assert.equal(stored, (await ok(['ls', '-R', img, '/'])).stdout);
  assert.equal(
    (await ok(['ls', '-R', '-l', '--json', 't@1', '/'])).stdout,
    (await ok(['ls', '-R', '-l', '--json', img, '/'])).stdout,
  );
  const paths = stored.trim().split('\n');
  const fls = (await run('fls', ['-r', '-p', img]))
    .trim()
    .split('\n')
    .map((l) => `/${l.slice(l.indexOf('\t') + 1)}`)
    .filter((p) => !p.includes('$OrphanFiles'));
  assert.deepEqual([...paths].sort(), [...fls].sort());
  assert.ok(paths.length > 9000);
  // pre-order, each directory's names in byte order
  const key = (p: string) => p.split('/').map((c) => Buffer.from(c));
  const byteOrder = (a: string, b: string) => {
    const x = key(a);
    const y = key(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const c = Buffer.compare(x[i], y[i]);
      if (c !== 0) return c;
    }
    return x.length - y.length;
  };
  assert.deepEqual(paths, [...paths].sort(byteOrder));
  assert.ok(paths.indexOf('/\uE000-private') < paths.indexOf('/\u{1F600}-emoji'), 'byte order, not code units');

  // one directory, one entry, through a symlink
  const d8 = (await ok(['ls', 't@1', '/zz/../d8'])).stdout.trim().split('\n');
  assert.equal(d8.length, 1000);
  assert.equal((await ok(['ls', 't@1', '/to-d8/'])).stdout, (await ok(['ls', img, '/to-d8/'])).stdout);
  assert.equal((await ok(['ls', 't@1', '/'])).stdout, (await ok(['ls', img, '/'])).stdout);
  assert.equal(
    (await ok(['ls', '-d', '--json', 't@1', '/d3'])).stdout,
    (await ok(['ls', '-d', '--json', img, '/d3'])).stdout,
  );
  for (const [p, host] of [
    ['/to-d8/f999', 'd8/f999'],
    ['/zz/link', '\uE000-private/in/file.txt'],
    ['/d0/../\u{1F600}-emoji/in/file.txt', '\u{1F600}-emoji/in/file.txt'],
  ]) {
    const got = (await ok(['cat', 't@1', p])).stdoutBytes;
    assert.ok(got.equals(readFileSync(path.join(tree, host))), `cat ${p}`);
  }
  const missing = await strata(['cat', 't@1', '/d8/f1000'], { env });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no such file/);
  const notDir = await strata(['cat', 't@1', '/d8/f1/x'], { env });
  assert.equal(notDir.code, 1);
  assert.match(notDir.stderr, /not a directory/);
});
