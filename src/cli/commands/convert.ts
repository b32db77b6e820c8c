import * as path from 'node:path';
import type { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { type ConvertOptions, type DiskImage, StrataError } from '../../library/index.js';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { printJson } from '../output.js';

/** "65536", "64K", "64k", "2M", "2MiB" -> bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([kmg]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new StrataError('USAGE', `bad ${what} '${text}' (e.g. 65536, 64K, 2M)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

/** Format names as qemu records them in a qcow2 backing format extension, and back. */
const QEMU_NAME: Record<string, string> = { vhd: 'vpc' };
const OUR_NAME: Record<string, string> = { vpc: 'vhd', file: 'raw' };

/** `convert IN OUT -O raw|qcow2`: write the disk an image presents into a new raw or qcow2 file. */
export function registerConvertCommand(program: Command): void {
  addOpenOptions(
    program
      .command('convert')
      .description('convert an image (whole backing chain) to a new raw or qcow2 file, like qemu-img convert')
      .argument('<in>', 'source image file or http(s) URL')
      .argument('<out>', 'output file (written to a temporary file, then renamed into place)')
      .requiredOption('-O, --output-format <fmt>', 'output format: raw or qcow2')
      .option('-c, --compress', 'qcow2: compress data clusters (each only when that saves space)')
      .option('--compression-type <type>', 'qcow2: zlib (default) or zstd; implies -c')
      .option('--cluster-size <n>', 'qcow2: cluster size, a power of two from 512 to 2M (default 64K)')
      .option('-B, --backing <file>', 'qcow2: backing file to record (relative to OUT); only differences are written')
      .option('-F, --backing-format <fmt>', 'format of the backing file (default: detect)')
      .option('--sync', 'fdatasync the output before renaming it into place')
      .option('--json', 'print a JSON summary'),
  ).action(async (input: string, out: string, o: Record<string, unknown>) => {
    const fmt = String(o.outputFormat);
    if (fmt !== 'raw' && fmt !== 'qcow2') {
      throw new StrataError('USAGE', `unknown output format '${fmt}' (known: raw, qcow2)`);
    }
    const ctype = o.compressionType as string | undefined;
    if (ctype !== undefined && ctype !== 'zlib' && ctype !== 'zstd') {
      throw new StrataError('USAGE', `unknown compression type '${ctype}' (known: zlib, zstd)`);
    }
    const opts: ConvertOptions = { format: fmt, sync: Boolean(o.sync) };
    if (o.compress || ctype) opts.compression = (ctype ?? 'zlib') as 'zlib' | 'zstd';
    if (o.clusterSize !== undefined) opts.clusterSize = parseSize(String(o.clusterSize), 'cluster size');
    const backingPath = typeof o.backing === 'string' ? o.backing : undefined;
    if (o.backingFormat !== undefined && !backingPath) {
      throw new StrataError('USAGE', '--backing-format needs --backing');
    }
    // Loaded here, not at start-up: every other command skips them (and Node's start-up is a large part of a short run).
    const { convertImage, closeChain, openImage } = await import('../../library/index.js');
    const openOpts = openOptionsFrom(o);
    const img = await openImage(input, openOpts);
    let backing: DiskImage | undefined;
    const ac = new AbortController();
    const onSignal = () => ac.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let bar: SingleBar | undefined;
    try {
      if (backingPath) {
        // Like qemu, a relative backing name is relative to the image that records it.
        const resolved = path.resolve(path.dirname(path.resolve(out)), backingPath);
        const given = o.backingFormat as string | undefined;
        backing = await openImage(resolved, {
          ...openOpts,
          noBacking: false,
          format: given === undefined ? undefined : (OUR_NAME[given] ?? given),
        });
        // Record the name qemu knows the format by (our 'vhd' is its 'vpc').
        opts.backing = { path: backingPath, format: QEMU_NAME[backing.format] ?? backing.format, image: backing };
      }
      if (process.stderr.isTTY) {
        const { default: cliProgress } = await import('cli-progress'); // only for a terminal
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: 'converting [{bar}] {percentage}% | {value}/{total} MiB | ETA {eta_formatted}',
            hideCursor: true,
            clearOnComplete: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(Math.ceil(img.size / 2 ** 20), 0);
        opts.onProgress = (done) => bar?.update(Math.floor(done / 2 ** 20));
      }
      opts.signal = ac.signal;
      const r = await convertImage(img, out, opts);
      bar?.stop();
      bar = undefined;
      if (o.json) printJson({ input, output: out, format: fmt, compression: opts.compression ?? null, ...r });
    } finally {
      bar?.stop();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      if (backing) await closeChain(backing);
      await closeChain(img);
    }
  });
}
