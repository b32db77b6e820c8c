import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import * as path from 'node:path';
import { StrataError } from '../util/errors.js';

/**
 * The host's request log: one JSON line per deploy of a library version, in the request-log
 * format the analytics read (src/analytics/request-log.ts: `at`, `user`, `project`, `image`,
 * `version`, `op`, `bytes`, and `owner`/`public` when the source knows them), plus what only
 * a deploy knows (`target`, `source`). `strata deploy --cache DIR` appends to
 * DIR/requests.jsonl, so the chunk cache folder carries the history that `strata preload
 * --auto` chooses from; `--request-log FILE` names another file.
 *
 * Each record is one write(2) of a whole line on a file opened O_APPEND: deploys of the same
 * host running at once never interleave their lines.
 */
export const REQUEST_LOG_NAME = 'requests.jsonl';

/** Who asked for a version: the version (`image@version`) and, when known, its owner project and visibility. */
export interface VersionRef {
  image: string;
  version: number;
  owner?: string;
  public?: boolean;
}

export interface DeployRequest extends VersionRef {
  /** Milliseconds since the epoch (default now). */
  at?: number;
  op?: string;
  /** Bytes of the version's data (what a deploy of it moves). */
  bytes: number;
  target?: string;
  source?: string;
  user?: string;
  project?: string;
}

/** The request log of a chunk cache folder. */
export function cacheRequestLog(cacheDir: string): string {
  return path.join(path.resolve(cacheDir), REQUEST_LOG_NAME);
}

export function appendDeployRequest(file: string, r: DeployRequest): void {
  let user = r.user;
  if (user === undefined) {
    try {
      user = userInfo().username;
    } catch {
      user = String(process.getuid?.() ?? 'unknown');
    }
  }
  const rec: Record<string, unknown> = {
    at: new Date(r.at ?? Date.now()).toISOString(),
    user,
    // a host's log: the organisation a request came from is the host
    project: r.project ?? hostname(),
    image: r.image,
    version: r.version,
    op: r.op ?? 'deploy',
    bytes: r.bytes,
  };
  if (r.owner !== undefined) rec.owner = r.owner;
  if (r.public !== undefined) rec.public = r.public;
  if (r.target !== undefined) rec.target = r.target;
  if (r.source !== undefined) rec.source = r.source;
  const line = Buffer.from(`${JSON.stringify(rec)}\n`);
  let fd: number;
  try {
    mkdirSync(path.dirname(file), { recursive: true });
    fd = openSync(file, 'a', 0o644);
  } catch (e) {
    throw new StrataError('IO', `cannot open the request log: ${(e as Error).message}`, { file }, { cause: e });
  }
  try {
    writeSync(fd, line, 0, line.length);
  } finally {
    closeSync(fd);
  }
}
