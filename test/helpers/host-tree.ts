/**
 * The host's view of a directory tree (lstat, readlink, sha256, getfattr) and the diff two
 * such trees imply: the oracle for `strata diff` of images made from them by mkfs.ext4 -d.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { run } from './tools.js';

export interface HostRecord {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  target?: string;
  sha?: string;
  xattrs: string;
}

/** Every path below `root` as lstat and friends see it. */
export async function hostTree(root: string): Promise<Map<string, HostRecord>> {
  const xattrs = new Map<string, string[]>();
  const dump = await run('getfattr', ['-R', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root]).catch(
    () => '',
  );
  for (const block of dump.split('\n\n')) {
    const lines = block.trim().split('\n');
    if (!lines[0].startsWith('# file: ')) continue;
    xattrs.set(lines[0].slice(8), lines.slice(1).sort());
  }
  const out = new Map<string, HostRecord>();
  const visit = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const full = path.join(dir, name);
      const st = lstatSync(full, { bigint: true });
      const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
      const r: HostRecord = {
        type,
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: type === 'dir' ? 0 : Number(st.size),
        mtimeNs: st.mtimeNs,
        xattrs: JSON.stringify(xattrs.get(full) ?? []),
      };
      if (type === 'symlink') r.target = readlinkSync(full);
      if (type === 'file') r.sha = createHash('sha256').update(readFileSync(full)).digest('hex');
      out.set(`/${path.relative(root, full)}`, r);
      if (type === 'dir') visit(full);
    }
  };
  visit(root);
  return out;
}

export interface Expected {
  added: string[];
  removed: string[];
  changed: string[];
  metadata: string[];
}

export function expectedDiff(a: Map<string, HostRecord>, b: Map<string, HostRecord>): Expected {
  const e: Expected = { added: [], removed: [], changed: [], metadata: [] };
  for (const [p, rb] of b) {
    const ra = a.get(p);
    if (!ra) e.added.push(p);
    else if (ra.type !== rb.type || (rb.type === 'file' && ra.sha !== rb.sha)) e.changed.push(p);
    else {
      const f: string[] = [];
      if (ra.mode !== rb.mode) f.push('mode');
      if (ra.uid !== rb.uid) f.push('uid');
      if (ra.gid !== rb.gid) f.push('gid');
      // mkfs.ext4 -d stores whole seconds (debugfs shows the nanoseconds field 0), so compare seconds.
      if (ra.mtimeNs / 1_000_000_000n !== rb.mtimeNs / 1_000_000_000n) f.push('mtime');
      if (ra.xattrs !== rb.xattrs) f.push('xattrs');
      if (rb.type === 'symlink' && ra.target !== rb.target) f.push('target');
      if (f.length) e.metadata.push(`${p} [${f.join(',')}]`);
    }
  }
  for (const p of a.keys()) if (!b.has(p)) e.removed.push(p);
  for (const l of Object.values(e)) l.sort();
  return e;
}
