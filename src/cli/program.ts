import type { Command } from 'commander';

/**
 * The `strata` command's program: thin. Each file in ./commands registers its verbs on a program
 * and calls into the library; this file only wires the groups it is given (main.ts: all of
 * them; image-main.ts: the image verbs, a bundle of their own) and turns errors into one line.
 *
 * Node's start-up and module loading are a large part of a short run, so a command group's
 * module (and the readers it pulls in) is loaded only when one of its verbs is asked for;
 * help and unknown verbs load every group.
 */
type Registrar = (program: Command) => void;

/** Verbs and the loader of the module that registers them. */
export interface CommandGroup {
  verbs: readonly string[];
  load: () => Promise<Registrar>;
}

/** The package version, put in by the bundler (scripts/bundle.mjs); tsc builds read package.json. */
declare const __STRATA_VERSION__: string | undefined;
const VERSION: string =
  typeof __STRATA_VERSION__ === 'string' ? __STRATA_VERSION__ : (process.env.npm_package_version ?? 'unknown');

/** Verbs that run as services (many requests in one process): the budget is enforced only when --memory is given. */
const SERVICES = new Set(['serve', 'mount', 'virtiofs', 'nbd', 'deploy']);
/** One-shot commands whose young generation may grow under the default budget (see preAction). */
const YOUNG_MAY_GROW = new Set(['convert', 'extract', 'ls', 'blockmap']);
/** Of those, the ones whose young generation grows only to YOUNG_GROWS_TO (memory.ts), not V8's 32 MiB. */
const YOUNG_UP_TO = new Set(['extract', 'blockmap']);

/** A program with the commands of `groups` for `verb` (all of them when `verb` is not one they know). */
export async function buildProgramWith(groups: readonly CommandGroup[], verb?: string): Promise<Command> {
  const { Command } = await import('commander');
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .version(VERSION, '-V, --version', 'print the version')
    .showHelpAfterError(false)
    .option(
      '--memory <size>',
      'memory budget of this command: caches are sized from it and a command that cannot stay within it stops with an error; a SIZE bounds heap and buffers (Node adds ~50M), the default keeps the whole process near 256M (K, M, G suffixes)',
    )
    .exitOverride();
  program.hook('preAction', async (cmd, action) => {
    const { budgetWithinRss, DEFAULT_MEMORY, parseMemorySize, setMemoryBudget, YOUNG_GROWS_TO } = await import(
      '../library/index.js'
    );
    const given = cmd.opts().memory as string | undefined;
    // long-running services keep their own footprint unless a budget is asked for
    let verb: Command = action;
    while (verb.parent && verb.parent !== program) verb = verb.parent;
    const enforce = given !== undefined || !SERVICES.has(verb.name());
    if (given !== undefined) setMemoryBudget(parseMemorySize(given), enforce);
    // a one-shot command by default: 256 MiB of resident memory for the whole process (Node's
    // own footprint and V8's young generation taken off the data budget)
    // (convert's memory is its fixed copy buffers, whatever the disk: its young generation
    // may grow, and node:v8 stays unloaded, ~2 ms of every short run; extract's too: a file's
    // walk objects live until its batch is written, and a young generation kept at 2 MiB
    // scavenged ~900 times over 200,000 entries, 100 when it may grow, ~20% of its user CPU
    // for at most 32 MiB more, see bench/README "large trees"; ls and blockmap likewise:
    // 2 MiB scavenged 3,215 times in a 200,000-entry blockmap, 90 in a 1M names-only ls,
    // growth took 17% of blockmap's CPU and 10-15% of ls -R's for ~25-40 MiB of RSS; extract's
    // and blockmap's grow to 8 MiB, not 32: most of the CPU back for ~14-20 MiB, issue 22)
    else if (enforce)
      setMemoryBudget(budgetWithinRss(DEFAULT_MEMORY), true, {
        keepYoungSmall: !YOUNG_MAY_GROW.has(verb.name()),
        youngUpTo: YOUNG_UP_TO.has(verb.name()) ? YOUNG_GROWS_TO : undefined,
      });
    // a service sizes its caches the same way (its process near 256 MiB too), without the guard
    else setMemoryBudget(budgetWithinRss(DEFAULT_MEMORY), false);
    // and paces what a long run leaves resident: its young generation, garbage buffers, the C heap
    if (SERVICES.has(verb.name())) {
      const { keepServiceMemory } = await import('../serve/index.js');
      keepServiceMemory();
    }
  });
  const mine = groups.filter((g) => verb !== undefined && g.verbs.includes(verb));
  for (const g of mine.length > 0 ? mine : groups) (await g.load())(program);
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
  const quiet = (out: NodeJS.WriteStream) =>
    out.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
  // Node makes process.stdout on first use, and making it costs 2-4 ms of CPU (a pipe or a
  // terminal more): a command that prints nothing (convert) should not pay that, so the
  // handler is attached when something first takes the stream.
  const d = Object.getOwnPropertyDescriptor(process, 'stdout');
  const get = d?.get;
  if (!get || !d.configurable) {
    quiet(process.stdout);
    return;
  }
  Object.defineProperty(process, 'stdout', {
    configurable: true,
    enumerable: d.enumerable,
    get() {
      const out = get.call(process) as NodeJS.WriteStream;
      Object.defineProperty(process, 'stdout', { configurable: true, enumerable: d.enumerable, get: () => out });
      quiet(out);
      return out;
    },
  });
}

export async function mainWith(groups: readonly CommandGroup[], argv: string[]): Promise<number> {
  quietOnClosedPipe();
  const [{ CommanderError }, { exitStatus, finishWarnings }] = await Promise.all([
    import('commander'),
    import('./output.js'),
  ]);
  const { isStrataError } = await import('../library/index.js');
  const failed = TRISTATE.has(argv[0]) ? 2 : 1;
  try {
    const program = await buildProgramWith(groups, argv[0]);
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
