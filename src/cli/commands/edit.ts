import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import type { Change, Library, LogStep } from '../../library/index.js';
import { StrataError } from '../../library/index.js';
import { filesSummaryLine, humanSize, printJson } from '../output.js';
import { addPlaceOptions, placesFrom } from '../places.js';
import { remoteOf, withRemote } from '../remote.js';

/**
 * Edit verbs (issue 24): each makes a new version of REF's image whose disk is REF's with
 * the file system changed in place (src/library/edit). `strata rm REF PATH...` lives with
 * the library's `rm` (library.ts), which deletes a version when given no PATH.
 */
export const EDIT_VERBS = ['put', 'mkdir', 'ln', 'chmod', 'chown', 'edit', 'log'] as const;

const withEditLocal = (cmd: Command) =>
  addPlaceOptions(
    cmd
      .option('-m, --message <text>', "the new version's message (default: a summary of the changes)")
      .option('--part <n>', 'the partition whose file system is edited (default: the only one, or the OS root)')
      .option('--lv <vg/lv>', 'the LVM logical volume whose file system is edited')
      .option('--tag <tag>', 'tag the new version (repeatable)', (v: string, p: string[] | undefined) => [
        ...(p ?? []),
        v,
      ])
      .option('--json', 'machine-readable output')
      .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)'),
  );
const withEdit = (cmd: Command) => withRemote(withEditLocal(cmd));

async function withLibrary<T>(o: Record<string, unknown>, fn: (lib: Library) => Promise<T>): Promise<T> {
  const { Library, refreshIndex } = await import('../../library/index.js');
  const lib = await Library.open(o.library as string | undefined, { create: false, ...placesFrom(o) });
  try {
    const r = await fn(lib);
    await refreshIndex(lib).catch((e) =>
      process.stderr.write(`strata: warning: static index not updated: ${e.message}\n`),
    );
    return r;
  } finally {
    await lib.close();
  }
}

/** Apply `changes` to REF as one new version and say what was made. */
export async function runEdit(ref: string, changes: Change[], o: Record<string, unknown>): Promise<void> {
  const remote = await remoteOf(o);
  if (remote) {
    const r = await remote.edit(ref, changes, {
      ...(o.message !== undefined ? { message: o.message as string } : {}),
      ...(o.tag ? { tags: o.tag as string[] } : {}),
      ...(o.part !== undefined ? { part: o.part as string } : {}),
      ...(o.lv !== undefined ? { lv: o.lv as string } : {}),
    });
    if (o.json) return printJson({ remote: remote.url, ...r });
    process.stdout.write(
      `${r.ref} <- ${r.parent}: ${r.changes} change${r.changes === 1 ? '' : 's'} on ${r.fsKind} (volume ${r.volume}); ${humanSize(r.contentBytes)} of contents sent (service ${remote.url})\n`,
    );
    for (const w of r.warnings) process.stderr.write(`strata: warning: ${w}\n`);
    return;
  }
  const { applyChanges } = await import('../../library/index.js');
  await withLibrary(o, async (lib) => {
    const r = await applyChanges(
      lib,
      ref,
      { changes, message: o.message as string | undefined },
      {
        address: { part: o.part as string | undefined, lv: o.lv as string | undefined },
        tags: (o.tag as string[] | undefined) ?? [],
      },
    );
    if (o.json) return printJson({ library: lib.dir, ...r });
    process.stdout.write(
      `${r.ref} <- ${r.parent}: ${r.changes} change${r.changes === 1 ? '' : 's'} on ${r.fsKind} (volume ${r.volume}); ${r.newChunks} new chunks, ${humanSize(r.newBytes)} new (library ${lib.dir})\n`,
    );
    for (const w of r.warnings) process.stderr.write(`strata: warning: ${w}\n`);
  });
}

function modeOf(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  if (!/^[0-7]{1,4}$/.test(s))
    throw new StrataError('USAGE', `${flag} ${JSON.stringify(s)} is not an octal mode (0..7777)`);
  return Number.parseInt(s, 8);
}

