import type { Command } from 'commander';
import { type Address, type OpenOptions, StrataError, type Target, type TargetOptions } from '../library/index.js';

/** How every command that reads an image describes its TARGET argument. */
export const TARGET_HELP =
  'image file, http(s) URL, or library version (NAME, NAME:TAG, NAME@N; ref:NAME forces a version)';

/** Flags every command that opens an image accepts. */
export function addOpenOptions(cmd: Command): Command {
  return cmd
    .option('-f, --format <fmt>', 'image format (default: detect from content)')
    .option('--allow-root <dir>', 'also allow backing/extent files under DIR (repeatable)', collect, [])
    .option('--allow-any-path', 'follow backing/extent paths anywhere (trust this image)')
    .option('--no-backing', 'do not open backing files: unallocated ranges read as zeros')
    .option('--timeout <s>', 'HTTP: give up after S seconds without an answer (default 15, $STRATA_HTTP_TIMEOUT)')
    .option('--connect-timeout <s>', 'HTTP: seconds to connect (default 10, $STRATA_HTTP_CONNECT_TIMEOUT)');
}

/** `--library DIR`: where a TARGET that is a library version is looked up. */
export function addLibraryOption(cmd: Command): Command {
  return cmd.option(
    '--library <dir>',
    'library for a version TARGET (default: $STRATA_LIBRARY, else ~/.local/share/strata/library)',
  );
}

/** Open flags, --library, --device, and the volume address (--part, --lv, --subvol) of the file-system commands. */
export function addAddressOptions(cmd: Command): Command {
  return addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        cmd
          .option('--part <n>', 'partition id as `strata parts` shows it (1-4 primary, 5+ logical, GPT index)')
          .option('--lv <vg/lv>', 'LVM logical volume')
          .option('--subvol <name|id>', SUBVOL_HELP),
      ),
    ),
  );
}

/**
 * `--device FILE` (repeatable): the other devices of a btrfs over several (RAID). Read by
 * targetOptionsFrom, so every verb that takes it opens them the one way (openTargetImage).
 */
export function addDeviceOption(cmd: Command): Command {
  return cmd.option('--device <file>', DEVICE_HELP, collect, []);
}

export const DEVICE_HELP =
  'another device of a btrfs file system over several (RAID): its image (file, URL or version); repeat for each';

export const SUBVOL_HELP =
  'btrfs subvolume or snapshot as /: its path from the top level or its id (default: the default one)';

/** The address flags of a command's options. */
export function addressFrom(o: Record<string, unknown>): Address {
  const addr: Address = {};
  if (typeof o.part === 'string') addr.part = o.part;
  if (typeof o.lv === 'string') addr.lv = o.lv;
  if (typeof o.subvol === 'string') addr.subvol = o.subvol;
  return addr; // --device is a target option (targetOptionsFrom): opened with the image
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
    http: {
      idleTimeoutMs: secondsOption(o.timeout, '--timeout'),
      connectTimeoutMs: secondsOption(o.connectTimeout, '--connect-timeout'),
    },
  };
}

export function targetOptionsFrom(o: Record<string, unknown>): TargetOptions {
  const t: TargetOptions = { library: typeof o.library === 'string' ? o.library : undefined };
  if (Array.isArray(o.device) && o.device.length > 0) t.devices = o.device.map(String);
  return t;
}

/** The `--device` images of a command's options ([] when none). */
export function devicesFrom(o: Record<string, unknown>): string[] {
  return Array.isArray(o.device) ? o.device.map(String) : [];
}

/** Say how an ambiguous TARGET was understood (a file that is also a version's name). */
export function noteTarget(t: Target): void {
  if (t.kind === 'file' && t.note) process.stderr.write(`strata: note: ${t.note}\n`);
}

function secondsOption(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const s = Number(v);
  if (!Number.isFinite(s) || s <= 0) throw new StrataError('USAGE', `${flag} takes a positive number of seconds`);
  return s * 1000;
}
