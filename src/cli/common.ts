import type { Command } from 'commander';
import type { OpenOptions } from '../library/index.js';

/** Flags every command that opens an image accepts. */
export function addOpenOptions(cmd: Command): Command {
  return cmd
    .option('-f, --format <fmt>', 'image format (default: detect from content)')
    .option('--allow-root <dir>', 'also allow backing/extent files under DIR (repeatable)', collect, [])
    .option('--allow-any-path', 'follow backing/extent paths anywhere (trust this image)')
    .option('--no-backing', 'do not open backing files: unallocated ranges read as zeros');
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

export function openOptionsFrom(o: Record<string, unknown>): OpenOptions {
  return {
    format: o.format as string | undefined,
    allowRoots: (o.allowRoot as string[] | undefined) ?? [],
    allowAnyPath: Boolean(o.allowAnyPath),
    noBacking: o.backing === false,
  };
}
