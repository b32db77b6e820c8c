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

/** The package version, put in by the bundler (scripts/bundle.mjs); tsc builds read package.json. */
declare const __STRATA_VERSION__: string | undefined;
const VERSION: string =
  typeof __STRATA_VERSION__ === 'string' ? __STRATA_VERSION__ : (process.env.npm_package_version ?? 'unknown');

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
  {
    verbs: ['mount', 'umount', 'virtiofs', 'commit'],
    load: async () => (await import('./commands/mount.js')).registerMountCommands,
  },
  { verbs: ['nbd'], load: async () => (await import('./commands/nbd.js')).registerNbdCommand },
  { verbs: ['cache'], load: async () => (await import('./commands/cache.js')).registerCacheCommands },
  { verbs: ['deploy'], load: async () => (await import('./commands/deploy.js')).registerDeployCommand },
  { verbs: ['profile'], load: async () => (await import('./commands/profile.js')).registerProfileCommands },
  {
    verbs: ['preload', 'export-index'],
    load: async () => (await import('./commands/preload.js')).registerPreloadCommands,
  },
  {
    verbs: ['serve', 'user', 'project', 'token'],
    load: async () => (await import('./commands/serve.js')).registerServeCommands,
  },
  { verbs: ['db', 'migrate'], load: async () => (await import('./commands/scale.js')).registerScaleCommands },
  { verbs: ['rebase'], load: async () => (await import('./commands/rebase.js')).registerRebaseCommand },
  {
    verbs: ['analytics', 'simulate', 'bench'],
    load: async () => (await import('./commands/analytics.js')).registerAnalyticsCommands,
  },
  { verbs: ['demo'], load: async () => (await import('./commands/demo.js')).registerDemoCommand },
  {
    verbs: ['put', 'mkdir', 'ln', 'chmod', 'chown', 'edit', 'log'],
    load: async () => (await import('./commands/edit.js')).registerEditCommands,
  },
  {
    verbs: ['completion'],
    // handed buildProgram rather than importing this file (no import cycle; test/layers.test.ts)
    load: async () => {
      const { registerCompletionCommand } = await import('./commands/completion.js');
      return (program) => registerCompletionCommand(program, buildProgram);
    },
  },
  {
    verbs: ['init', 'checkin', 'checkout', 'images', 'versions', 'describe', 'tag', 'rm', 'gc', 'verify'],
    load: async () => (await import('./commands/library.js')).registerLibraryCommands,
  },
];

/** Verbs that run as services (many requests in one process): the budget is enforced only when --memory is given. */
const SERVICES = new Set(['serve', 'mount', 'virtiofs', 'nbd', 'deploy']);

/** A program with the commands for `verb` (all of them when `verb` is not one we know). */
export async function buildProgram(verb?: string): Promise<Command> {
  const { Command } = await import('commander');
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .version(VERSION, '-V, --version', 'print the version')
    .showHelpAfterError(false)
    .option(
      '--memory <size>',
      'memory budget of this command: caches are sized from it and a command that cannot stay within it stops with an error (default 256M; K, M, G suffixes)',
    )
    .exitOverride();
  program.hook('preAction', async (cmd, action) => {
    const { DEFAULT_MEMORY, parseMemorySize, setMemoryBudget } = await import('../library/index.js');
    const given = cmd.opts().memory as string | undefined;
    // long-running services keep their own footprint unless a budget is asked for
    let verb: Command = action;
    while (verb.parent && verb.parent !== program) verb = verb.parent;
    const enforce = given !== undefined || !SERVICES.has(verb.name());
    setMemoryBudget(given === undefined ? DEFAULT_MEMORY : parseMemorySize(given), enforce);
  });
  const mine = GROUPS.filter((g) => verb !== undefined && g.verbs.includes(verb));
  for (const g of mine.length > 0 ? mine : GROUPS) (await g.load())(program);
  (await import('./help.js')).addExamples(program);
  return program;
}

/**
 * Verbs whose status says something besides success (diff(1), grep(1)): 0 same / found,
 * 1 differ / none, 2 trouble. Every other verb: 0 success, 1 failure, 2 bad usage.
 */
const TRISTATE = new Set(['diff', 'search']);

/**
 * stdout closed by its reader (`strata map disk | head -1`): the output is no longer
 * wanted, so stop quietly with status 0 instead of dying with a stack trace. Writes go to
 * a pipe asynchronously, so EPIPE arrives as an 'error' event on stdout, not at the write.
 */
function quietOnClosedPipe(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}

export async function main(argv: string[]): Promise<number> {
  quietOnClosedPipe();
  const [{ CommanderError }, { exitStatus, finishWarnings }] = await Promise.all([
    import('commander'),
    import('./output.js'),
  ]);
  const { isStrataError } = await import('../library/index.js');
  const failed = TRISTATE.has(argv[0]) ? 2 : 1;
  try {
    const program = await buildProgram(argv[0]);
    await program.parseAsync(argv, { from: 'user' });
    finishWarnings();
    return exitStatus();
  } catch (e) {
    finishWarnings();
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if ((e as NodeJS.ErrnoException)?.code === 'EPIPE') return 0;
    if (isStrataError(e)) process.stderr.write(`strata: ${e.message}\n`);
    else if (isSystemError(e)) process.stderr.write(`strata: ${(e as Error).message}\n`);
    else process.stderr.write(`strata: internal error: ${(e as Error)?.stack ?? e}\n`);
    return failed;
  }
}

/** An error from the operating system about a path the user gave (ENOENT, EACCES ...): one line. */
function isSystemError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) && typeof (e as NodeJS.ErrnoException).syscall === 'string';
}
