import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';

/**
 * The `strata` command: thin. Each file in ./commands registers its verbs on a program and
 * calls into the library; this file only wires them and turns errors into one line.
 *
 * Node's start-up and module loading are a large part of a short run, so a command group's
 * module (and the readers it pulls in) is loaded only when one of its verbs is asked for;
 * help and unknown verbs load every group.
 */
type Registrar = (program: Command) => void;

const GROUPS: Array<{ verbs: readonly string[]; load: () => Promise<Registrar> }> = [
  { verbs: ['info', 'map'], load: async () => (await import('./commands/image.js')).registerImageCommands },
  { verbs: ['convert'], load: async () => (await import('./commands/convert.js')).registerConvertCommand },
  {
    verbs: ['parts', 'fsinfo', 'ls', 'cat', 'stat', 'extract'],
    load: async () => (await import('./commands/fs.js')).registerFsCommands,
  },
  {
    verbs: ['whatis', 'blockmap', 'trace'],
    load: async () => (await import('./commands/blockmap.js')).registerBlockmapCommands,
  },
  {
    verbs: ['inspect', 'diff', 'search', 'reinspect'],
    load: async () => (await import('./commands/inspect.js')).registerInspectCommands,
  },
  { verbs: ['nbd'], load: async () => (await import('./commands/nbd.js')).registerNbdCommand },
  { verbs: ['deploy'], load: async () => (await import('./commands/deploy.js')).registerDeployCommand },
  {
    verbs: ['serve', 'user', 'project', 'token'],
    load: async () => (await import('./commands/serve.js')).registerServeCommands,
  },
  { verbs: ['demo'], load: async () => (await import('./commands/demo.js')).registerDemoCommand },
  {
    verbs: ['init', 'checkin', 'checkout', 'images', 'versions', 'describe', 'tag', 'rm', 'gc', 'verify'],
    load: async () => (await import('./commands/library.js')).registerLibraryCommands,
  },
];

/** Options of `ls`/`cat` that take a value (so their value is not the first positional argument). */
const VALUED = new Set(['--part', '--lv', '-f', '--format', '--allow-root', '--library', '--remote']);

/**
 * `ls`/`cat` read an image file, or a stored version when `--library` is given or their
 * first argument is neither a file nor a URL and a library exists (else the image reader
 * reports the missing file, as before there were libraries).
 */
async function storeFsWanted(argv: string[]): Promise<boolean> {
  if (argv[0] !== 'ls' && argv[0] !== 'cat') return false;
  if (argv.includes('--library') || argv.includes('--remote')) return true;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (VALUED.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    if (/^https?:\/\//i.test(a)) return false;
    if (process.env.STRATA_REMOTE && !existsSync(a)) return true;
    const { libraryLocation, MARKER } = await import('../library/index.js');
    return !existsSync(a) && existsSync(path.join(libraryLocation(), MARKER));
  }
  return false;
}

/** A program with the commands for `verb` (all of them when `verb` is not one we know). */
export async function buildProgram(verb?: string, argv?: string[]): Promise<Command> {
  const { Command } = await import('commander');
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .showHelpAfterError(false)
    .exitOverride();
  if (argv && (await storeFsWanted(argv))) {
    (await import('./commands/library.js')).registerStoreFsCommands(program);
    return program;
  }
  const mine = GROUPS.filter((g) => verb !== undefined && g.verbs.includes(verb));
  for (const g of mine.length > 0 ? mine : GROUPS) (await g.load())(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const { CommanderError } = await import('commander');
  const { isStrataError } = await import('../library/index.js');
  try {
    const program = await buildProgram(argv[0], argv);
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (isStrataError(e)) process.stderr.write(`strata: ${e.message}\n`);
    else if ((e as NodeJS.ErrnoException)?.code === 'EPIPE') return 0;
    else process.stderr.write(`strata: internal error: ${(e as Error)?.stack ?? e}\n`);
    return 1;
  }
}
