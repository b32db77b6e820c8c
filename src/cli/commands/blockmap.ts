import { createReadStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  type BlockMap,
  type BlockMapWriter,
  type FileRow,
  type KindSummary,
  type MapFile,
  type MapRecords,
  type Owner,
  StrataError,
  type StreamedMap,
} from '../../library/index.js';
import {
  addDeviceOption,
  addLibraryOption,
  addOpenOptions,
  noteTarget,
  openOptionsFrom,
  TARGET_HELP,
  targetOptionsFrom,
} from '../common.js';
import { humanSize, printJson, printJsonLines, printLines, warnAll, writeOut } from '../output.js';

/**
 * Introspection verbs: `whatis` (who owns a disk range), `blockmap` (the whole map, or
 * bytes per kind), `trace resolve` (a block trace as file-level accesses). Each builds the
 * map of the image, or loads one saved with `blockmap --save` when given `--map FILE`.
 */
export function registerBlockmapCommands(program: Command): void {
  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        program
          .command('whatis')
          .description(
            'every owner of a disk byte range: partition table, fs structure, directory, file (inode, path, offset), free',
          )
          .argument('<target>', TARGET_HELP)
          .argument('<range>', 'OFFSET[+LENGTH] in bytes of the virtual disk (decimal or 0x hex; LENGTH defaults to 1)')
          .option('--map <file>', 'use a map saved with `strata blockmap --save` instead of building it')
          .option(
            '--json',
            'one JSON object per owner and line: {start, length, kind, volume, fs, inode, path, fileOffset, detail}',
          ),
      ),
    ),
  ).action(async (image: string, range: string, o: Record<string, unknown>) => {
    const [offset, length] = parseRange(range);
    const owners =
      typeof o.map === 'string'
        ? await withMapFile(o.map, (m) => m.whatis(offset, length))
        : await streamWhatis(image, offset, length, o);
    if (o.json) return printJsonLines(owners);
    await writeOut(`${owners.map(ownerLine).join('\n')}\n`);
  });

  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        program
          .command('blockmap')
          .description('the block map of a whole image: who owns every byte of the virtual disk')
          .argument('<target>', TARGET_HELP)
          .option(
            '--json',
            'one JSON object per record and line: {start, length, kind, volume, fs, inode, path, fileOffset, detail}',
          )
          .option('--summary', 'bytes and records per kind')
          .option('--save <file>', 'also save the map in its compact binary form (for --map)')
          .option('--map <file>', 'load a saved map instead of building it'),
      ),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    if (typeof o.map !== 'string') return streamMap(image, o);
    if (typeof o.save === 'string') {
      // a saved map saved again: loaded whole, as it always was
      const map = await obtainMap(image, o);
      const { saveBlockMap } = await import('../../library/index.js');
      await writeFile(o.save, saveBlockMap(map));
      warnAll(map.warnings);
      if (o.summary) return printSummary(map.diskSize, map.count, map.summary(), Boolean(o.json));
      return printLines(map.records(), o.json ? (r) => JSON.stringify(r) : ownerLine);
    }
    // read from its file a page at a time, not loaded whole (issue 22: a map of millions of records)
    await withMapFile(o.map, async (map) => {
      warnAll(map.warnings);
      if (o.summary) return printSummary(map.diskSize, map.count, map.summary(), Boolean(o.json));
      await printLines(map.records(), o.json ? (r) => JSON.stringify(r) : ownerLine);
    });
  });

  const trace = program.command('trace').description('block-level access traces');
  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        trace
          .command('resolve')
          .description('turn a block trace (JSON lines or CSV offset,length[,time,op]) into file-level accesses')
          .argument('<target>', TARGET_HELP)
          .argument('<trace>', 'trace file ("-" for stdin)')
          .option('--map <file>', 'use a map saved with `strata blockmap --save` instead of building it')
          .option('--json', 'one JSON object per access ({offset, length, time, op, owners}), then {summary}')
          .option('--summary', 'only the summary'),
      ),
    ),
  ).action(async (image: string, tracePath: string, o: Record<string, unknown>) => {
    const { MapFile, mapFileOfTarget } = await import('../../library/index.js');
    // the map read from its file on demand: the saved one, or one built into a scratch file (issue 22)
    const map =
      typeof o.map === 'string'
        ? MapFile.open(o.map)
        : await mapFileOfTarget(image, openOptionsFrom(o), { ...targetOptionsFrom(o), onTarget: noteTarget });
    try {
      await resolveTrace(map, tracePath, o);
    } finally {
      map.close();
    }
  });
}

