import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import type { Library, RebaseJson, Take } from '../../library/index.js';
import { StrataError } from '../../library/index.js';
import { printJson, setExitStatus, writeOut } from '../output.js';
import { remoteOf, withRemote } from '../remote.js';

/**
 * `strata rebase REF --from A0 --to A1`: carry a base update into a derived version
 * (src/library/edit/rebase.ts plans it; the change-set writer makes the version).
 */
export function registerRebaseCommand(program: Command): void {
  const cmd = program
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
    .option(
      '-i, --interactive',
      'ask for each conflict left (ours or theirs) on standard input, then rebase with the answers',
    )
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or the per-user one)')
    .option('--json', 'one object: the plan (changes, conflicts, merged files) and the new version');
  withRemote(cmd).action(async (ref: string, o: Record<string, unknown>) => {
    const { Library, conflictLine, rebaseJson, rebaseText, rebaseVersion, parseResolutions } = await import(
      '../../library/index.js'
    );
    /** One answer a conflict, read from standard input (a terminal or a pipe); the end of input decides nothing. */
    const ask = async (conflicts: RebaseJson['conflicts']): Promise<Take[]> => {
      const rl = createInterface({ input: process.stdin, terminal: false });
      const lines = rl[Symbol.asyncIterator]();
      const out: Take[] = [];
      try {
        for (const [i, c] of conflicts.entries()) {
          const what = c.package ? `package:${c.package}` : c.path;
          for (;;) {
            process.stderr.write(
              `[${i + 1}/${conflicts.length}] ${conflictLine(c)}\nkeep ours or take theirs for ${what}? [o/t] `,
            );
            const next = await lines.next();
            if (next.done) throw new StrataError('USAGE', `no answer for ${what} (input ended): nothing written`);
            const a = String(next.value).trim().toLowerCase();
            if (a === 'o' || a === 'ours') out.push({ side: 'ours', path: what });
            else if (a === 't' || a === 'theirs') out.push({ side: 'theirs', path: what });
            else continue;
            break;
          }
        }
      } finally {
        rl.close();
      }
      return out;
    };
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
    const opts = {
      ...(o.part !== undefined ? { part: o.part as string } : {}),
      ...(o.ours ? { prefer: 'ours' as const } : o.theirs ? { prefer: 'theirs' as const } : {}),
      ...(o.message !== undefined ? { message: o.message as string } : {}),
    };
    const remote = await remoteOf(o);
    const run = async (takes: Take[], dryRun: boolean): Promise<RebaseJson> => {
      const all = { ...opts, ...(takes.length > 0 ? { take: takes } : {}), dryRun };
      if (remote) return remote.rebase(ref, o.from as string, o.to as string, all);
      const lib: Library = await Library.open(o.library as string | undefined, { create: false });
      try {
        return rebaseJson(await rebaseVersion(lib, ref, o.from as string, o.to as string, all));
      } finally {
        await lib.close();
      }
    };
    if (o.interactive) {
      // the conflicts left after the given decisions, asked one by one; then the rebase with the answers
      const planned = await run(take, true);
      const open = planned.conflicts.filter((c) => !c.resolution && c.kind !== 'unsupported');
      if (open.length > 0) take.push(...(await ask(open)));
    }
    const j = await run(take, Boolean(o.dryRun));
    if (j.summary.unresolved > 0) setExitStatus(1);
    if (o.json) return printJson(j);
    await writeOut(rebaseText(j));
  });
}
