import type { Command } from 'commander';
import type { BootProfile, ProfileSummary } from '../../deploy/index.js';
import { StrataError } from '../../library/index.js';
import { humanSize, printJson, writeOut } from '../output.js';
import { remoteOf, withRemote } from '../remote.js';

/**
 * `profile record REF --trace FILE` and `profile show REF`: boot working-set profiles stored
 * with a library version (the catalog), which `deploy` prefetches first; `--remote URL` (or
 * STRATA_REMOTE) does the same against the library service. A thin face over
 * src/deploy/profile*.ts and the service's profile routes.
 */
export function registerProfileCommands(program: Command): void {
  const profile = program
    .command('profile')
    .description('boot working-set profiles: what a boot read, by file, prefetched first by deploy');

  withRemote(
    profile
      .command('record')
      .description('store with a version the ordered working set of a trace (strata nbd/deploy --trace) of its boot')
      .argument('<ref>', 'library version (NAME, NAME:TAG, NAME@N, digest prefix) the trace was made on')
      .requiredOption(
        '--trace <file>',
        'JSON lines of `strata nbd --trace` or `strata deploy --trace` (or CSV offset,length)',
      )
      .option('--library <dir>', 'library (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
      .option('--json', 'print the summary as JSON'),
  ).action(async (ref: string, o: Record<string, unknown>) => {
    const { openTraceFile, recordProfile, summariseProfile } = await import('../../deploy/index.js');
    const remote = await remoteOf(o);
    let p: BootProfile;
    if (remote) {
      // the service resolves the trace against its own copy of the version (no chunk comes here)
      const parts: Uint8Array[] = [];
      for await (const b of openTraceFile(String(o.trace))) parts.push(b);
      p = await remote.recordProfile(ref, Buffer.concat(parts), String(o.trace));
    } else {
      const { Library } = await import('../../library/index.js');
      const lib = await Library.open(o.library as string | undefined, { create: false });
      try {
        p = await recordProfile(lib, ref, String(o.trace));
        // a library published over HTTP lists its profiles in its static index: keep it in step
        const { refreshIndex } = await import('../../library/index.js');
        await refreshIndex(lib).catch((e) =>
          process.stderr.write(`strata: warning: static index not updated: ${e.message}\n`),
        );
      } finally {
        await lib.close();
      }
    }
    const s = summariseProfile(p);
    if (o.json) return printJson(s);
    await writeOut(
      `recorded a boot profile of ${p.image}@${p.number}: ${s.entries} entries, ${humanSize(s.bytes)} (${pct(s.coverage)} of the disk) from ${p.reads} reads\n`,
    );
  });

  withRemote(
    profile
      .command('show')
      .description('the working set of a version: ranges in first-access order, bytes per file, coverage')
      .argument('<ref>', 'library version; without a profile of its own, the nearest earlier one is shown')
      .option('--library <dir>', 'library (default: $STRATA_LIBRARY or ~/.local/share/strata/library)')
      .option('--json', 'print {summary, profile} as JSON'),
  ).action(async (ref: string, o: Record<string, unknown>) => {
    const { profileFor, summariseProfile } = await import('../../deploy/index.js');
    const remote = await remoteOf(o);
    let p: BootProfile | undefined;
    if (remote) p = await remote.profile(ref);
    else {
      const { Library } = await import('../../library/index.js');
      const lib = await Library.open(o.library as string | undefined, { create: false });
      try {
        p = await profileFor(lib, ref);
      } finally {
        await lib.close();
      }
    }
    if (!p) throw new StrataError('NOT_FOUND', `no boot profile recorded for ${ref} or a version before it`);
    const s = summariseProfile(p);
    if (o.json) return printJson({ summary: s, profile: p });
    await writeOut(showText(p, s));
  });
}

const pct = (x: number) => `${(x * 100).toFixed(x < 0.01 ? 3 : 1)}%`;

function showText(p: BootProfile, s: ProfileSummary): string {
  const lines = [
    `profile of ${p.image}@${p.number}, recorded ${p.recorded} from ${p.trace} (${p.reads} reads of ${p.records} records)`,
    `working set: ${s.entries} entries, ${s.bytes} bytes (${humanSize(s.bytes)}), ${pct(s.coverage)} of the disk`,
    'by kind:',
    ...s.byKind.map(
      (k) => `  ${k.kind.padEnd(16)} ${String(k.entries).padStart(7)} entries ${String(k.bytes).padStart(14)} bytes`,
    ),
    'bytes per file (first-access order):',
    ...s.byFile.map(
      (f) =>
        `  ${String(f.bytes).padStart(14)}  ${f.volume ? `[${f.volume}] ` : ''}${f.path}${f.kind === 'directory' ? '/' : ''}`,
    ),
    'ranges (first-access order):',
    ...p.entries.map((e) => {
      const where = `${String(e.disk).padStart(14)} ${String(e.length).padStart(10)}`;
      const vol = e.volume !== undefined ? ` [${e.volume}]` : '';
      if (e.kind === 'file' || e.kind === 'directory')
        return `${where}  ${e.kind}${vol} ${JSON.stringify(e.path)} @${e.fileOffset}-${(e.fileOffset ?? 0) + e.length}`;
      if (e.kind === 'unowned') return `${where}  unowned${vol} (${e.detail})`;
      const who = [
        e.path !== undefined ? JSON.stringify(e.path) : '',
        e.inode !== undefined ? `inode ${e.inode}` : '',
        e.detail ? `(${e.detail})` : '',
      ]
        .filter(Boolean)
        .join(' ');
      return `${where}  ${e.kind}${vol}${who ? ` ${who}` : ''}`;
    }),
  ];
  return `${lines.join('\n')}\n`;
}
