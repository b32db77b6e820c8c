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
  { verbs: ['inspect', 'diff'], load: async () => (await import('./commands/inspect.js')).registerInspectCommands },
  { verbs: ['nbd'], load: async () => (await import('./commands/nbd.js')).registerNbdCommand },
  { verbs: ['demo'], load: async () => (await import('./commands/demo.js')).registerDemoCommand },
];

/** A program with the commands for `verb` (all of them when `verb` is not one we know). */
export async function buildProgram(verb?: string): Promise<Command> {
  const { Command } = await import('commander');
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .showHelpAfterError(false)
    .exitOverride();
  const mine = GROUPS.filter((g) => verb !== undefined && g.verbs.includes(verb));
  for (const g of mine.length > 0 ? mine : GROUPS) (await g.load())(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const [{ CommanderError }, { isStrataError }] = await Promise.all([import('commander'), import('../util/errors.js')]);
  try {
    const program = await buildProgram(argv[0]);
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
