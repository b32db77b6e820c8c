import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import type { RemoteLibrary } from '../serve/index.js';

/**
 * `--remote URL` (else STRATA_REMOTE, with STRATA_TOKEN) on the library verbs: the same
 * verb against a library service. STRATA_REMOTE alone does not take over arguments that
 * are image files or URLs (those stay local, as without a library).
 */
export const withRemote = (cmd: Command) =>
  cmd.option('--remote <url>', 'a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)');

export async function remoteOf(o: Record<string, unknown>, args: string[] = []): Promise<RemoteLibrary | undefined> {
  const given = o.remote as string | undefined;
  if (!given) {
    if (!process.env.STRATA_REMOTE || o.library) return undefined;
    if (args.some((a) => /^https?:\/\//i.test(a) || existsSync(a))) return undefined;
  }
  const { RemoteLibrary } = await import('../serve/index.js');
  return RemoteLibrary.fromEnv(given);
}

/** Write a response body to stdout as it comes. */
export async function pipeBody(res: Response, write: (b: Uint8Array) => Promise<void>): Promise<void> {
  if (!res.body) return;
  for await (const b of res.body as unknown as AsyncIterable<Uint8Array>) await write(b);
}
