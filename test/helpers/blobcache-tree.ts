import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { bytesOf } from './ext-tree.js';
import { fixture, run } from './tools.js';

const MiB = 1 << 20;

/**
 * The tree of the live-cache tests of issue 27 (test/serve/blob-cache-http.test.ts,
 * test/deploy/source-cache.test.ts): /big, 3.5 MiB (four 1 MiB file chunks), and /d, six
 * small files; cached once for both.
 */
export async function blobCacheTree(): Promise<string> {
  return fixture('blobcache-tree-v1', async (out) => {
    const put = (p: string, n: number) => {
      const f = path.join(out, p);
      mkdirSync(path.dirname(f), { recursive: true });
      writeFileSync(f, bytesOf(`blobcache:${p}`, n));
    };
    put('big', 3.5 * MiB);
    for (let i = 0; i < 6; i++) put(`d/f${i}`, 3000 + i * 5000);
  });
}

/** The tree on a 32 MiB ext4 (mkfs.ext4 -d). */
export async function blobCacheImage(): Promise<string> {
  const t = await blobCacheTree();
  return fixture('blobcache-ext4-v1.img', async (out) => {
    await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'root_owner=0:0', '-d', t, out, '32M']);
  });
}
