import type { Command } from 'commander';
import {
  classifyTarget,
  entryRecord,
  extractTree,
  type FileEntry,
  type FileSystem,
  fileContent,
  type Inode,
  imagePath,
  isoTime,
  type LsRecord,
  listStoredStreamed,
  longLine,
  lookupPath,
  lsRecordWith,
  modeString,
  type OpenedAddress,
  openAddress,
  openDisk,
  openStoredFiles,
  REF_PREFIX,
  StrataError,
  statRecord,
  storedFileStreamed,
  type TargetOptions,
  versionPassOptions,
  type WalkItem,
  walkBatches,
  walkNameLines,
} from '../../library/index.js';
import {
  addAddressOptions,
  addDeviceOption,
  addLibraryOption,
  addOpenOptions,
  addressFrom,
  noteTarget,
  openOptionsFrom,
  TARGET_HELP,
  targetOptionsFrom,
} from '../common.js';
import { humanSize, printJson, warn, warnAll, writeOut } from '../output.js';
import { pipeBody, remoteOf } from '../remote.js';

/** A remote version's name: ref:NAME is NAME there too. */
const unref = (x: string) => (x.startsWith(REF_PREFIX) ? x.slice(REF_PREFIX.length) : x);

/**
 * File-system verbs: parts, fsinfo, ls, cat, stat, extract. All take the same address:
 * `TARGET [--part N | --lv VG/LV] [--library DIR]` (see src/library/address.ts, target.ts).
 * `ls` and `cat` of a library version read its file manifest (no disk block is read).
 */