/** `trace resolve` against a map: each access (unless --summary), then the summary, written as they come. */
async function resolveTrace(map: MapRecords, tracePath: string, o: Record<string, unknown>): Promise<void> {
  const { readTraceBatches, TraceResolver } = await import('../../library/index.js');
  const resolver = new TraceResolver(map);
  const input = tracePath === '-' ? process.stdin : createReadStream(tracePath);
  const name = tracePath === '-' ? 'stdin' : tracePath;
  let buf = '';
  for await (const batch of readTraceBatches(input, name)) {
    if (o.summary) {
      resolver.countBatch(batch);
      continue;
    }
    for (let i = 0; i < batch.count; i++) {
      const a = batch.access(i);
      const r = resolver.resolve(a);
      if (o.json) buf += `${JSON.stringify(r)}\n`;
      else {
        const head = `${a.time !== undefined ? `${a.time} ` : ''}${a.op ? `${a.op} ` : ''}${a.offset}+${a.length}`;
        buf += `${head}\n${r.owners.map((w) => `  ${ownerLine(w)}`).join('\n')}\n`;
      }
    }
    if (buf.length > 1 << 16) {
      await write(buf);
      buf = '';
    }
  }
  await write(buf);
  buf = '';
  const s = resolver.totals();
  // the files stream out sorted, one line (or JSON element) each: the text JSON.stringify or
  // the lines joined would give for the whole summary, without holding it
  let row: (f: FileRow) => string;
  let sep = '';
  if (o.json) {
    const whole = JSON.stringify({ summary: { ...s, byFile: [] } });
    buf = whole.slice(0, -3); // up to and including '"byFile":['
    row = (f) => {
      const line = `${sep}${JSON.stringify(f)}`;
      sep = ',';
      return line;
    };
  } else {
    const lines = [
      `accesses: ${s.accesses}  bytes: ${s.bytes}${s.outside ? `  outside the disk: ${s.outside}` : ''}`,
      `by class: ${Object.entries(s.byClass)
        .map(([k, v]) => `${k} ${v.bytes} bytes`)
        .join(', ')}`,
      'by kind:',
      ...s.byKind.map((k) => `  ${k.kind.padEnd(16)} ${String(k.accesses).padStart(9)} accesses  ${k.bytes} bytes`),
      'by file:',
    ];
    buf = `${lines.join('\n')}\n`;
    row = (f) =>
      `  ${String(f.accesses).padStart(9)} ${String(f.bytes).padStart(12)}  ${f.volume ? `[${f.volume}] ` : ''}${f.path}\n`;
  }
  for (const f of resolver.fileRows()) {
    buf += row(f);
    if (buf.length > 1 << 16) {
      await write(buf);
      buf = '';
    }
  }
  buf += o.json ? ']}}\n' : '';
  await write(buf);
}

/**
 * `blockmap [--summary] [--json] [--save FILE]` of an image, the map streamed record by
 * record (issue 22: memory bounded by --memory, not by the tree; the same output, and the
 * same saved file, as the map built whole).
 */
async function streamMap(image: string, o: Record<string, unknown>): Promise<void> {
  const { BlockMapWriter } = await import('../../library/index.js');
  const save = typeof o.save === 'string' ? new BlockMapWriter(o.save) : undefined;
  try {
    await streamMapTo(image, o, save);
  } finally {
    save?.dispose();
  }
}

async function streamMapTo(image: string, o: Record<string, unknown>, save?: BlockMapWriter): Promise<void> {
  const { streamBlockMapOfTarget, ownerOf, KINDS, classOf } = await import('../../library/index.js');
  const line = o.json ? (r: Owner) => JSON.stringify(r) : ownerLine;
  const bytes = new Float64Array(KINDS.length);
  const recs = new Float64Array(KINDS.length);
  let count = 0;
  let buf = '';
  let m: StreamedMap | undefined;
  const summary = Boolean(o.summary);
  // the warnings shown before the listing, kept for the saved map's header
  const early: string[] = [];
  const done = await streamBlockMapOfTarget(
    image,
    openOptionsFrom(o),
    { ...targetOptionsFrom(o), onTarget: noteTarget },
    (x) => {
      m = x;
      if (summary) return;
      const w = x.warnings.splice(0);
      early.push(...w);
      warnAll(w);
    },
    (s, e, k, v, ino, nm, off) => {
      count++;
      save?.add(s, k, v, ino, nm, off);
      if (summary) {
        bytes[k] += e - s;
        recs[k]++;
        return;
      }
      const w = m as StreamedMap;
      buf += `${line(ownerOf(w.volumes, w.name, s, e, k, v, ino, nm, off))}\n`;
    },
    async () => {
      if (buf.length > 0) {
        await write(buf);
        buf = '';
      }
    },
    save && ((x) => save.finish(x, [...early, ...x.warnings])),
  );
  await write(buf);
  warnAll(done.warnings);
  if (!summary) return;
  const rows: KindSummary[] = [];
  for (let k = 0; k < KINDS.length; k++) {
    if (recs[k] > 0) rows.push({ kind: KINDS[k], class: classOf(KINDS[k]), bytes: bytes[k], records: recs[k] });
  }
  printSummary(done.diskSize, count, rows, Boolean(o.json));
}

