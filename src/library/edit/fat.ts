import { spawn } from 'node:child_process';
import { type Stats, statSync } from 'node:fs';
import { copyFile, utimes, writeFile } from 'node:fs/promises';
import type { FileSystem } from '../../fs/types.js';
import { StrataError } from '../../util/errors.js';
import type { Change } from './changes.js';
import { normalisePath, TreeModel } from './plan.js';

/**
 * Writing a FAT12/16/32 file system in place. The writer is mtools (mcopy, mmd, mdel,
 * mdeltree, mrd, mmove), the FAT tool set the test fixtures are made with: it allocates
 * clusters from the FAT, writes long-name entries with their checksums and keeps both FAT
 * copies in step, addressed by byte offset inside the disk (`-i DISK@@OFFSET`), so the rest
 * of the disk stays as it is. As for ext (debugfs), our own reader checks every operation
 * first against a model of the tree; each tool's exit status and output are checked, and
 * `fsck.fat -n` checks the result before it becomes a version.
 *
 * FAT has no owners, permission bits, symbolic or hard links and no extended attributes:
 * changes that need them are refused with a clear error before anything is written. A new
 * file's modification time is the change's mtime (or now), kept by `mcopy -m` from its
 * staged copy; FAT keeps it to 2 seconds.
 */

export interface FatStep {
  argv: string[];
  /** Index of the change this step belongs to. */
  change: number;
}

export interface FatPlan {
  steps: FatStep[];
  /** Files to stage before the steps run: bytes or a copy of a local file, with their mtime. */
  files: Array<{ local: string; data?: Uint8Array; from?: string; mtime: number }>;
  contentBytes: number;
}

/** The FAT reader's kind (FAT12/16/32; exFAT is not FAT to mtools). */
export const FAT_KINDS = /^vfat$/;

export async function planFatChanges(
  fs: FileSystem,
  changes: Change[],
  opts: { tempFile: (i: number, what: string) => string; now?: number },
): Promise<FatPlan> {
  const model = new TreeModel(fs);
  const plan: FatPlan = { steps: [], files: [], contentBytes: 0 };
  const now = Math.floor(opts.now ?? Date.now() / 1000);
  let current = 0;
  const step = (...argv: string[]) => plan.steps.push({ argv, change: current });
  const at = (p: string) => `::${p}`;
  const fail = (c: Change, code: 'NOT_FOUND' | 'USAGE' | 'UNSUPPORTED', why: string): never => {
    throw new StrataError(code, `change ${current + 1} (${c.op} ${c.path}): ${why}`);
  };
  const parentOf = (p: string) => p.slice(0, p.lastIndexOf('/')) || '/';
  const needParent = async (c: Change, p: string) => {
    const parent = await model.get(parentOf(p));
    if (!parent) fail(c, 'NOT_FOUND', `no directory ${parentOf(p)}`);
    if (parent?.type !== 'dir') fail(c, 'USAGE', `${parentOf(p)} is not a directory`);
  };
  const noOwners = (c: Change & { mode?: number; uid?: number; gid?: number }) => {
    if (c.mode !== undefined || c.uid !== undefined || c.gid !== undefined)
      fail(c, 'UNSUPPORTED', 'FAT keeps no owners or permission bits');
  };
  const makeDir = async (c: Change, p: string, parents: boolean) => {
    if (parents && p !== '/' && parentOf(p) !== '/') await makeDir(c, parentOf(p), true);
    const old = await model.get(p);
    if (old) {
      if (old.type === 'dir' && parents) return;
      fail(c, 'USAGE', `${p} exists`);
    }
    await needParent(c, p);
    step('mmd', at(p));
    model.set(p, { type: 'dir', nlink: 2 });
  };
  for (let i = 0; i < changes.length; i++) {
    current = i;
    const c = changes[i];
    const p = normalisePath(c.path);
    switch (c.op) {
      case 'put': {
        noOwners(c);
        if (p === '/') fail(c, 'USAGE', 'cannot replace the root directory');
        if (c.parents && parentOf(p) !== '/') await makeDir(c, parentOf(p), true);
        await needParent(c, p);
        const old = await model.get(p);
        if (old?.type === 'dir') fail(c, 'USAGE', 'is a directory');
        const local = opts.tempFile(i, 'content');
        const mtime = c.mtime ?? now;
        if (c.content?.kind === 'file') {
          let st: Stats | undefined;
          try {
            st = statSync(c.content.path);
          } catch {
            fail(c, 'NOT_FOUND', `no local file ${c.content.path}`);
          }
          if (!st?.isFile()) fail(c, 'USAGE', `local ${c.content.path} is not a regular file`);
          plan.contentBytes += st?.size ?? 0;
          plan.files.push({ local, from: c.content.path, mtime });
        } else if (c.content?.kind === 'bytes' && c.content.data instanceof Uint8Array) {
          plan.contentBytes += c.content.data.length;
          plan.files.push({ local, data: c.content.data, mtime });
        } else fail(c, 'USAGE', 'content is neither a file nor bytes');
        if (old) step('mdel', at(p));
        step('mcopy', '-m', local, at(p));
        model.set(p, { type: 'file', nlink: 1 });
        break;
      }
      case 'mkdir':
        noOwners(c);
        if (c.mtime !== undefined || c.atime !== undefined)
          fail(c, 'UNSUPPORTED', 'mtools stamps a new FAT directory with the current time');
        await makeDir(c, p, c.parents === true);
        break;
      case 'rm': {
        if (p === '/') fail(c, 'USAGE', 'cannot remove the root directory');
        const old = await model.get(p);
        if (!old) fail(c, 'NOT_FOUND', 'no such file or directory');
        if (old?.type === 'dir') {
          if (c.recursive) step('mdeltree', at(p));
          else if ((await model.children(p)).length > 0) fail(c, 'USAGE', 'directory not empty (use recursive)');
          else step('mrd', at(p));
        } else step('mdel', at(p));
        model.remove(p);
        break;
      }
      case 'rename': {
        const to = normalisePath(c.to, 'to');
        const old = await model.get(p);
        if (!old) fail(c, 'NOT_FOUND', 'no such file or directory');
        if (await model.get(to)) fail(c, 'USAGE', `${to} exists`);
        if (to.startsWith(`${p}/`)) fail(c, 'USAGE', 'cannot move a directory into itself');
        await needParent(c, to);
        step('mmove', at(p), at(to));
        model.remove(p);
        model.moveUnder(p, to);
        model.set(to, old as NonNullable<typeof old>);
        break;
      }
      case 'symlink':
        fail(c, 'UNSUPPORTED', 'FAT has no symbolic links');
        break;
      case 'link':
        fail(c, 'UNSUPPORTED', 'FAT has no hard links');
        break;
      case 'xattr':
        fail(c, 'UNSUPPORTED', 'FAT has no extended attributes');
        break;
      case 'setattr':
        fail(c, 'UNSUPPORTED', 'mtools cannot change owners, permissions or times of an existing FAT entry');
        break;
      default:
        fail(c as Change, 'USAGE', `unknown operation ${(c as { op: string }).op}`);
    }
  }
  return plan;
}

