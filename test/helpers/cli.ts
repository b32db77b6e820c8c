import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { ROOT } from './tools.js';

/** The built CLI; STRATA_TEST_CLI names another build (e.g. main's, to see a test fail there). */
export const CLI = process.env.STRATA_TEST_CLI ?? path.join(ROOT, 'dist', 'cli', 'strata.cjs');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

/** Run the built `strata` CLI as a child process, as a user would (`input`: its standard input, else none). */
export function strata(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; input?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] as ['pipe', 'pipe', 'pipe'],
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) => {
      const stdoutBytes = Buffer.concat(out);
      resolve({
        code: code ?? -1,
        stdout: stdoutBytes.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        stdoutBytes,
      });
    });
  });
}

/** `--json` output of a command that lists records: JSON Lines, one object per line (README, "Output"). */
export function jsonLines<T>(stdout: string): T[] {
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as T);
}

/** `strata diff ARGS`: its stdout. Like diff(1), 0 (same) and 1 (different) are answers; anything else fails. */
export async function diffOutput(args: string[], opts: { env?: Record<string, string> } = {}): Promise<string> {
  const r = await strata(['diff', ...args], opts);
  if (r.code !== 0 && r.code !== 1) throw new Error(`strata diff ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}
