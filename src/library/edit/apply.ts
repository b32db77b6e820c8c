import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { StrataError } from '../../util/errors.js';
import { type Address, openAddress } from '../address.js';
import { type CheckinResult, checkin } from '../checkin.js';
import { checkout } from '../checkout.js';
import type { Library } from '../library.js';
import type { Change, ChangeSet } from './changes.js';
import { checkFat, FAT_KINDS, type FatPlan, planFatChanges, runFatPlan } from './fat.js';
import { type Plan, planChanges } from './plan.js';

/**
 * Make a new version whose disk is the parent's disk with its file system changed in place.
 *
 * The writer is e2fsprogs' libext2fs, driven through `debugfs -w` with a generated command
 * file: it allocates near the old data, keeps htree directories, checksums, group
 * descriptors and superblock counts right, and needs no journal replay afterwards. It is
 * the library e2fsck and mke2fs are built on, so what it writes is what the ext tools
 * expect; writing our own allocator and htree/checksum code would duplicate it with less
 * testing behind it. Our own reader checks every operation first (see plan.ts), debugfs's
 * output is parsed line by line (it exits 0 on most failures), and `e2fsck -fn` checks
 * the result before anything is checked in.
 *
 * Route: the parent version is checked out as a sparse raw file in a temporary folder (only
 * its used bytes are written), debugfs changes the one file system in place (addressed by
 * byte offset inside the disk, so partitions and everything else stay as they are), and
 * the result is checked in with the parent as its parent: unchanged files dedup by content
 * and unchanged metadata windows by disk offset, so only the changed bytes are new chunks.
 * Any failure (ENOSPC included) leaves no new version.
 *
 * FAT12/16/32 go the same route with mtools as the writer and `fsck.fat -n` as the check
 * (./fat.ts).
 */

export interface ApplyOptions {
  /** Which file system of the disk (`--part N` / `--lv VG/LV`); default: the only one or the OS root. */
  address?: Address;
  /** The image the new version belongs to (default: the parent's image). */
  name?: string;
  /** The new version's message (default: the change set's message, else a summary of the changes). */
  message?: string;
  tags?: string[];
  createdBy?: string;
  /** Where the temporary disk goes (default: the OS's temporary folder). */
  workDir?: string;
  /**
   * Further parents of the new version after the edited one (provenance): a rebase names
   * A1, whose changes it carries.
   */
  alsoParents?: string[];
  /** Inspect the new version (default true). */
  inspect?: boolean;
  /** Run `e2fsck -fn` (FAT: `fsck.fat -n`) on the edited file system before checking it in (default true). */
  verify?: boolean;
  /** Seconds since the epoch stamped on new files that name no mtime (default now). */
  now?: number;
  onProgress?: (stage: 'checkout' | 'write' | 'verify' | 'checkin', done?: number, total?: number) => void;
}

export interface ApplyResult extends CheckinResult {
  /** NAME@N of the version the change was applied to. */
  parent: string;
  /** Operations applied, and debugfs commands they took. */
  changes: number;
  commands: number;
  /** Bytes of new file contents the change set wrote. */
  contentBytes: number;
  /** The file system written (ext2/ext3/ext4) and its volume. */
  fsKind: string;
  volume: string;
}

const ENOSPC = /Could not allocate (block|inode)|No free space|Inode bitmap|ext2fs_new_(block|inode)|No space left/i;

/** A short description of a change set: "put /etc/hostname; rm /tmp/x; +3 more". */
export function describeChanges(changes: Change[]): string {
  const first = changes.slice(0, 3).map((c) => `${c.op} ${c.path}`);
  if (changes.length > 3) first.push(`+${changes.length - 3} more`);
  return first.join('; ');
}

