import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { Conflict, Library, RebaseResult, Take } from '../../library/index.js';
import { StrataError } from '../../library/index.js';
import { printJson, setExitStatus, writeOut } from '../output.js';

/**
 * `strata rebase REF --from A0 --to A1`: carry a base update into a derived version
 * (src/library/edit/rebase.ts plans it; the change-set writer makes the version).
 */
export function registerRebaseCommand(program: Command): void {
  program
    .command('rebase')
    .description(
      'apply what changed from A0 to A1 to REF (a version made from A0): a new version with parents REF and A1; conflicts are listed and stop it (exit 1) unless --ours or --theirs decides',
    )
    .argument('<ref>', 'the derived version (IMAGE@N, IMAGE:TAG)')
    .requiredOption('--from <a0>', 'the base version REF was made from')
    .requiredOption('--to <a1>', 'the updated base')
    .addOption(program.createOption('--ours', "a conflict keeps REF's side").conflicts('theirs'))
    .addOption(program.createOption('--theirs', "a conflict takes A1's side"))
    .option(
      '--take <side-path...>',
      'decide one conflict: --take ours|theirs PATH (a directory decides what is under it; package:NAME a package); repeatable, before --ours/--theirs',
    )
    .option(
      '--resolve <file>',
      'decisions from a file: "ours PATH" / "theirs PATH" / "theirs package:NAME" a line (--dry-run prints one)',
    )
    .option('--part <id>', 'the volume, when the versions hold several file systems')
    .option('--message <text>', 'the new version\'s description (default "rebase REF from A0 onto A1")')
    .option('--dry-run', 'plan only: the changes and conflicts, no version written')
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or the per-user one)')
    .option('--json', 'one object: the plan (changes, conflicts, merged files) and the new version')
    .action(async (ref: string, o: Record<string, unknown>) => {
      const { Library, rebaseVersion, parseResolutions } = await import('../../library/index.js');
      const take: Take[] = [];
      const words = (o.take as string[] | undefined) ?? [];
      for (let i = 0; i < words.length; i += 2) {
        const side = words[i];
        const p = words[i + 1];
        if ((side !== 'ours' && side !== 'theirs') || p === undefined)
          throw new StrataError(
            'USAGE',
            `--take wants "ours PATH" or "theirs PATH", not ${JSON.stringify(words.slice(i, i + 2).join(' '))}`,
          );
        take.push({ side, path: p });
      }
      if (o.resolve !== undefined) {
        const file = o.resolve as string;
        let text: string;
        try {
          text = readFileSync(file, 'utf8');
        } catch (e) {
          throw new StrataError('NOT_FOUND', `cannot read the resolution file: ${(e as Error).message}`, { file });
        }
        take.push(...parseResolutions(text, file));
      }
      const lib: Library = await Library.open(o.library as string | undefined, { create: false });
      let r: RebaseResult;
      try {
        r = await rebaseVersion(lib, ref, o.from as string, o.to as string, {
          ...(o.part !== undefined ? { part: o.part as string } : {}),
          ...(o.ours ? { prefer: 'ours' as const } : o.theirs ? { prefer: 'theirs' as const } : {}),
          ...(take.length > 0 ? { take } : {}),
          ...(o.message !== undefined ? { message: o.message as string } : {}),
          dryRun: Boolean(o.dryRun),
        });
      } finally {
        await lib.close();
      }
      const stopped = r.plan.summary.unresolved > 0;
      if (stopped) setExitStatus(1);
      if (o.json) return printJson(jsonOf(r));
      const s = r.plan.summary;
      const lines = [
        `rebase ${r.ref} from ${r.from} onto ${r.to}: A1 changed ${s.theirsChanged} paths; ${s.taken} taken, ${s.same} already so in REF, ${r.plan.changeSet.changes.length} operations`,
      ];
      for (const m of r.plan.merged)
        lines.push(`merged ${m.path} (${m.how}${m.fromTheirs?.length ? `: ${m.fromTheirs.join(', ')} from A1` : ''})`);
      for (const c of r.plan.conflicts) lines.push(conflictLine(c));
      if (stopped)
        lines.push(
          `${s.unresolved} conflicts: nothing written (--take ours|theirs PATH, --resolve FILE, --ours or --theirs decides)`,
        );
      else if (r.dryRun) lines.push('dry run: nothing written');
      if (r.plan.conflicts.length > 0 && (stopped || r.dryRun)) {
        // a resolution file to edit and pass back with --resolve: every conflict, REF's side by default
        lines.push('', '# resolution file (keep ours or change to theirs; pass with --resolve FILE):');
        for (const c of r.plan.conflicts) {
          lines.push(`# ${conflictLine(c)}`);
          lines.push(`${c.resolution ?? 'ours'} ${c.package ? `package:${c.package}` : c.path}`);
        }
      }
      await writeOut(`${lines.join('\n')}\n`);
    });
}

function conflictLine(c: Conflict): string {
  const what = c.package ? ` package ${c.package}` : c.fields ? ` (${c.fields.join(', ')})` : '';
  const side = (x: Conflict['ours']) => (x.type === 'file' ? `file ${x.size} B` : x.type);
  const res = c.resolution ? ` -> ${c.resolution}` : '';
  return `conflict ${c.kind}${what}: ${c.path}: ours ${side(c.ours)}, theirs ${side(c.theirs)}${c.detail ? `; ${c.detail}` : ''}${res}`;
}

/** The result as JSON: contents in memory shown by size, not bytes. */
function jsonOf(r: RebaseResult): unknown {
  const changes = r.plan.changeSet.changes.map((c) => {
    if (c.op === 'put' && c.content.kind === 'bytes')
      return { ...c, content: { kind: 'bytes', size: c.content.data.length } };
    if (c.op === 'xattr' && c.value) return { ...c, value: Buffer.from(c.value).toString('base64') };
    return c;
  });
  return {
    ref: r.ref,
    from: r.from,
    to: r.to,
    message: r.message,
    dryRun: r.dryRun,
    summary: r.plan.summary,
    conflicts: r.plan.conflicts,
    merged: r.plan.merged,
    changes,
    ...(r.version !== undefined ? { version: r.version } : {}),
  };
}