export function registerFsCommands(program: Command): void {
  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        program
          .command('parts')
          .description('partitions and logical volumes of an image, with what each holds')
          .argument('<target>', TARGET_HELP)
          .option('--json', 'machine-readable output'),
      ),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const disk = await openDisk(image, openOptionsFrom(o), targetOptionsFrom(o));
    try {
      noteTarget(disk.target);
      warnAll(disk.warnings);
      const rows = disk.volumes.map((v) => ({
        id: v.id,
        scheme: v.scheme,
        type: v.type,
        typeCode: v.typeCode,
        start: v.start,
        size: v.size,
        name: v.name,
        uuid: v.uuid,
        content: v.content,
        flags: v.flags ?? [],
        parent: v.parent,
      }));
      if (o.json) return printJson({ scheme: disk.scheme, volumes: rows, warnings: disk.warnings });
      const out = [`scheme: ${disk.scheme}`];
      out.push(
        `${'ID'.padEnd(12)} ${'START'.padStart(14)} ${'SIZE'.padStart(14)} ${'CONTENT'.padEnd(12)} ${'TYPE'.padEnd(24)} NAME / FLAGS`,
      );
      for (const r of rows) {
        const extra = [r.name, r.flags.length ? `[${r.flags.join(',')}]` : '', r.parent ? `in ${r.parent}` : '']
          .filter(Boolean)
          .join(' ');
        out.push(
          `${(r.id === '' ? '-' : r.id).padEnd(12)} ${String(r.start).padStart(14)} ${String(r.size).padStart(14)} ${(r.content ?? '-').padEnd(12)} ${r.type.padEnd(24)} ${extra}`,
        );
      }
      process.stdout.write(`${out.join('\n')}\n`);
    } finally {
      await disk.close();
    }
  });

  addressed(
    program
      .command('fsinfo')
      .description('file-system facts: kind, label, UUID, block size, counts, features, free space')
      .argument('<target>', TARGET_HELP)
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const info = await at.fs.info();
      const warnings = [...at.warnings, ...at.fs.warnings.filter((w) => !at.warnings.includes(w))];
      if (o.json) return printJson({ volume: at.volume.id, ...info, warnings });
      const lines = [
        `volume:        ${at.volume.id === '' ? '(whole disk)' : at.volume.id}`,
        `kind:          ${info.kind}`,
      ];
      if (info.label !== undefined) lines.push(`label:         ${info.label}`);
      if (info.uuid !== undefined) lines.push(`uuid:          ${info.uuid}`);
      lines.push(
        `block size:    ${info.blockSize}`,
        `total:         ${humanSize(info.totalBytes)}`,
        `free:          ${humanSize(info.freeBytes)}`,
      );
      if (info.totalInodes !== undefined)
        lines.push(`inodes:        ${info.totalInodes} (${info.freeInodes ?? '?'} free)`);
      if (info.features?.length) lines.push(`features:      ${info.features.join(' ')}`);
      for (const [k, v] of Object.entries(info.extra ?? {}))
        if (v !== undefined && v !== null && v !== '') lines.push(`${`${k}:`.padEnd(15)}${fmtValue(v)}`);
      process.stdout.write(`${lines.join('\n')}\n`);
    });
  });

  addressed(
    program
      .command('ls')
      .description('list a directory (or one entry) inside the image')
      .argument('<target>', TARGET_HELP)
      .argument('[path]', 'path inside the file system', '/')
      .option(
        '--remote <url>',
        'TARGET is a version of a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)',
      )
      .option('-l, --long', 'long format (mode, links, owner, size, mtime)')
      .option('-R, --recursive', 'list subdirectories depth-first')
      .option('-d, --directory', 'list a directory itself, not its contents')
      .option('--json', 'one JSON object per line: path, type, size, mode, uid, gid, nlink, ino, mtime, target'),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    const out = new LineWriter();
    const long = Boolean(o.long);
    const recursive = Boolean(o.recursive);
    const line = (r: LsRecord, display: string) =>
      out.line(o.json ? JSON.stringify(r) : long ? longLine(r, display) : display);
    const remote = await remoteOf(o, [image]);
    if (remote) {
      noSubvolForStored(o);
      // a version of a library service: its file manifest's entries, printed as a stored version's
      const p = imagePath(path);
      const entries = await remote.ls(unref(image), p, { recursive, part: (o.part ?? o.lv) as string | undefined });
      const single = entries.length === 1 && entries[0].path === p && entries[0].type !== 'dir';
      for (const e of entries) {
        const r = entryRecord(e as unknown as FileEntry);
        line(r, single || recursive ? r.path : r.path.slice(r.path.lastIndexOf('/') + 1));
        await out.maybeFlush();
      }
      await out.flush();
      return;
    }
    const target = classifyTarget(image, targetOptionsFrom(o));
    if (target.kind === 'ref') {
      noSubvolForStored(o);
      // straight from the version's file manifest: the same records, order and format
      const stored = await openStoredFiles(target, (o.part ?? o.lv) as string | undefined);
      try {
        const { records, single } = await listStoredStreamed(stored, path, {
          recursive,
          directory: Boolean(o.directory),
        });
        for await (const r of records) {
          line(r, single || recursive ? r.path : r.path.slice(r.path.lastIndexOf('/') + 1));
          await out.maybeFlush();
        }
        await out.flush();
      } finally {
        await stored.close();
      }
      return;
    }
    await withFs(image, o, async (at) => {
      const fs = at.fs;
      const p = imagePath(path);
      const top = await fs.lookup(p);
      // A batch at a time: symlink targets read together, everything else synchronous.
      const emit = async (items: WalkItem[], single: boolean) => {
        const targets =
          o.json || long
            ? await Promise.all(items.map((it) => (it.inode.type === 'symlink' ? fs.readlink(it.inode) : undefined)))
            : undefined;
        for (let i = 0; i < items.length; i++) {
          const item = items[i];
          const display = single || recursive ? item.path : item.name;
          if (targets) line(lsRecordWith(item.path, item.inode, targets[i]), display);
          else out.line(display);
        }
        await out.maybeFlush();
      };
      if (top.type !== 'dir' || o.directory) {
        await emit([{ path: p, name: p, inode: top, depth: 0 }], true);
      } else if (!(o.json || long)) {
        // names only: lines made as bytes by the walk, written as they come
        await out.flush();
        for await (const chunk of walkNameLines(fs, p, top, { recursive, onWarning: warn })) await writeOut(chunk);
      } else {
        for await (const batch of walkBatches(fs, p, top, { recursive, onWarning: warn })) await emit(batch, false);
      }
      await out.flush();
    });
  });

  addressed(
    program
      .command('cat')
      .description('write a file from the image to stdout (a final symlink is followed inside the image)')
      .argument('<target>', TARGET_HELP)
      .argument('<path>', 'path inside the file system')
      .option(
        '--remote <url>',
        'TARGET is a version of a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)',
      ),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    const follow = o.follow !== false;
    const remote = await remoteOf(o, [image]);
    if (remote) {
      noSubvolForStored(o);
      const res = await remote.cat(unref(image), imagePath(path), { part: (o.part ?? o.lv) as string | undefined });
      return pipeBody(res, writeOut);
    }
    const target = classifyTarget(image, targetOptionsFrom(o));
    if (target.kind === 'ref') {
      noSubvolForStored(o);
      const stored = await openStoredFiles(target, (o.part ?? o.lv) as string | undefined);
      try {
        const e = await storedFileStreamed(stored, path, follow);
        for await (const b of fileContent(stored.lib, stored.files, e)) await writeOut(b);
      } finally {
        await stored.close();
      }
      return;
    }
    await withFs(image, o, async (at) => {
      const p = imagePath(path);
      const ino = await lookupPath(at.fs, p, follow);
      if (ino.type !== 'file') throw new StrataError('USAGE', `${p} is a ${ino.type}, not a regular file`);
      await catFile(at.fs, ino);
    });
  });

  addressed(
    program
      .command('stat')
      .description('inode fields, times, xattr names and extents (with offsets in the volume and the disk)')
      .argument('<target>', TARGET_HELP)
      .argument('<path>', 'path inside the file system')
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const p = imagePath(path);
      const own = await at.fs.lookup(p);
      const followed = own.type === 'symlink' && o.follow !== false;
      const ino = followed ? await lookupPath(at.fs, p, true) : own;
      const r = await statRecord(at.fs, p, ino, at.diskOffset);
      if (o.json) return printJson(followed ? { ...r, link: await at.fs.readlink(own) } : r);
      const lines = [
        `  File: ${p}${r.target !== undefined ? ` -> ${r.target}` : ''}${followed ? ` (symlink to ${await at.fs.readlink(own)}, followed)` : ''}`,
        `  Type: ${r.type}   Size: ${r.size}   Allocated: ${r.allocatedBytes ?? '?'}   Links: ${r.nlink}`,
        `Access: (${r.mode.toString(8).padStart(4, '0')}/${modeString(r.type, r.mode)})  Uid: ${r.uid}  Gid: ${r.gid}   Inode: ${r.ino}${r.flags !== undefined ? `   Flags: 0x${r.flags.toString(16)}` : ''}`,
      ];
      if (r.rdev) lines.push(`Device: ${r.rdev.major},${r.rdev.minor}`);
      if (r.ownerSid) lines.push(` Owner: ${r.ownerSid}   Group: ${r.groupSid ?? '-'}`);
      lines.push(`Access: ${r.atime ?? '-'}`, `Modify: ${r.mtime ?? '-'}`, `Change: ${r.ctime ?? '-'}`);
      lines.push(` Birth: ${r.crtime ?? '-'}`);
      if (r.xattrs.length) lines.push(`Xattrs: ${r.xattrs.join(', ')}`);
      if (r.extents.length) {
        lines.push(
          'Extents:',
          `  ${'file offset'.padStart(14)} ${'length'.padStart(12)} ${'volume offset'.padStart(16)} ${'disk offset'.padStart(16)} flags`,
        );
        for (const e of r.extents) {
          lines.push(
            `  ${String(e.fileOffset).padStart(14)} ${String(e.length).padStart(12)} ${String(e.volumeOffset).padStart(16)} ${String(e.diskOffset ?? '-').padStart(16)} ${e.flags.join(',')}`,
          );
        }
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });
  });

  addressed(
    program
      .command('extract')
      .description('copy a file or a whole tree out of the image into DEST (never writes outside DEST)')
      .argument('<target>', TARGET_HELP)
      .argument('<path>', 'path inside the file system ("/" for everything)')
      .argument('<dest>', 'destination directory (created when missing)')
      .option('-j, --jobs <n>', 'files written at the same time', '8')
      .option('--force', 'replace what DEST already holds (files, symlinks; never follows them)')
      .option('--no-clobber', 'keep what DEST already holds, without a warning')
      .option('--json', 'print the summary as JSON'),
  ).action(async (image: string, path: string, dest: string, o: Record<string, unknown>) => {
    if (o.force && o.clobber === false) throw new StrataError('USAGE', 'use --force or --no-clobber, not both');
    await withFs(
      image,
      o,
      async (at) => {
        const jobs = Number(o.jobs);
        if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new StrataError('USAGE', `bad --jobs ${o.jobs}`);
        const r = await extractTree(at.fs, path, dest, {
          concurrency: jobs,
          sourceCached: at.target.kind === 'ref',
          onWarning: warn,
          follow: o.follow !== false,
          existing: o.force ? 'replace' : o.clobber === false ? 'skip' : 'keep',
        });
        const { warnings, ...counts } = r;
        if (o.json) return printJson({ ...counts, warnings });
        if (r.existing > 0 && !(o.clobber === false)) {
          warn(
            `${r.existing} entries were already in ${dest} and were kept as they are (--force replaces them, --no-clobber keeps them without this warning)`,
          );
        }
        process.stderr.write(
          `extracted ${r.files} files, ${r.dirs} directories, ${r.symlinks} symlinks, ${r.hardlinks} hard links, ${r.fifos} fifos, ${r.devices} devices (${r.bytes} bytes); ${r.skipped} skipped${r.existing ? `, ${r.existing} already there` : ''}${r.replaced ? `, ${r.replaced} replaced` : ''}\n`,
        );
        // a version is read once through: small file-system caches, the store's frames beside them (issue 22)
      },
      versionPassOptions(),
    );
  });
}

