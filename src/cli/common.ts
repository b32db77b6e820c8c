import type { Command } from 'commander';
import { type OpenOptions, StrataError } from '../library/index.js';

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

function secondsOption(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const s = Number(v);
  if (!Number.isFinite(s) || s <= 0) throw new StrataError('USAGE', `${flag} takes a positive number of seconds`);
  return s * 1000;
}
