import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmdirSync } from 'node:fs';
import { test } from 'node:test';
import { FuseSession, openMountTree } from '../../src/serve/fuse/index.js';
import { Op } from '../../src/serve/fuse/protocol.js';
import { extImage } from '../helpers/ext-tree.js';
import { isMounted, mountPoint } from '../helpers/fuse-mount.js';
import { run } from '../helpers/tools.js';

/**
 * The requests a read-only mount costs, counted by an in-process server (FuseSession), and
 * the tree it serves meanwhile checked against the kernel's own loop mount of the image. The
 * kernel learns a directory listing's end only from an empty READDIR reply: the reader thread
 * answers that one straight from the listing's length in shared memory, so a walk costs the
 * server one request per directory, not two. Both ways of serving: a tree opened on the main
 * thread (requests read on the reader thread, answered on the main one: writable and library
 * mounts) and an image opened and served on the reader thread itself (read-only image mounts).
 * Concurrent walkers share the reader thread (and the main thread's replies).
 */

const MiB = 1 << 20;
/** test/serve/fuse.test.ts's ext4-4k (the same fixture key: the image is shared). */
const SPEC = {
  name: 'ext4-4k',
  mkfs: 'mkfs.ext4',
  args: ['-b', '4096', '-N', '30000'],
  size: 160 * MiB,
};

/** A shell pipeline run as a child (this thread serves the mount meanwhile): stdout, throwing on failure. */
function sh(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn('bash', ['-o', 'pipefail', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d) => {
      err += d;
    });
    p.on('error', reject);
    p.on('close', (code) =>
      code === 0 ? resolve(Buffer.concat(out).toString('utf8')) : reject(new Error(`${script}: ${code} ${err}`)),
    );
  });
}

const listing = (d: string) => sh(`cd '${d}' && find . -printf '%p %y %m %U %G %s %n %i %T@ %l\\n' | LC_ALL=C sort`);
const count = (s: FuseSession, ...ops: number[]) => ops.reduce((a, op) => a + (s.counts.get(op) ?? 0), 0);

/**
 * An in-process read-only mount of `img` for the time of `fn`: served on the reader thread
 * (the image opened there, as `strata mount IMAGE` does) or on this one (a tree opened here).
 */
async function withSession(
  img: string,
  onReader: boolean,
  fn: (s: FuseSession, mnt: string) => Promise<void>,
): Promise<void> {
  const mnt = mountPoint('req');
  const s = new FuseSession(onReader ? { image: img } : (await openMountTree(img)).tree, mnt);
  try {
    await s.mount();
    await fn(s, mnt);
  } finally {
    await s.unmount();
    assert.ok(!isMounted(mnt), 'unmounted');
    rmdirSync(mnt);
  }
}

for (const onReader of [true, false]) {
  const where = onReader ? 'served on the reader thread' : 'answered on the main thread';
  test(`${where}: a walk costs one request per directory; the listing ends are answered from the shared table`, async () => {
    const img = await extImage(SPEC);
    const kmnt = mountPoint('kernel');
    await run('mount', ['-o', 'ro,loop,noload', img, kmnt]);
    try {
      const want = await listing(kmnt);
      const dirs = Number((await sh(`find '${kmnt}' -type d | wc -l`)).trim());
      assert.ok(dirs > 10, `the tree has directories (${dirs})`);

      await withSession(img, onReader, async (s, mnt) => {
        assert.equal(await listing(mnt), want, 'find -printf of every entry');
        // every directory's end was answered by the reader thread, none reached the main thread
        assert.equal(s.readerAnswered, dirs, 'one empty READDIR answered by the reader thread per directory');
        const main = count(s, Op.READDIR, Op.READDIRPLUS);
        assert.ok(main >= dirs, `each directory listed by the main thread (${main} for ${dirs})`);
        // the big directory (20,000 names) takes several replies; every other directory one
        assert.ok(main < dirs + 100, `no second request per directory (${main} for ${dirs})`);

        // a second walk: the kernel keeps the listings cached, and a listing asked again still
        // has its end answered by the reader thread. Counted in directories, not replies: the
        // kernel may drop a listing under memory pressure, and the big directory alone is 37
        // replies (dropped, it made 38 of 73 replies asked again with every other listing kept,
        // beside a 2,000,000-file mount on the same machine). Without the kept listings every
        // directory is listed again, each ending with one end the reader thread answers.
        const answered = s.readerAnswered;
        assert.equal(await listing(mnt), want, 'the second walk');
        const again = count(s, Op.READDIR, Op.READDIRPLUS) - main;
        const relisted = s.readerAnswered - answered;
        assert.ok(
          relisted < dirs / 2,
          `listings kept by the kernel (${relisted} of ${dirs} directories listed again, ${again} replies)`,
        );
        assert.ok(relisted <= again, 'at most one end per listing asked again');
      });

      await withSession(img, onReader, async (s, mnt) => {
        // concurrent walkers and readers on a fresh mount: replies written by both threads at once
        const hash = (d: string) =>
          sh(`cd '${d}' && sha256sum files/size-1500000 files/size-200000 sparse/fragmented prealloc`);
        const wantHash = await hash(kmnt);
        const got = await Promise.all([listing(mnt), hash(mnt), listing(mnt), hash(mnt), listing(mnt), listing(mnt)]);
        for (const [i, g] of got.entries()) assert.equal(g, i % 2 === 1 && i < 4 ? wantHash : want, `reader ${i}`);
        assert.ok(s.readerAnswered >= dirs, `the reader thread answered listing ends (${s.readerAnswered})`);
        assert.ok(count(s, Op.READ) > 0, 'the files were read through the mount (big replies: one writev)');
      });
    } finally {
      await run('umount', [kmnt]).catch(() => run('umount', ['-l', kmnt]));
      rmdirSync(kmnt);
    }
  });
}