/**
 * A stored version's ls and cat read its file manifest, which holds the tree the check-in
 * walked (a btrfs volume's default subvolume, with the subvolumes below it as directories).
 */
function noSubvolForStored(o: Record<string, unknown>): void {
  if (Array.isArray(o.device) && o.device.length > 0)
    throw new StrataError(
      'USAGE',
      "--device applies to images: a library version's file list is read from its manifest",
    );
  if (o.subvol !== undefined)
    throw new StrataError(
      'USAGE',
      "--subvol applies to images: a library version's file list is the default subvolume's tree as checked in (its subvolumes are directories there)",
    );
}

/** The volume address, --library and the open flags; with -L/-P for the verbs that take one path. */
function addressed(cmd: Command): Command {
  const name = cmd.name();
  if (name === 'cat' || name === 'stat' || name === 'extract') {
    cmd
      .option('-L, --follow', 'follow a final symlink, inside the image (the default)')
      .option('-P, --no-follow', 'act on a final symlink itself');
  }
  return addAddressOptions(cmd);
}

async function withFs(
  image: string,
  o: Record<string, unknown>,
  fn: (at: OpenedAddress) => Promise<void>,
  more: TargetOptions = {},
) {
  const at = await openAddress(image, addressFrom(o), openOptionsFrom(o), { ...targetOptionsFrom(o), ...more });
  try {
    noteTarget(at.target);
    warnAll(at.warnings);
    await fn(at);
  } finally {
    await at.close();
  }
}