function idOf(s: string | undefined, flag: string): number | undefined {
  if (s === undefined) return undefined;
  if (!/^\d{1,10}$/.test(s) || Number(s) > 0xffffffff)
    throw new StrataError('USAGE', `${flag} ${JSON.stringify(s)} is not a number`);
  return Number(s);
}

export function registerEditCommands(program: Command): void {
  withEdit(
    program
      .command('put')
      .description('new version with FILE (a local file) written at PATH (replacing what is there)')
      .argument('<ref>', 'the version to edit (NAME, NAME:TAG, NAME@N)')
      .argument('<path>', 'absolute path in the image')
      .argument('<file>', 'local file whose bytes PATH gets')
      .option('-p, --parents', "make PATH's missing parent directories (root's, 755)")
      .option('--mode <octal>', 'permission bits (default 644)')
      .option('--uid <n>', 'owner (default 0)')
      .option('--gid <n>', 'group (default 0)')
      .option('--mtime <seconds>', 'modification time, SECONDS[.NANOS] since the epoch (default now)'),
  ).action(async (ref: string, p: string, file: string, o: Record<string, unknown>) => {
    const { parseSeconds } = await import('../../library/index.js');
    const c: Change = { op: 'put', path: p, content: { kind: 'file', path: path.resolve(file) } };
    if (o.parents) c.parents = true;
    if (o.mtime !== undefined) {
      const t = parseSeconds(String(o.mtime));
      if (!t) throw new StrataError('USAGE', `--mtime ${JSON.stringify(o.mtime)} is not SECONDS[.NANOS]`);
      c.mtime = t.seconds;
      c.mtimeNsec = t.nsec;
    }
    const mode = modeOf(o.mode as string | undefined, '--mode');
    const uid = idOf(o.uid as string | undefined, '--uid');
    const gid = idOf(o.gid as string | undefined, '--gid');
    if (mode !== undefined) c.mode = mode;
    if (uid !== undefined) c.uid = uid;
    if (gid !== undefined) c.gid = gid;
    await runEdit(ref, [c], o);
  });

  withEdit(
    program
      .command('mkdir')
      .description('new version with a directory made at PATH')
      .argument('<ref>', 'the version to edit')
      .argument('<path>', 'absolute path in the image')
      .option('-p, --parents', 'make missing parents too; no error if PATH is a directory already')
      .option('--mode <octal>', 'permission bits (default 755)'),
  ).action(async (ref: string, p: string, o: Record<string, unknown>) => {
    const c: Change = { op: 'mkdir', path: p, parents: Boolean(o.parents) };
    const mode = modeOf(o.mode as string | undefined, '--mode');
    if (mode !== undefined) c.mode = mode;
    await runEdit(ref, [c], o);
  });

  withEdit(
    program
      .command('ln')
      .description(
        'new version with a link at PATH: symbolic (-s TARGET, stored as given) or hard (TARGET an existing path)',
      )
      .argument('<target>', 'what the link points at')
      .argument('<ref>', 'the version to edit')
      .argument('<path>', 'absolute path of the new link in the image')
      .option('-s, --symbolic', 'make a symbolic link (else a hard link)'),
  ).action(async (target: string, ref: string, p: string, o: Record<string, unknown>) => {
    const c: Change = o.symbolic ? { op: 'symlink', path: p, target } : { op: 'link', path: p, target };
    await runEdit(ref, [c], o);
  });

  withEdit(
    program
      .command('chmod')
      .description("new version with PATH's permission bits set")
      .argument('<mode>', 'octal mode (644, 0755, 4755)')
      .argument('<ref>', 'the version to edit')
      .argument('<path>', 'absolute path in the image'),
  ).action(async (mode: string, ref: string, p: string, o: Record<string, unknown>) => {
    await runEdit(ref, [{ op: 'setattr', path: p, mode: modeOf(mode, 'MODE') }], o);
  });

  withEdit(
    program
      .command('chown')
      .description("new version with PATH's owner and/or group set (numeric ids)")
      .argument('<owner>', 'UID, UID:GID or :GID')
      .argument('<ref>', 'the version to edit')
      .argument('<path>', 'absolute path in the image'),
  ).action(async (owner: string, ref: string, p: string, o: Record<string, unknown>) => {
    const { parseOwner } = await import('../../library/index.js');
    const ids = parseOwner(owner);
    if (!ids) throw new StrataError('USAGE', `OWNER ${JSON.stringify(owner)} is not UID, UID:GID or :GID (numeric)`);
    await runEdit(ref, [{ op: 'setattr', path: p, ...ids }], o);
  });

  withEdit(
    program
      .command('edit')
      .description(
        'new version with a batch of operations from a script (one per line: put, rm, mkdir, ln, mv, chmod, chown, touch, setxattr, rmxattr)',
      )
      .argument('<ref>', 'the version to edit')
      .requiredOption(
        '--script <file>',
        "the operations ('-' reads stdin); relative FILEs are read from the script's folder",
      ),
  ).action(async (ref: string, o: Record<string, unknown>) => {
    const { parseEditScript } = await import('../../library/index.js');
    const file = o.script as string;
    let text: string;
    try {
      text = readFileSync(file === '-' ? 0 : file, 'utf8');
    } catch (e) {
      throw new StrataError('NOT_FOUND', `cannot read the script: ${(e as Error).message}`, { file });
    }
    const changes = parseEditScript(text, file === '-' ? { file: '<stdin>' } : { file });
    if (changes.length === 0) throw new StrataError('USAGE', 'the script holds no operations', { file });
    await runEdit(ref, changes, o);
  });

  withRemote(
    addPlaceOptions(
      program
        .command('log')
        .description('the provenance chain of a version, newest first, with what each step changed')
        .argument('<ref>', 'NAME, NAME:TAG or NAME@N')
        .option('--limit <n>', 'at most this many steps', '100')
        .option('--part <n>', 'the partition whose files are compared')
        .option('--json', 'machine-readable output')
        .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)'),
    ),
  ).action(async (ref: string, o: Record<string, unknown>) => {
    const limit = Number(o.limit);
    const part = o.part as string | undefined;
    const remote = await remoteOf(o);
    let steps: LogStep[];
    if (remote) {
      if (!Number.isInteger(limit) || limit < 1)
        throw new StrataError('USAGE', `--limit ${o.limit} is not a positive integer`);
      steps = await remote.log(ref, { limit, ...(part !== undefined ? { part } : {}) });
    } else {
      const { versionLog } = await import('../../library/index.js');
      steps = await withLibrary(o, (lib) => versionLog(lib, ref, { limit, part }));
    }
    if (o.json) return printJson(steps);
    process.stdout.write(logText(steps));
  });
}

/** `strata log`'s lines, the same for a library and a service. */
function logText(steps: LogStep[]): string {
  const out: string[] = [];
  for (const s of steps) {
    out.push(
      `${s.ref}  ${s.created}  ${s.createdBy ?? '?'}${s.tags.length ? `  [${s.tags.join(' ')}]` : ''}${s.state === 'deleted' ? '  (deleted)' : ''}`,
    );
    if (s.message) out.push(`    ${s.message}`);
    else if (s.source) out.push(`    checked in from ${s.source}`);
    if (s.changes) {
      out.push(`    ${filesSummaryLine(s.changes)} vs ${s.parents[0]}`);
    } else if (s.parents.length === 0) out.push('    (no parent)');
    if (s.parents.length > 1) out.push(`    other parents: ${s.parents.slice(1).join(' ')}`);
    for (const w of s.warnings) out.push(`    warning: ${w}`);
  }
  return `${out.join('\n')}\n`;
}
