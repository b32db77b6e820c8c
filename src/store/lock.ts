import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { StrataError } from '../util/errors.js';
import type { Backend } from './backend.js';

/**
 * Repository locks, as restic has them: a check-in holds a shared lock from its first
 * dedup decision until its version is in the catalog; gc holds an exclusive one. Either
 * waits while the other kind is held, so gc never deletes a blob that a running check-in
 * has decided to reuse. Locks are objects in the backend (so they work on S3 too), carry
 * a time refreshed while held, and count as stale when not refreshed for STALE_MS or when
 * their process (on this host) is gone — a check-in killed with -9 does not block gc
 * forever.
 */
export type LockKind = 'shared' | 'exclusive';

interface LockBody {
  kind: LockKind;
  pid: number;
  host: string;
  time: number;
  what?: string;
}

const REFRESH_MS = 30_000;
const STALE_MS = 5 * 60_000;
const POLL_MS = 200;

export class RepoLock {
  private timer?: NodeJS.Timeout;
  private constructor(
    private readonly backend: Backend,
    readonly key: string,
    private readonly body: LockBody,
  ) {}

  /** Take a lock, waiting up to `waitMs` for conflicting ones to go away. */
  static async acquire(backend: Backend, kind: LockKind, what: string, waitMs = 0): Promise<RepoLock> {
    const key = `locks/${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    const body: LockBody = { kind, pid: process.pid, host: hostname(), time: Date.now(), what };
    const start = Date.now();
    for (;;) {
      body.time = Date.now();
      await backend.put(key, Buffer.from(JSON.stringify(body)));
      const blocker = await findConflict(backend, key, kind);
      if (!blocker) {
        const lock = new RepoLock(backend, key, body);
        lock.timer = setInterval(() => {
          lock.body.time = Date.now();
          backend.put(key, Buffer.from(JSON.stringify(lock.body))).catch(() => {});
        }, REFRESH_MS);
        lock.timer.unref();
        return lock;
      }
      await backend.delete(key);
      if (Date.now() - start >= waitMs) {
        throw new StrataError(
          'DENIED',
          `the library is busy: ${blocker.kind} lock held by ${blocker.what ?? 'a process'} (pid ${blocker.pid} on ${blocker.host})`,
          { file: backend.name, structure: 'repository lock' },
        );
      }
      await new Promise((r) => setTimeout(r, POLL_MS + Math.floor(Math.random() * POLL_MS)));
    }
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.backend.delete(this.key);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A live lock that conflicts with taking `kind` (stale locks are removed on the way). */
async function findConflict(backend: Backend, mine: string, kind: LockKind): Promise<LockBody | undefined> {
  for (const e of await backend.list('locks/')) {
    if (e.key === mine) continue;
    let body: LockBody;
    try {
      body = JSON.parse(Buffer.from(await backend.get(e.key)).toString('utf8')) as LockBody;
    } catch {
      continue; // vanished or half-visible (cannot happen with atomic puts): ignore
    }
    const stale =
      Date.now() - Number(body.time) > STALE_MS ||
      (body.host === hostname() && body.pid !== process.pid && !alive(body.pid));
    if (stale) {
      await backend.delete(e.key).catch(() => {});
      continue;
    }
    if (kind === 'exclusive' || body.kind === 'exclusive') return body;
  }
  return undefined;
}
