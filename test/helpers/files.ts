import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { scratch } from './tools.js';

/** sha256 of a file, streamed (outputs and images of hundreds of MiB). */
export function fileSha(p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(p)
      .on('data', (b) => h.update(b))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/**
 * Every entry below `root`, one sorted line each: path, mode, size, mtime (ns), then the
 * symlink's target or the file's sha256. `dirSizes: false` leaves directories' sizes out (a
 * tree written by another route may lay its directories out otherwise).
 */
export function treeManifest(root: string, opts: { dirSizes?: boolean } = {}): string {
  const dirSizes = opts.dirSizes ?? true;
  const lines: string[] = [];
  const visit = (dir: string, rel: string) => {
    for (const n of readdirSync(dir)) {
      const p = path.join(dir, n);
      const r = `${rel}/${n}`;
      const st = lstatSync(p, { bigint: true });
      const head = `${r} ${st.mode.toString(8)} ${st.isDirectory() && !dirSizes ? '-' : st.size} ${st.mtimeNs}`;
      if (st.isDirectory()) {
        lines.push(head);
        visit(p, r);
      } else if (st.isSymbolicLink()) lines.push(`${head} -> ${readlinkSync(p)}`);
      else lines.push(`${head} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    }
  };
  visit(root, '');
  return lines.sort().join('\n');
}

/** A fresh directory path on tmpfs when there is one (hundreds of thousands of small files), else a scratch one. */
export function outDir(name: string): string {
  try {
    readdirSync('/dev/shm');
    return path.join('/dev/shm', `${name}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`);
  } catch {
    return scratch(name);
  }
}
