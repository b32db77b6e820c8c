import type { Command } from 'commander';
import {
  type Address,
  extractTree,
  type FileSystem,
  type Inode,
  imagePath,
  isoTime,
  longLine,
  lsRecordWith,
  modeString,
  type OpenedAddress,
  openAddress,
  openDisk,
  StrataError,
  statRecord,
  type WalkItem,
  walkBatches,
} from '../../library/index.js';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { humanSize, printJson, writeOut } from '../output.js';

/**
 * File-system verbs: parts, fsinfo, ls, cat, stat, extract. All take the same address:
 * `IMAGE [--part N | --lv VG/LV]` (see src/library/address.ts).
 */
export function registerFsCommands(program: Command): void {
  addOpenOptions(
    program
      .command('parts')
      .description('partitions and logical volumes of an image, with what each holds')
      .argument('<image>', 'image file or http(s) URL')
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const disk = await openDisk(image, openOptionsFrom(o));
    try {
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
      .argument('<image>', 'image file or http(s) URL')
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
      .argument('<image>', 'image file or http(s) URL')
      .argument('[path]', 'path inside the file system', '/')
      .option('-l, --long', 'long format (mode, links, owner, size, mtime)')
      .option('-R, --recursive', 'list subdirectories depth-first')
      .option('-d, --directory', 'list a directory itself, not its contents')
      .option('--json', 'one JSON object per line: path, type, size, mode, uid, gid, nlink, ino, mtime, target'),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const fs = at.fs;
      const p = imagePath(path);
      const top = await fs.lookup(p);
      const out = new LineWriter();
      const long = Boolean(o.long);
      const recursive = Boolean(o.recursive);
      // A batch at a time: symlink targets read together, everything else synchronous.
      const emit = async (items: WalkItem[], single: boolean) => {
        const targets =
          o.json || long
            ? await Promise.all(items.map((it) => (it.inode.type === 'symlink' ? fs.readlink(it.inode) : undefined)))
            : undefined;
        for (let i = 0; i < items.length; i++) {
          const item = items[i];
          const display = single || recursive ? item.path : item.name;
          if (targets) {
            const r = lsRecordWith(item.path, item.inode, targets[i]);
            out.line(o.json ? JSON.stringify(r) : longLine(r, display));
          } else out.line(display);
        }
        if (out.full()) await out.flush();
      };
      if (top.type !== 'dir' || o.directory) {
        await emit([{ path: p, name: p, inode: top, depth: 0 }], true);
      } else {
        for await (const batch of walkBatches(fs, p, top, { recursive, onWarning: warn })) await emit(batch, false);
      }
      await out.flush();
    });
  });

  addressed(
    program
      .command('cat')
      .description('write a file from the image to stdout')
      .argument('<image>', 'image file or http(s) URL')
      .argument('<path>', 'path inside the file system'),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const p = imagePath(path);
      const ino = await at.fs.lookup(p);
      if (ino.type !== 'file') throw new StrataError('USAGE', `${p} is a ${ino.type}, not a regular file`);
      await catFile(at.fs, ino);
    });
  });

  addressed(
    program
      .command('stat')
      .description('inode fields, times, xattr names and extents (with offsets in the volume and the disk)')
      .argument('<image>', 'image file or http(s) URL')
      .argument('<path>', 'path inside the file system')
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, path: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const p = imagePath(path);
      const ino = await at.fs.lookup(p);
      const r = await statRecord(at.fs, p, ino, at.diskOffset);
      if (o.json) return printJson(r);
      const lines = [
        `  File: ${p}${r.target !== undefined ? ` -> ${r.target}` : ''}`,
        `  Type: ${r.type}   Size: ${r.size}   Allocated: ${r.allocatedBytes ?? '?'}   Links: ${r.nlink}`,
        `Access: (${r.mode.toString(8).padStart(4, '0')}/${modeString(r.type, r.mode)})  Uid: ${r.uid}  Gid: ${r.gid}   Inode: ${r.ino}${r.flags !== undefined ? `   Flags: 0x${r.flags.toString(16)}` : ''}`,
      ];
      if (r.rdev) lines.push(`Device: ${r.rdev.major},${r.rdev.minor}`);
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
      .argument('<image>', 'image file or http(s) URL')
      .argument('<path>', 'path inside the file system ("/" for everything)')
      .argument('<dest>', 'destination directory (created when missing)')
      .option('-j, --jobs <n>', 'files written at the same time', '8')
      .option('--json', 'print the summary as JSON'),
  ).action(async (image: string, path: string, dest: string, o: Record<string, unknown>) => {
    await withFs(image, o, async (at) => {
      const jobs = Number(o.jobs);
      if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new StrataError('USAGE', `bad --jobs ${o.jobs}`);
      const r = await extractTree(at.fs, path, dest, { concurrency: jobs, onWarning: warn });
      const { warnings, ...counts } = r;
      if (o.json) return printJson({ ...counts, warnings });
      process.stderr.write(
        `extracted ${r.files} files, ${r.dirs} directories, ${r.symlinks} symlinks, ${r.hardlinks} hard links, ${r.fifos} fifos, ${r.devices} devices (${r.bytes} bytes); ${r.skipped} skipped\n`,
      );
    });
  });
}

function addressed(cmd: Command): Command {
  return addOpenOptions(
    cmd
      .option('--part <n>', 'partition id as `strata parts` shows it (1-4 primary, 5+ logical, GPT index)')
      .option('--lv <vg/lv>', 'LVM logical volume'),
  );
}

async function withFs(image: string, o: Record<string, unknown>, fn: (at: OpenedAddress) => Promise<void>) {
  const addr: Address = {};
  if (typeof o.part === 'string') addr.part = o.part;
  if (typeof o.lv === 'string') addr.lv = o.lv;
  const at = await openAddress(image, addr, openOptionsFrom(o));
  try {
    warnAll(at.warnings);
    await fn(at);
  } finally {
    await at.close();
  }
}

function warn(m: string): void {
  process.stderr.write(`strata: warning: ${m}\n`);
}

function warnAll(ws: readonly string[]): void {
  for (const w of ws) warn(w);
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