function fmtValue(v: unknown): string {
  if (v instanceof Date) return v.toISOString();
  if (v && typeof v === 'object') {
    const t = v as { sec?: unknown; nsec?: unknown };
    if (typeof t.sec === 'number' && typeof t.nsec === 'number') return isoTime({ sec: t.sec, nsec: t.nsec }) ?? '-';
    return JSON.stringify(v);
  }
  return String(v);
}

/** Batches text lines into large stdout writes. */
class LineWriter {
  private parts: string[] = [];
  private bytes = 0;
  line(s: string): void {
    this.parts.push(s, '\n');
    this.bytes += s.length + 1;
  }
  full(): boolean {
    return this.bytes >= 1 << 16;
  }
  async maybeFlush(): Promise<void> {
    if (this.full()) await this.flush();
  }
  async flush(): Promise<void> {
    if (this.parts.length === 0) return;
    const s = this.parts.join('');
    this.parts = [];
    this.bytes = 0;
    await writeOut(s);
  }
}

/** Stream a file to stdout in 1 MiB chunks with a few reads ahead, in order. */
async function catFile(fs: FileSystem, ino: Inode): Promise<void> {
  const CHUNK = 1 << 20;
  const AHEAD = 4;
  const size = ino.size;
  const pending: Promise<Uint8Array>[] = [];
  let next = 0;
  const fill = () => {
    while (pending.length < AHEAD && next < size) {
      const n = Math.min(CHUNK, size - next);
      const p = fs.read(ino, next, n);
      p.catch(() => {}); // surfaced when awaited below
      pending.push(p);
      next += n;
    }
  };
  fill();
  while (pending.length > 0) {
    const b = await (pending.shift() as Promise<Uint8Array>);
    fill();
    await writeOut(b);
  }
}
