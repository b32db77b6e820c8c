/**
 * XFS images made by mkfs.xfs and filled by the kernel: the shared awkward tree (the ext
 * tests' tree, copied in with cp -a over a read-write loop mount), populateMounted's
 * 20,000-entry directory and preallocated files, and XFS-specific extras: many xattrs (leaf
 * and node attribute forks), remote xattr values, reflinked copies, a fragmented file.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { bytesOf, extTree, populateMounted, withRwMount } from './ext-tree.js';
import { fixture, run } from './tools.js';

export interface XfsImageSpec {
  /** Cache key part. */
  name: string;
  /** mkfs.xfs options. */
  args: string[];
  size: number;
  /** Make reflinked copies with cp --reflink=always (needs -m reflink=1). */
  reflink?: boolean;
}

const XFS_VERSION = 'v1';

/** Attribute counts of the xattr extras: enough to push a fork to leaf, and to node form. */
export const XATTR_LEAF = 40;
export const XATTR_NODE = 1500;

/** XFS-specific content, written through the kernel on a read-write mount. */
export function populateXfs(mnt: string, reflink: boolean): void {
  const xa = path.join(mnt, 'xfs-xattrs');
  mkdirSync(xa);
  const leaf = path.join(xa, 'leaf');
  writeFileSync(leaf, 'leaf-form attributes\n');
  for (let i = 0; i < XATTR_LEAF; i++) {
    execFileSync('setfattr', ['-n', `user.leaf-${i}`, '-v', `value-${i}-${'v'.repeat(i)}`, leaf]);
  }
  const node = path.join(xa, 'node');
  writeFileSync(node, 'node-form attributes\n');
  // one setfattr per call is slow: a batch through --restore
  let dump = `# file: ${node}\n`;
  for (let i = 0; i < XATTR_NODE; i++)
    dump += `user.node-attribute-${String(i).padStart(5, '0')}="${'n'.repeat(i % 50)}"\n`;
  dump += `trusted.node-trusted="t"\nsecurity.node-security="s"\n\n`;
  execFileSync('setfattr', ['--restore=-'], { input: dump });
  const remote = path.join(xa, 'remote');
  writeFileSync(remote, 'remote attribute values\n');
  execFileSync('setfattr', [
    '-n',
    'user.remote-big',
    '-v',
    `0x${bytesOf('remote-xattr', 9000).toString('hex')}`,
    remote,
  ]);
  execFileSync('setfattr', ['-n', 'user.remote-small', '-v', 'small', remote]);
  execFileSync('setfattr', [
    '-n',
    'trusted.remote-mid',
    '-v',
    `0x${bytesOf('remote-mid', 3000).toString('hex')}`,
    remote,
  ]);
  // a second fragmented file written backwards (many extents, a BMBT of several leaves)
  const frag = path.join(mnt, 'fragmented-backwards');
  writeFileSync(frag, '');
  const fd = openSync(frag, 'r+');
  for (let i = 3000; i >= 0; i--) writeSync(fd, bytesOf(`fb-${i}`, 100), 0, 100, i * 16384);
  closeSync(fd);
  if (reflink) {
    const rl = path.join(mnt, 'reflink');
    mkdirSync(rl);
    const src = path.join(rl, 'original');
    writeFileSync(src, bytesOf('reflink-original', 3 << 20));
    execFileSync('cp', ['--reflink=always', src, path.join(rl, 'clone')]);
    execFileSync('cp', ['--reflink=always', src, path.join(rl, 'clone-changed')]);
    // overwrite the middle of one clone: its first and last parts stay shared
    const f = openSync(path.join(rl, 'clone-changed'), 'r+');
    writeSync(f, bytesOf('changed', 1 << 20), 0, 1 << 20, 1 << 20);
    closeSync(f);
  }
}

/** An XFS image: mkfs.xfs, then the tree and the extras through a kernel mount; cached. */
export async function xfsImage(spec: XfsImageSpec): Promise<string> {
  const tree = await extTree();
  return fixture(`xfs-${spec.name}-${XFS_VERSION}.img`, async (out) => {
    writeFileSync(out, '');
    truncateSync(out, spec.size);
    await run('mkfs.xfs', ['-q', '-f', ...spec.args, out]);
    await withRwMount(out, async (mnt) => {
      await run('cp', ['-a', `${tree}/.`, mnt]);
      populateMounted(mnt);
      populateXfs(mnt, !!spec.reflink);
    });
  });
}