export async function applyChanges(
  lib: Library,
  ref: string,
  set: ChangeSet,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  if (!set || !Array.isArray(set.changes) || set.changes.length === 0) {
    throw new StrataError('USAGE', 'the change set holds no changes');
  }
  const v = await lib.catalog.resolve(ref);
  const parent = `${v.image}@${v.number}`;
  const work = await mkdtemp(path.join(opts.workDir ?? tmpdir(), 'strata-edit-'));
  try {
    const disk = path.join(work, 'disk.raw');
    opts.onProgress?.('checkout');
    await checkout(lib, parent, disk, { format: 'raw' });
    const opened = await openAddress(disk, opts.address ?? {});
    let plan: Plan | undefined;
    let fatPlan: FatPlan | undefined;
    let offset: number;
    let fsKind: string;
    let volume: string;
    let volumeSize: number;
    try {
      fsKind = opened.fs.kind;
      volume = opened.volume.id === '' ? '(whole disk)' : opened.volume.id;
      volumeSize = opened.volume.size;
      if (!/^ext[234]$/.test(fsKind) && !FAT_KINDS.test(fsKind)) {
        throw new StrataError(
          'UNSUPPORTED',
          `cannot write ${fsKind} yet (Strata writes ext2/ext3/ext4 and FAT12/16/32)`,
          {
            file: parent,
            structure: `volume ${volume}`,
          },
        );
      }
      if (opened.diskOffset === null) {
        throw new StrataError('UNSUPPORTED', 'cannot write a file system that is not one window of the disk', {
          file: parent,
          structure: `volume ${volume}`,
        });
      }
      offset = opened.diskOffset;
      if (opened.fs.warnings.some((w) => w.includes('needs_recovery'))) {
        throw new StrataError(
          'UNSUPPORTED',
          'the journal needs recovery (the file system was not cleanly unmounted); cannot write it in place',
          { file: parent, structure: `volume ${volume}` },
        );
      }
      const tempFile = (i: number, what: string) => path.join(work, `change-${i}-${what}`);
      if (FAT_KINDS.test(fsKind)) fatPlan = await planFatChanges(opened.fs, set.changes, { tempFile, now: opts.now });
      else plan = await planChanges(opened.fs, set.changes, { tempFile, now: opts.now });
    } finally {
      await opened.close();
    }
    if (fatPlan) {
      opts.onProgress?.('write');
      await runFatPlan(disk, offset, fatPlan, set.changes, parent);
      if (opts.verify !== false) {
        opts.onProgress?.('verify');
        await checkFat(await fatWindow(disk, offset, volumeSize, work), parent);
      }
    } else if (plan) {
      for (const f of plan.files) if (f.data) await writeFile(f.local, f.data);
      const commandFile = path.join(work, 'commands');
      await writeFile(commandFile, `${plan.commands.join('\n')}\n`);
      // libext2fs's unix I/O manager takes the byte offset of the file system inside the file
      const device = `${disk}?offset=${offset}`;
      opts.onProgress?.('write');
      await runDebugfs(device, commandFile, plan, set.changes, parent);
      if (opts.verify !== false) {
        opts.onProgress?.('verify');
        await runE2fsck(device, parent);
      }
    }
    opts.onProgress?.('checkin');
    const result = await checkin(lib, disk, {
      name: opts.name ?? v.image,
      parents: [parent, ...(opts.alsoParents ?? [])],
      message: opts.message ?? set.message ?? describeChanges(set.changes),
      exact: v.exact,
      sourceName: `edit of ${parent}`,
      tags: opts.tags,
      createdBy: opts.createdBy,
      inspect: opts.inspect,
    });
    return {
      ...result,
      parent,
      changes: set.changes.length,
      commands: fatPlan ? fatPlan.steps.length : (plan?.commands.length ?? 0),
      contentBytes: fatPlan ? fatPlan.contentBytes : (plan?.contentBytes ?? 0),
      fsKind,
      volume,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The FAT as a file of its own for fsck.fat (which takes no offset): the disk itself when it is the whole disk. */
async function fatWindow(disk: string, offset: number, size: number, work: string): Promise<string> {
  if (offset === 0 && (await stat(disk)).size === size) return disk;
  const out = path.join(work, 'fat.img');
  await pipeline(createReadStream(disk, { start: offset, end: offset + size - 1 }), createWriteStream(out));
  return out;
}

interface RunResult {
  code: number | null;
  output: string;
}

function run(cmd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => chunks.push(b));
    child.stderr.on('data', (b: Buffer) => chunks.push(b));
    child.on('error', (e) =>
      reject(
        new StrataError('UNSUPPORTED', `cannot run ${cmd}: ${e.message}`, {
          file: cmd,
        }),
      ),
    );
    child.on('close', (code) => resolve({ code, output: Buffer.concat(chunks).toString('utf8') }));
  });
}

/**
 * Run the command file through `debugfs -w` and check what it printed. stdout and stderr go
 * to one pipe, line-buffered (stdbuf), so each message follows the echo of the command that
 * printed it. Only the echoes, blank lines and "Allocated inode: N" are success.
 */
async function runDebugfs(device: string, commandFile: string, plan: Plan, changes: Change[], parent: string) {
  const r = await run('sh', [
    '-c',
    'command -v debugfs >/dev/null || { echo "debugfs: not installed (e2fsprogs)"; exit 127; }; exec stdbuf -oL -eL debugfs -w -f "$1" "$2" 2>&1',
    'sh',
    commandFile,
    device,
  ]);
  const lines = r.output.split('\n');
  let next = 0;
  const problems: Array<{ cmd: number; line: string }> = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (next < plan.commands.length && line === `debugfs: ${plan.commands[next]}`) {
      next++;
      continue;
    }
    if (line.trim() === '' || /^Allocated inode: \d+$/.test(line)) continue;
    if (next === 0 && /^debugfs \d+\.\d+/.test(line)) continue; // the banner
    problems.push({ cmd: next - 1, line });
  }
  if (problems.length === 0 && next === plan.commands.length && r.code === 0) return;
  const p = problems[0];
  const where = p && p.cmd >= 0 ? p.cmd : -1;
  const change = where >= 0 ? plan.changeOf[where] : -1;
  const what =
    change >= 0 ? `change ${change + 1} (${changes[change].op} ${changes[change].path})` : 'opening the file system';
  const said = p ? p.line.trim() : `debugfs stopped after ${next} of ${plan.commands.length} commands (exit ${r.code})`;
  if (p && ENOSPC.test(p.line)) {
    throw new StrataError(
      'LIMIT',
      `${what}: no space left on the file system (ENOSPC): debugfs: ${said}; no version made`,
      {
        file: parent,
      },
    );
  }
  throw new StrataError('IO', `${what}: writing the file system failed: debugfs: ${said}; no version made`, {
    file: parent,
  });
}

/** `e2fsck -fn`: the edited file system must be clean before it becomes a version. */
async function runE2fsck(device: string, parent: string) {
  const r = await run('sh', [
    '-c',
    'command -v e2fsck >/dev/null || { echo "e2fsck: not installed (e2fsprogs)"; exit 127; }; exec e2fsck -fn "$1" 2>&1',
    'sh',
    device,
  ]);
  if (r.code === 0) return;
  const detail = r.output
    .split('\n')
    .filter((l) => l.trim() !== '' && !/^(Pass \d|e2fsck \d)/.test(l))
    .slice(0, 6)
    .join(' | ');
  throw new StrataError(
    'CORRUPT',
    `e2fsck -fn found the edited file system unclean (exit ${r.code}): ${detail}; no version made`,
    {
      file: parent,
    },
  );
}
