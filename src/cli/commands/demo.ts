import * as path from 'node:path';
import type { Command } from 'commander';
import { humanSize, printJson } from '../output.js';

/** `strata demo`: the main job until the library service exists; needs nothing but Node. */
export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('make a disk, write it as raw and qcow2 with Strata, then info/map/verify each')
    .option('--dir <dir>', 'where to write the demo images', path.join('.cache', 'demo'))
    .option('--size <bytes>', 'virtual disk size', (v) => Number(v), 32 << 20)
    .option('--json', 'machine-readable output')
    .action(async (o: { dir: string; size: number; json?: boolean }) => {
      const { runDemo } = await import('../../library/index.js'); // loaded when the command runs, not at start-up
      const r = await runDemo(path.resolve(o.dir), o.size);
      if (o.json) return printJson(r);
      const out: string[] = [
        `Strata demo: a ${humanSize(r.virtualSize)} disk written by Strata's own writers into ${o.dir}`,
        '',
      ];
      for (const s of r.steps) {
        const i = s.info;
        out.push(`== ${s.name}: ${path.relative(process.cwd(), s.file)}`);
        out.push(
          `   info: format ${i.format}${i.clusterSize ? `, cluster ${i.clusterSize}` : ''}, file ${humanSize(i.fileSize)}, allocated ${humanSize(i.allocatedBytes)}`,
        );
        if (i.backing.length > 0)
          out.push(`   backing: ${i.backing.map((b) => `${path.basename(b.path)} (${b.format})`).join(' -> ')}`);
        out.push(`   map:  ${s.mapRanges} ranges, ${humanSize(s.dataBytes)} data`);
        out.push(
          `   convert: ${s.convertMs} ms; read back sha256 ${s.sha256.slice(0, 16)}... ${s.matchesSource ? 'matches' : 'DIFFERS FROM'} the source`,
        );
      }
      out.push('', 'Try: strata info --json <file>   strata map --json <file>   strata convert <in> <out> -O raw');
      process.stdout.write(`${out.join('\n')}\n`);
      if (r.steps.some((s) => !s.matchesSource)) process.exitCode = 1;
    });
}
