import type { Command } from 'commander';
import { inspectImage } from '../../inspect/inspect.js';
import type { OsInspection } from '../../inspect/types.js';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { printJson } from '../output.js';

/** Inspection verbs: inspect (what OS is in an image) and diff (what changed between two). */
export function registerInspectCommands(program: Command): void {
  addOpenOptions(
    program
      .command('inspect')
      .description('find every OS root in an image and report OS, version, packages, users, kernels, mounts')
      .argument('<image>', 'image file or http(s) URL')
      .option('--json', 'an array with one object per OS root'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const r = await inspectImage(image, openOptionsFrom(o));
    for (const w of r.warnings) process.stderr.write(`strata: warning: ${w}\n`);
    if (o.json) return printJson(r.roots);
    if (r.roots.length === 0) {
      process.stdout.write('no operating system found\n');
      return;
    }
    process.stdout.write(`${r.roots.map(humanReport).join('\n')}`);
  });
}

function humanReport(r: OsInspection): string {
  const version = r.versionMajor === null ? '-' : `${r.versionMajor}.${r.versionMinor ?? 0}`;
  const lines = [
    `root:            ${r.root === '' ? '(whole disk)' : r.root}`,
    `os:              ${r.osType}`,
    `distro:          ${r.distro ?? '-'}`,
    `product:         ${r.productName ?? '-'}`,
    `version:         ${version}`,
    `arch:            ${r.arch ?? '-'}`,
    `hostname:        ${r.hostname ?? '-'}`,
    `packages:        ${r.packages.length} (${r.packageFormat ?? 'none'}${r.packageManager ? `, ${r.packageManager}` : ''})`,
    `kernels:         ${r.kernels.map((k) => k.version).join(' ') || '-'}`,
    `init:            ${r.initSystem ?? '-'}`,
    `users:           ${r.users.map((u) => u.name).join(' ') || '-'}`,
  ];
  for (const [point, m] of Object.entries(r.mountpoints)) {
    lines.push(
      `mount:           ${point} <- ${m.device}${m.volume !== undefined ? ` (volume ${m.volume || 'whole disk'})` : ''}`,
    );
  }
  if (r.windows) {
    if (r.windows.edition) lines.push(`edition:         ${r.windows.edition}`);
    if (r.windows.build) lines.push(`build:           ${r.windows.build}`);
    lines.push(`programs:        ${r.windows.programs.length}`);
  }
  for (const w of r.warnings) lines.push(`warning:         ${w}`);
  return `${lines.join('\n')}\n`;
}
