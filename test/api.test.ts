import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { baseTree, derivedTree, extImageOf, tempDir } from './library/images.js';

/**
 * The package as a user gets it: every entry of package.json's "exports" resolves by the
 * package's name (Node's self-reference), has its declaration file, and exports what it
 * should; README's library example is examples/library.ts, and run on two images it prints
 * what the trees the images were made from (mkfs.ext4 -d) say it should.
 */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  name: string;
  exports: Record<string, string | { types: string; default: string }>;
};

const entries = Object.entries(pkg.exports).filter(([k]) => k !== './package.json') as Array<
  [string, { types: string; default: string }]
>;

test('every export of package.json resolves by the package name, with types', async () => {
  const layers = ['io', 'formats', 'volumes', 'fs', 'blockmap', 'inspect', 'store', 'catalog', 'library', 'serve'];
  assert.deepEqual(entries.map(([k]) => k).sort(), ['.', ...layers.map((l) => `./${l}`)].sort());
  for (const [sub, target] of entries) {
    assert.ok(existsSync(path.join(root, target.types)), `${sub}: ${target.types} exists`);
    assert.ok(existsSync(path.join(root, target.default)), `${sub}: ${target.default} exists`);
    const spec = sub === '.' ? pkg.name : `${pkg.name}/${sub.slice(2)}`;
    const mod = (await import(spec)) as Record<string, unknown>;
    assert.ok(Object.keys(mod).length > 0, `${spec} exports something`);
  }
  const top = (await import(pkg.name)) as Record<string, unknown>;
  const library = (await import(`${pkg.name}/library`)) as Record<string, unknown>;
  assert.deepEqual(Object.keys(top).sort(), Object.keys(library).sort(), 'the root is the library surface');
  for (const name of [
    'openImage',
    'openAddress',
    'listDirectory',
    'Library',
    'checkin',
    'diffVersions',
    'StrataError',
  ]) {
    assert.equal(typeof top[name], 'function', `${pkg.name} exports ${name}`);
  }
  const fs = (await import(`${pkg.name}/fs`)) as Record<string, unknown>;
  const volumes = (await import(`${pkg.name}/volumes`)) as Record<string, unknown>;
  const formats = (await import(`${pkg.name}/formats`)) as Record<string, unknown>;
  assert.equal(typeof fs.openFileSystem, 'function');
  assert.deepEqual(
    (volumes.VOLUME_DRIVERS as Array<{ kind: string }>).map((d) => d.kind),
    ['gpt', 'whole', 'mbr', 'lvm'],
  );
  assert.deepEqual((formats.FORMAT_DRIVERS as Array<{ name: string }>).map((d) => d.name).sort(), [
    'qcow2',
    'raw',
    'vdi',
    'vhd',
    'vhdx',
    'vmdk',
  ]);
});

const exampleSource = () => readFileSync(path.join(root, 'examples', 'library.ts'), 'utf8');

test("README's library example is examples/library.ts, importing the package by its name", () => {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.split('\n## Use it as a library\n')[1];
  assert.ok(section, 'README has a "Use it as a library" section');
  const block = /```ts\n([\s\S]*?)```/.exec(section.split('\n## ')[0]);
  assert.ok(block, 'the section has a ts code block');
  assert.equal(block[1], exampleSource());
  const specs = [...exampleSource().matchAll(/from '([^']+)'/g)].map((m) => m[1]).filter((s) => !s.startsWith('node:'));
  assert.deepEqual(specs, [pkg.name], 'the example imports the package by its name only');
});

/** Regular files and directories of a tree, by path from its root ('/a/b'), with sha256 of files. */
function treeOf(dir: string, rel = ''): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(path.join(dir, rel))) {
    const p = `${rel}/${name}`;
    const st = lstatSync(path.join(dir, p));
    if (st.isDirectory()) {
      out.set(p, 'dir');
      for (const [k, v] of treeOf(dir, p)) out.set(k, v);
    } else if (st.isFile())
      out.set(
        p,
        createHash('sha256')
          .update(readFileSync(path.join(dir, p)))
          .digest('hex'),
      );
    else out.set(p, 'other');
  }
  return out;
}

test('the library example, run on two ext4 images, lists, reads and diffs as the source trees say', async () => {
  const [oldTree, newTree] = [await baseTree(), await derivedTree()];
  const oldImage = await extImageOf('ext4', oldTree, 'base');
  const newImage = await extImageOf('ext4', newTree, 'dedup-derived', 64);
  const lib = path.join(tempDir('api-example'), 'library');
  const dir = '/dir2/sub2';
  const file = '/dir2/sub2/file4.txt';
  const r = spawnSync(
    process.execPath,
    [path.join(root, 'dist', 'examples', 'library.js'), oldImage, newImage, lib, dir, file],
    { encoding: 'utf8', cwd: root },
  );
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');

  const listed = lines.filter((l) => /^[a-z]+\t/.test(l)).map((l) => l.split('\t')[1]);
  assert.deepEqual(listed.sort(), readdirSync(path.join(oldTree, dir)).sort());
  const body = readFileSync(path.join(oldTree, file));
  const digest = createHash('sha256').update(body).digest('hex');
  assert.ok(lines.includes(`${file}: ${body.length} bytes, sha256 ${digest}`), r.stdout);
  assert.ok(
    lines.some((l) => /^checked in example@1 and example@2: \d+ new bytes/.test(l)),
    r.stdout,
  );

  // The oracle: the two trees mkfs.ext4 -d copied into the images (lost+found is mkfs's own).
  const [a, b] = [treeOf(oldTree), treeOf(newTree)];
  const expected = [
    ...[...b.keys()].filter((p) => !a.has(p)).map((p) => `+ ${p}`),
    ...[...a.keys()].filter((p) => !b.has(p)).map((p) => `- ${p}`),
    ...[...b.keys()].filter((p) => a.has(p) && a.get(p) !== 'dir' && a.get(p) !== b.get(p)).map((p) => `M ${p}`),
  ];
  assert.ok(expected.length >= 4, `the trees differ (${expected.length} paths)`);
  const printed = lines.filter((l) => /^[-+M] \//.test(l));
  assert.deepEqual(printed.sort(), expected.sort());
});