/**
 * `whatis` of an image: the map streamed (as `blockmap` streams it, memory bounded by the
 * budget) and the records over [offset, offset + length) kept, clipped to it: what
 * BlockMap.whatis answers from the map built whole.
 */
async function streamWhatis(
  image: string,
  offset: number,
  length: number,
  o: Record<string, unknown>,
): Promise<Owner[]> {
  const { streamBlockMapOfTarget, ownerOf } = await import('../../library/index.js');
  const out: Owner[] = [];
  let m: StreamedMap | undefined;
  let to = 0;
  await streamBlockMapOfTarget(
    image,
    openOptionsFrom(o),
    { ...targetOptionsFrom(o), onTarget: noteTarget },
    (x) => {
      if (offset >= x.diskSize) {
        throw new StrataError('USAGE', `offset ${offset} lies past the disk end (${x.diskSize})`);
      }
      m = x;
      to = Math.min(offset + length, x.diskSize);
    },
    (s, e, k, v, ino, nm, off) => {
      if (e <= offset || s >= to) return;
      const a = Math.max(s, offset);
      const w = m as StreamedMap;
      out.push(ownerOf(w.volumes, w.name, a, Math.min(e, to), k, v, ino, nm, off + (a - s)));
    },
  );
  return out;
}

function printSummary(diskSize: number, count: number, rows: KindSummary[], json: boolean): void {
  if (json) {
    printJson({ diskSize, records: count, kinds: rows });
    return;
  }
  const lines = [`${'KIND'.padEnd(16)} ${'CLASS'.padEnd(9)} ${'RECORDS'.padStart(9)}  BYTES`];
  for (const r of rows) {
    lines.push(`${r.kind.padEnd(16)} ${r.class.padEnd(9)} ${String(r.records).padStart(9)}  ${humanSize(r.bytes)}`);
  }
  lines.push(`${'disk'.padEnd(16)} ${''.padEnd(9)} ${String(count).padStart(9)}  ${humanSize(diskSize)}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** The map of an image: loaded from `--map FILE`, else built. */
async function obtainMap(image: string, o: Record<string, unknown>): Promise<BlockMap> {
  if (typeof o.map === 'string') {
    const { loadBlockMap } = await import('../../library/index.js');
    const map = loadBlockMap(await readFile(o.map), o.map);
    return map;
  }
  return buildMapOf(image, o);
}

/** Open a target (image file, URL, library version), build its block map, close it. */
export async function buildMapOf(image: string, o: Record<string, unknown>): Promise<BlockMap> {
  const { blockMapOfTarget } = await import('../../library/index.js');
  return blockMapOfTarget(image, openOptionsFrom(o), { ...targetOptionsFrom(o), onTarget: noteTarget });
}

function parseRange(s: string): [number, number] {
  const m = /^\s*(0x[0-9a-f]+|\d+)(?:\+(0x[0-9a-f]+|\d+))?\s*$/i.exec(s);
  const offset = m ? Number(m[1]) : Number.NaN;
  const length = m?.[2] !== undefined ? Number(m[2]) : 1;
  if (!m || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length < 1) {
    throw new StrataError('USAGE', `bad range ${JSON.stringify(s)}: expected OFFSET[+LENGTH] in bytes`);
  }
  return [offset, length];
}

function ownerLine(r: Owner): string {
  const parts = [String(r.start).padStart(14), String(r.length).padStart(12), r.kind.padEnd(15)];
  if (r.volume !== undefined) parts.push(`[${r.volume === '' ? 'disk' : r.volume}${r.fs ? ` ${r.fs}` : ''}]`);
  if (r.inode !== undefined)
    parts.push(r.lastInode !== undefined ? `inodes ${r.inode}-${r.lastInode}` : `inode ${r.inode}`);
  if (r.path !== undefined) parts.push(JSON.stringify(r.path));
  if (r.fileOffset !== undefined) parts.push(`@${r.fileOffset}`);
  if (r.detail !== undefined) parts.push(`(${r.detail})`);
  return parts.join(' ');
}

/** A saved map opened from its file (checked whole on opening, held a page at a time) for `fn`, closed after. */
async function withMapFile<T>(file: string, fn: (m: MapFile) => T | Promise<T>): Promise<T> {
  const { MapFile } = await import('../../library/index.js');
  const m = MapFile.open(file);
  try {
    return await fn(m);
  } finally {
    m.close();
  }
}

/** Write to stdout, waiting for it to drain when it is full (pipes to `head`, slow terminals). */
async function write(s: string): Promise<void> {
  if (s.length > 0) await writeOut(s);
}
