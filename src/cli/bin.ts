#!/usr/bin/env node
/**
 * The `strata` executable. Node's start-up and module loading are a large part of a short
 * run, so the image verbs (convert, info, map, demo), which need no partition or file-system
 * readers, run in a program that registers only their commands (each loads its readers when
 * it runs). Everything else, and help, goes through main.js with every command.
 */
const argv = process.argv.slice(2);
const IMAGE_VERBS = new Set(['convert', 'info', 'map', 'demo']);

async function imageVerb(args: string[]): Promise<number> {
  const [{ Command, CommanderError }, { isStrataError }, image, convert, demo] = await Promise.all([
    import('commander'),
    import('../util/errors.js'),
    import('./commands/image.js'),
    import('./commands/convert.js'),
    import('./commands/demo.js'),
  ]);
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .showHelpAfterError(false)
    .exitOverride();
  image.registerImageCommands(program);
  convert.registerConvertCommand(program);
  demo.registerDemoCommand(program);
  // The same error handling as main() in main.ts.
  try {
    await program.parseAsync(args, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (isStrataError(e)) process.stderr.write(`strata: ${e.message}\n`);
    else if ((e as NodeJS.ErrnoException)?.code === 'EPIPE') return 0;
    else process.stderr.write(`strata: internal error: ${(e as Error)?.stack ?? e}\n`);
    return 1;
  }
}

const run = IMAGE_VERBS.has(argv[0] ?? '') ? imageVerb(argv) : import('./main.js').then(({ main }) => main(argv));
run.then((code) => {
  process.exitCode = code;
});
