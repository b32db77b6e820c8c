import type { Command } from 'commander';
import {
  addLibraryOption,
  addOpenOptions,
  noteTarget,
  openOptionsFrom,
  TARGET_HELP,
  targetOptionsFrom,
} from '../common.js';
import { humanSize, printJson, warn, writeOut } from '../output.js';

/** `info` and `map`: what the container says, and which virtual ranges hold data. */
export function registerImageCommands(program: Command): void {
  addOpenOptions(
    addLibraryOption(
      program
        .command('info')
        .description('format, sizes, backing chain and allocation of an image')
        .argument('<target>', TARGET_HELP)
        .option('--json', 'machine-readable output'),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const { closeTarget, openTargetImage, imageInfo, recognised } = await load();
    const t = await openTargetImage(image, openOptionsFrom(o), targetOptionsFrom(o));
    try {
      noteTarget(t.target);
      const info = await imageInfo(t.image, t.name);
      const content = await recognised(t.image);
      if (o.json) return printJson({ ...info, content });
      const lines = [
        `image:          ${info.path}`,
        `format:         ${info.format}${info.subformat ? ` (${info.subformat})` : ''}`,
        `virtual size:   ${humanSize(info.virtualSize)}`,
        `file size:      ${humanSize(info.fileSize)}`,
      ];
      if (info.clusterSize) lines.push(`cluster size:   ${info.clusterSize}`);
      lines.push(`allocated:      ${humanSize(info.allocatedBytes)}`, `zero:           ${humanSize(info.zeroBytes)}`);
      for (const [i, b] of info.backing.entries()) lines.push(`backing[${i}]:     ${b.path} (${b.format})`);
      lines.push(`content:        ${content.summary}`);
      for (const w of info.warnings) lines.push(`warning:        ${w}`);
      process.stdout.write(`${lines.join('\n')}\n`);
      if (!content.recognised) warn(content.summary);
    } finally {
      await closeTarget(t);
    }
  });

  addOpenOptions(
    addLibraryOption(
      program
        .command('map')
        .description('the virtual disk as ranges of data and zeros (like qemu-img map)')
        .argument('<target>', TARGET_HELP)
        .option('--json', 'one JSON object per line: {start, length, data, zero}')
        .option('--used', 'instead: the ranges in use (not free space, not unpartitioned), from the block map'),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    if (o.used) return printUsed(image, o);
    const { closeTarget, openTargetImage, mapImage } = await load();
    const t = await openTargetImage(image, openOptionsFrom(o), targetOptionsFrom(o));
    try {
      noteTarget(t.target);
      let buf = o.json ? '' : `${'Offset'.padEnd(20)}${'Length'.padEnd(20)}Kind\n`;
      for await (const r of mapImage(t.image)) {
        buf += o.json
          ? `${JSON.stringify(r)}\n`
          : `0x${r.start.toString(16).padEnd(18)}0x${r.length.toString(16).padEnd(18)}${r.data ? 'data' : 'zero'}\n`;
        if (buf.length >= 1 << 16) {
          await writeOut(buf);
          buf = '';
        }
      }
      if (buf) await writeOut(buf);
    } finally {
      await closeTarget(t);
    }
  });
}

/** `map --used`: the block map's used-space view, one `{start, length}` per line with --json. */
async function printUsed(image: string, o: Record<string, unknown>): Promise<void> {
  const { buildMapOf } = await import('./blockmap.js');
  const used = (await buildMapOf(image, o)).used();
  let buf = o.json ? '' : `${'Offset'.padEnd(20)}${'Length'.padEnd(20)}\n`;
  for (const r of used) {
    buf += o.json
      ? `${JSON.stringify({ start: r.offset, length: r.length })}\n`
      : `0x${r.offset.toString(16).padEnd(18)}0x${r.length.toString(16)}\n`;
    if (buf.length >= 1 << 16) {
      await writeOut(buf);
      buf = '';
    }
  }
  if (buf) await writeOut(buf);
}

/** The readers, loaded when a command runs rather than at start-up. */
async function load() {
  const { closeTarget, openTargetImage, imageInfo, mapImage, recognised } = await import('../../library/index.js');
  return { closeTarget, openTargetImage, imageInfo, mapImage, recognised };
}