/** Stage the plan's files (with their mtimes), then run its steps on the FAT at `offset` inside `disk`. */
export async function runFatPlan(
  disk: string,
  offset: number,
  plan: FatPlan,
  changes: Change[],
  parent: string,
): Promise<void> {
  for (const f of plan.files) {
    if (f.data) await writeFile(f.local, f.data);
    else if (f.from) {
      try {
        await copyFile(f.from, f.local);
      } catch (e) {
        throw new StrataError('NOT_FOUND', `no local file ${f.from}: ${(e as Error).message}`);
      }
    }
    await utimes(f.local, f.mtime, f.mtime);
  }
  const image = `${disk}@@${offset}`;
  for (const s of plan.steps) {
    const [cmd, ...rest] = s.argv;
    // -i names the image; -o (mcopy) and -D o answer a name clash without asking
    const args = cmd === 'mcopy' ? ['-o', '-i', image, ...rest] : ['-i', image, ...rest];
    const r = await runTool(cmd, args, { MTOOLS_SKIP_CHECK: '1', TZ: 'UTC' });
    if (r.code === 0) continue;
    const c = changes[s.change];
    const said = r.output.trim().split('\n').slice(0, 3).join(' | ');
    const full = /Disk full|No free clusters|no space/i.test(r.output);
    throw new StrataError(
      full ? 'LIMIT' : 'IO',
      `change ${s.change + 1} (${c.op} ${c.path}): ${full ? 'no space left on the file system (ENOSPC): ' : 'writing the file system failed: '}${cmd}: ${said}; no version made`,
      { file: parent },
    );
  }
}

/** `fsck.fat -n` on the FAT (a file holding only it): it must be clean before it becomes a version. */
export async function checkFat(file: string, parent: string): Promise<void> {
  const r = await runTool('fsck.fat', ['-n', file]);
  if (r.code === 0) return;
  const detail = r.output
    .split('\n')
    .filter((l) => l.trim() !== '' && !/^fsck\.fat \d/.test(l))
    .slice(0, 6)
    .join(' | ');
  throw new StrataError(
    'CORRUPT',
    `fsck.fat -n found the edited file system unclean (exit ${r.code}): ${detail}; no version made`,
    { file: parent },
  );
}

function runTool(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => chunks.push(b));
    child.stderr.on('data', (b: Buffer) => chunks.push(b));
    child.on('error', (e) =>
      reject(new StrataError('UNSUPPORTED', `cannot run ${cmd} (mtools / dosfstools): ${e.message}`, { file: cmd })),
    );
    child.on('close', (code) => resolve({ code, output: Buffer.concat(chunks).toString('utf8') }));
  });
}
