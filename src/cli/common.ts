import type { Command } from 'commander';
import type { OpenOptions, Target, TargetOptions } from '../library/index.js';

/** How every command that reads an image describes its TARGET argument. */
export const TARGET_HELP =
  'image file, http(s) URL, or library version (NAME, NAME:TAG, NAME@N; ref:NAME forces a version)';

/** Flags every command that opens an image accepts. */
export function addOpenOptions(cmd: Command): Command {
  return cmd
    .option('-f, --format <fmt>', 'image format (default: detect from content)')
    .option('--allow-root <dir>', 'also allow backing/extent files under DIR (repeatable)', collect, [])
    .option('--allow-any-path', 'follow backing/extent paths anywhere (trust this image)')
    .option('--no-backing', 'do not open backing files: unallocated ranges read as zeros');
}

/** `--library DIR`: where a TARGET that is a library version is looked up. */
export function addLibraryOption(cmd: Command): Command {
  return cmd.option(
    '--library <dir>',
    'library for a version TARGET (default: $STRATA_LIBRARY, else ~/.local/share/strata/library)',
  );
}

/** Open flags, --library, and the volume address (--part, --lv) of the file-system commands. */
export function addAddressOptions(cmd: Command): Command {
  return addOpenOptions(
    addLibraryOption(
      cmd
        .option('--part <n>', 'partition id as `strata parts` shows it (1-4 primary, 5+ logical, GPT index)')
        .option('--lv <vg/lv>', 'LVM logical volume'),
    ),
  );
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

export function targetOptionsFrom(o: Record<string, unknown>): TargetOptions {
  return { library: typeof o.library === 'string' ? o.library : undefined };
}

/** Say how an ambiguous TARGET was understood (a file that is also a version's name). */
export function noteTarget(t: Target): void {
  if (t.kind === 'file' && t.note) process.stderr.write(`strata: note: ${t.note}\n`);
}
