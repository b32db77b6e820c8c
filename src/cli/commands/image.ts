import type { Command } from 'commander';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { humanSize, printJson } from '../output.js';

/** `info` and `map`: what the container says, and which virtual ranges hold data. */
export function registerImageCommands(program: Command): void {
  addOpenOptions(
    program
      .command('info')
      .description('format, sizes, backing chain and allocation of an image')
      .argument('<image>', 'image file or http(s) URL')
      .option('--json', 'machine-readable output'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const { closeChain, openImage, imageInfo } = await load();
    const img = await openImage(image, openOptionsFrom(o));
    try {
      const info = await imageInfo(img, image);
      if (o.json) return printJson(info);
      const lines = [
        `image:          ${info.path}`,
        `format:         ${info.format}${info.subformat ? ` (${info.subformat})` : ''}`,
        `virtual size:   ${humanSize(info.virtualSize)}`,
        `file size:      ${humanSize(info.fileSize)}`,
      ];
      if (info.clusterSize) lines.push(`cluster size:   ${info.clusterSize}`);
      lines.push(`allocated:      ${humanSize(info.allocatedBytes)}`, `zero:           ${humanSize(info.zeroBytes)}`);
      for (const [i, b] of info.backing.entries()) lines.push(`backing[${i}]:     ${b.path} (${b.format})`);
      for (const w of info.warnings) lines.push(`warning:        ${w}`);
      process.stdout.write(`${lines.join('\n')}\n`);
    } finally {
      await closeChain(img);
    }
  });

  addOpenOptions(
    program
      .command('map')
      .description('the virtual disk as ranges of data and zeros (like qemu-img map)')
      .argument('<image>', 'image file or http(s) URL')
      .option('--json', 'JSON array of {start, length, data, zero}')
      .option('--used', 'instead: the ranges in use (not free space, not unpartitioned), from the block map'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    if (o.used) return printUsed(image, o);
    const { closeChain, openImage, mapImage } = await load();
    const img = await openImage(image, openOptionsFrom(o));
    try {
      if (o.json) {
        process.stdout.write('[');
        let first = true;
        for await (const r of mapImage(img)) {
          process.stdout.write(`${first ? '' : ',\n'}${JSON.stringify(r)}`);
          first = false;
        }
        process.stdout.write(']\n');
        return;
      }
      process.stdout.write(`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}Kind\n`);
      for await (const r of mapImage(img)) {
        process.stdout.write(
          `0x${r.start.toString(16).padEnd(18)}0x${r.length.toString(16).padEnd(18)}${r.data ? 'data' : 'zero'}\n`,
        );
      }
    } finally {
      await closeChain(img);
    }
  });
}

/** `map --used`: the block map's used-space view, `[{start, length}]` with --json. */
async function printUsed(image: string, o: Record<string, unknown>): Promise<void> {
  const { buildMapOf } = await import('./blockmap.js');
  const used = (await buildMapOf(image, openOptionsFrom(o))).used();
  if (o.json) return printJson(used.map((r) => ({ start: r.offset, length: r.length })));
  process.stdout.write(`${'Offset'.padEnd(20)}${'Length'.padEnd(20)}\n`);
  for (const r of used) process.stdout.write(`0x${r.offset.toString(16).padEnd(18)}0x${r.length.toString(16)}\n`);
}

/** The readers, loaded when a command runs rather than at start-up. */
async function load() {
  const { closeChain, openImage, imageInfo, mapImage } = await import('../../library/index.js');
  return { closeChain, openImage, imageInfo, mapImage };
}
