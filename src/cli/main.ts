import { Command, CommanderError } from 'commander';
import { isStrataError } from '../util/errors.js';
import { registerConvertCommand } from './commands/convert.js';
import { registerDemoCommand } from './commands/demo.js';
import { registerFsCommands } from './commands/fs.js';
import { registerImageCommands } from './commands/image.js';

/**
 * The `strata` command: thin. Each file in ./commands registers its verbs on the program
 * and calls into the library; this file only wires them and turns errors into one line.
 */
export function buildProgram(): Command {
  const program = new Command('strata')
    .description('Virtual-machine disk images as structured data')
    .showHelpAfterError(false)
    .exitOverride();
  registerImageCommands(program);
  registerConvertCommand(program);
  registerFsCommands(program);
  registerDemoCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
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
