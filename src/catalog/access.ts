import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { StrataError } from '../util/errors.js';
import type { Db, SqlValue } from './db.js';
import { migrate as applyMigrations } from './migrations.js';

/**
 * Accounts and access control of a shared library (the serve layer's): users, projects
 * with a role per member, API tokens, which project owns an image and who else may read
 * it, the blobs each project has uploaded, and the request log.
 *
 * Tables come by numbered migrations, each applied once in its own transaction and
 * recorded in schema_migrations; portable SQL only (see db.ts): no AUTOINCREMENT, no
 * SQLite-only types, so the same statements run on PostgreSQL.
 */
/** The owning project or visibility of the image named by `col`; its `?` is the default (no image_access row). */
const ownerExpr = (what: 'project' | 'visibility', col: string, joined?: string) =>
  joined
    ? `COALESCE(${joined}.${what}, ?)`
    : `COALESCE((SELECT a.${what} FROM image_access a WHERE a.image = ${col}), ?)`;

export const ACCESS_MIGRATIONS: Array<{ id: string; statements: string[] }> = [
  {
    id: 'access-1',
    statements: [
      `CREATE TABLE IF NOT EXISTS users (
         name TEXT PRIMARY KEY,
         created TEXT NOT NULL,
         admin INTEGER NOT NULL)`,
      `CREATE TABLE IF NOT EXISTS projects (
         name TEXT PRIMARY KEY,
         created TEXT NOT NULL)`,
      `CREATE TABLE IF NOT EXISTS memberships (
         project TEXT NOT NULL,
         username TEXT NOT NULL,
         role TEXT NOT NULL,
         PRIMARY KEY (project, username))`,
      `CREATE TABLE IF NOT EXISTS tokens (
         id TEXT PRIMARY KEY,
         hash TEXT NOT NULL UNIQUE,
         username TEXT NOT NULL,
         project TEXT,
         scope TEXT NOT NULL,
         created TEXT NOT NULL,
         expires TEXT,
         revoked TEXT)`,
      `CREATE TABLE IF NOT EXISTS image_access (
         image TEXT PRIMARY KEY,
         project TEXT NOT NULL,
         visibility TEXT NOT NULL)`,
      'CREATE INDEX IF NOT EXISTS image_access_project ON image_access (project)',
      `CREATE TABLE IF NOT EXISTS image_members (
         image TEXT NOT NULL,
         project TEXT NOT NULL,
         status TEXT NOT NULL,
         created TEXT NOT NULL,
         updated TEXT NOT NULL,
         PRIMARY KEY (image, project))`,
      `CREATE TABLE IF NOT EXISTS held_blobs (
         project TEXT NOT NULL,
         digest TEXT NOT NULL,
         created TEXT NOT NULL,
         PRIMARY KEY (project, digest))`,
      `CREATE TABLE IF NOT EXISTS request_log (
         at TEXT NOT NULL,
         username TEXT,
         project TEXT,
         token TEXT,
         method TEXT NOT NULL,
         route TEXT NOT NULL,
         op TEXT NOT NULL,
         image TEXT,
         version INTEGER,
         status INTEGER NOT NULL,
         bytes_in BIGINT NOT NULL,
         bytes_out BIGINT NOT NULL,
         micros BIGINT NOT NULL)`,
      'CREATE INDEX IF NOT EXISTS request_log_at ON request_log (at)',
    ],
  },
  {
    // requests per rate-limit key (a token, or an address) per minute, shared by every
    // server process on this catalog; uploads' age (held_blobs.created) now guards them from gc
    id: 'access-2',
    statements: [
      `CREATE TABLE IF NOT EXISTS rate_windows (
         rkey TEXT NOT NULL,
         minute BIGINT NOT NULL,
         requests BIGINT NOT NULL,
         PRIMARY KEY (rkey, minute))`,
      'CREATE INDEX IF NOT EXISTS held_blobs_created ON held_blobs (created)',
    ],
  },
];

/** Apply the migrations not applied yet, each in one transaction (see migrations.ts). */
export async function migrate(db: Db, migrations = ACCESS_MIGRATIONS): Promise<string[]> {
  return applyMigrations(db, migrations);
}

export type Role = 'admin' | 'member' | 'reader';
export type Scope = 'read' | 'write';
export type Visibility = 'private' | 'shared' | 'public';
export type MemberStatus = 'pending' | 'accepted' | 'rejected';
export const ROLES: readonly Role[] = ['admin', 'member', 'reader'];
export const VISIBILITIES: readonly Visibility[] = ['private', 'shared', 'public'];

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export function checkAccountName(what: 'user' | 'project', name: string): void {
  if (!NAME.test(name)) {
    throw new StrataError('USAGE', `bad ${what} name ${JSON.stringify(name)} (lower-case letters, digits, . _ -)`);
  }
}

/** Who a request acts as: a user through one project's token, or nobody (anonymous). */
export interface Principal {
  user: string | null;
  /** The token's project (null: anonymous, or a server admin's token without one). */
  project: string | null;
  /** The user's role in `project`. */
  role: Role | null;
  scope: Scope;
  admin: boolean;
  tokenId: string | null;
}

export const ANONYMOUS: Principal = {
  user: null,
  project: null,
  role: null,
  scope: 'read',
  admin: false,
  tokenId: null,
};

export interface TokenRow {
  id: string;
  user: string;
  project: string | null;
  scope: Scope;
  created: string;
  expires: string | null;
  revoked: string | null;
}

/** One line of the request log (the analytics work reads the table). */
export interface RequestLogRow {
  /** ISO time the request was answered (default: now). */
  at?: string;
  user: string | null;
  project: string | null;
  token: string | null;
  method: string;
  route: string;
  op: string;
  image: string | null;
  version: number | null;
  status: number;
  bytesIn: number;
  bytesOut: number;
  micros: number;
}

export interface ImageAccess {
  image: string;
  project: string;
  visibility: Visibility;
}

export interface MemberRow {
  image: string;
  project: string;
  status: MemberStatus;
  created: string;
  updated: string;
}

/** Token text: a prefix people can grep for, then 32 random bytes. Only its sha256 is kept. */
const TOKEN_PREFIX = 'strata_';
const hashToken = (t: string) => createHash('sha256').update(t).digest('hex');

/** `30d`, `12h`, `90m`, `3600s` -> milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d{1,6})([smhdw])$/.exec(s.trim());
  if (!m) throw new StrataError('USAGE', `bad duration ${JSON.stringify(s)} (e.g. 30d, 12h, 90m)`);
  const unit = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 }[m[2] as 's' | 'm' | 'h' | 'd' | 'w'];
  return Number(m[1]) * unit;
}

export class Access {
  /**
   * Tokens checked while the catalog has not changed since (Db.changeStamp): a revocation,
   * an expiry, a user or membership change anywhere (another server process, the local
   * CLI) changes the stamp, and the next request checks the token in the catalog again;
   * an expiry is checked on every use. Only accepted tokens are kept, at most 4096.
   */
  private readonly checked = new Map<string, { stamp: string; p: Principal; expires: number }>();

  private constructor(readonly db: Db) {}

  static async open(db: Db): Promise<Access> {
    await migrate(db);
    return new Access(db);
  }

  // ---- users and projects

  async addUser(name: string, opts: { admin?: boolean } = {}): Promise<void> {
    checkAccountName('user', name);
    const r = await this.db.run(
      'INSERT INTO users (name, created, admin) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING',
      [name, new Date().toISOString(), opts.admin ? 1 : 0],
    );
    if (r.changes === 0) {
      if (opts.admin) await this.db.run('UPDATE users SET admin = 1 WHERE name = ?', [name]);
    }
  }

  async user(name: string): Promise<{ name: string; admin: boolean; created: string } | undefined> {
    const r = await this.db.get<{ name: string; admin: number; created: string }>(
      'SELECT name, admin, created FROM users WHERE name = ?',
      [name],
    );
    return r ? { name: r.name, admin: Number(r.admin) === 1, created: r.created } : undefined;
  }

  async users(): Promise<Array<{ name: string; admin: boolean; projects: Array<{ project: string; role: Role }> }>> {
    const us = await this.db.all<{ name: string; admin: number }>('SELECT name, admin FROM users ORDER BY name');
    const ms = await this.db.all<{ project: string; username: string; role: Role }>(
      'SELECT project, username, role FROM memberships ORDER BY project',
    );
    return us.map((u) => ({
      name: u.name,
      admin: Number(u.admin) === 1,
      projects: ms.filter((m) => m.username === u.name).map((m) => ({ project: m.project, role: m.role })),
    }));
  }

  async addProject(name: string): Promise<void> {
    checkAccountName('project', name);
    await this.db.run('INSERT INTO projects (name, created) VALUES (?, ?) ON CONFLICT (name) DO NOTHING', [
      name,
      new Date().toISOString(),
    ]);
  }

  async projectExists(name: string): Promise<boolean> {
    return !!(await this.db.get('SELECT name FROM projects WHERE name = ?', [name]));
  }

  async projects(): Promise<string[]> {
    return (await this.db.all<{ name: string }>('SELECT name FROM projects ORDER BY name')).map((r) => r.name);
  }

  /** Give `user` `role` in `project` (both must exist). */
  async setRole(project: string, user: string, role: Role): Promise<void> {
    if (!ROLES.includes(role)) throw new StrataError('USAGE', `bad role ${role} (admin, member, reader)`);
    if (!(await this.user(user))) throw new StrataError('NOT_FOUND', `no user ${user}`);
    if (!(await this.projectExists(project))) throw new StrataError('NOT_FOUND', `no project ${project}`);
    await this.db.run(
      'INSERT INTO memberships (project, username, role) VALUES (?, ?, ?) ON CONFLICT (project, username) DO UPDATE SET role = excluded.role',
      [project, user, role],
    );
  }

  async removeRole(project: string, user: string): Promise<void> {
    await this.db.run('DELETE FROM memberships WHERE project = ? AND username = ?', [project, user]);
  }

  async role(project: string, user: string): Promise<Role | undefined> {
    const r = await this.db.get<{ role: Role }>('SELECT role FROM memberships WHERE project = ? AND username = ?', [
      project,
      user,
    ]);
    return r?.role;
  }

  // ---- tokens

  /**
   * A new token for `user` in `project` (a server admin may have none): the secret is
   * returned here, once; only its sha256 is stored.
   */
  async createToken(opts: {
    user: string;
    project?: string;
    scope: Scope;
    expiresInMs?: number;
    now?: number;
  }): Promise<{ token: string; row: TokenRow }> {
    if (opts.scope !== 'read' && opts.scope !== 'write') throw new StrataError('USAGE', 'scope is read or write');
    const u = await this.user(opts.user);
    if (!u) throw new StrataError('NOT_FOUND', `no user ${opts.user}`);
    if (opts.project === undefined) {
      if (!u.admin) throw new StrataError('USAGE', 'a token needs --project (only a server admin may have none)');
    } else if (!(await this.role(opts.project, opts.user))) {
      throw new StrataError('USAGE', `user ${opts.user} is not a member of project ${opts.project}`);
    }
    const now = opts.now ?? Date.now();
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const hash = hashToken(token);
    const row: TokenRow = {
      id: hash.slice(0, 16),
      user: opts.user,
      project: opts.project ?? null,
      scope: opts.scope,
      created: new Date(now).toISOString(),
      expires: opts.expiresInMs !== undefined ? new Date(now + opts.expiresInMs).toISOString() : null,
      revoked: null,
    };
    await this.db.run(
      'INSERT INTO tokens (id, hash, username, project, scope, created, expires, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      [row.id, hash, row.user, row.project, row.scope, row.created, row.expires, null],
    );
    return { token, row };
  }

  async revokeToken(id: string): Promise<boolean> {
    const r = await this.db.run('UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL', [
      new Date().toISOString(),
      id,
    ]);
    return r.changes > 0;
  }

  async tokens(user?: string): Promise<TokenRow[]> {
    const rows = await this.db.all<{
      id: string;
      username: string;
      project: string | null;
      scope: Scope;
      created: string;
      expires: string | null;
      revoked: string | null;
    }>(
      `SELECT id, username, project, scope, created, expires, revoked FROM tokens${user ? ' WHERE username = ?' : ''} ORDER BY created`,
      user ? [user] : [],
    );
    return rows.map((r) => ({
      id: r.id,
      user: r.username,
      project: r.project,
      scope: r.scope,
      created: r.created,
      expires: r.expires,
      revoked: r.revoked,
    }));
  }

  /** The principal a bearer token stands for; undefined when unknown, revoked, expired or orphaned. */
  async authenticate(token: string, now = Date.now()): Promise<Principal | undefined> {
    if (!token.startsWith(TOKEN_PREFIX) || token.length > 200) return undefined;
    const stamp = this.db.changeStamp?.();
    if (stamp !== undefined) {
      const c = this.checked.get(token);
      if (c && c.stamp === stamp && c.expires > now) return c.p;
    }
    const p = await this.authenticateInCatalog(token, now);
    if (stamp !== undefined && p) {
      if (this.checked.size >= 4096) this.checked.clear();
      this.checked.set(token, { stamp, ...p });
    }
    return p?.p;
  }

  private async authenticateInCatalog(
    token: string,
    now: number,
  ): Promise<{ p: Principal; expires: number } | undefined> {
    const hash = hashToken(token);
    // one query (the token, its user and the user's role in its project): it runs before
    // every request of the service
    const r = await this.db.get<{
      id: string;
      hash: string;
      username: string;
      project: string | null;
      scope: Scope;
      expires: string | null;
      revoked: string | null;
      admin: number | null;
      role: Role | null;
    }>(
      `SELECT t.id, t.hash, t.username, t.project, t.scope, t.expires, t.revoked, u.admin, m.role
         FROM tokens t JOIN users u ON u.name = t.username
         LEFT JOIN memberships m ON m.project = t.project AND m.username = t.username
        WHERE t.hash = ?`,
      [hash],
    );
    if (!r || !timingSafeEqual(Buffer.from(r.hash), Buffer.from(hash))) return undefined;
    if (r.revoked !== null) return undefined;
    if (r.expires !== null && Date.parse(r.expires) <= now) return undefined;
    let role: Role | null = null;
    if (r.project !== null) {
      role = r.role ?? null;
      if (!role) return undefined; // no longer a member: the token is dead
    }
    const p: Principal = Object.freeze({
      user: r.username,
      project: r.project,
      role,
      scope: r.scope,
      admin: Number(r.admin) === 1,
      tokenId: r.id,
    });
    return { p, expires: r.expires === null ? Number.POSITIVE_INFINITY : Date.parse(r.expires) };
  }

  // ---- image ownership, visibility, members

  /**
   * "The image named by column `col` is readable by `p`" as an SQL condition, for lists
   * and searches that go over many images: the catalog filters (and pages) instead of the
   * service reading every image's owner row and asking Policy.canRead of each. It must say
   * what Policy.canRead says (serve/http/policy.ts; the service's access matrix checks the
   * lists and search against the single-image routes): a server admin reads all; anyone a
   * public image; a member of the owning project (any role) its images; a project an image
   * is shared with, once accepted. Images with no image_access row belong to `defaults`.
   */
  readableWhere(
    p: Principal,
    defaults: { project: string; visibility: Visibility },
    col: string,
    /** The alias of image_access rows already joined on `col` (else a subquery reads them). */
    joined?: string,
  ): { sql: string; params: SqlValue[] } {
    if (p.admin) return { sql: '1 = 1', params: [] };
    const vis = ownerExpr('visibility', col, joined);
    const params: SqlValue[] = [defaults.visibility];
    let sql = `(${vis} = 'public'`;
    if (p.project !== null && p.role !== null) {
      sql += ` OR ${ownerExpr('project', col, joined)} = ?`;
      params.push(defaults.project, p.project);
    }
    if (p.project !== null) {
      sql += ` OR (${vis} = 'shared' AND EXISTS (SELECT 1 FROM image_members m WHERE m.image = ${col} AND m.project = ? AND m.status = 'accepted'))`;
      params.push(defaults.visibility, p.project);
    }
    return { sql: `${sql})`, params };
  }

  /**
   * A page of the active images `p` may read, in name order, with their owner and
   * visibility, and how many there are in all: two queries, whatever the library's size.
   * `prefix`, `project` and `visibility` narrow the list.
   */
  async readableImages(
    p: Principal,
    defaults: { project: string; visibility: Visibility },
    q: { prefix?: string; project?: string; visibility?: string; limit: number; offset: number },
  ): Promise<{ items: ImageAccess[]; total: number }> {
    const r = this.readableWhere(p, defaults, 'i.name', 'a');
    const conds = ["i.state = 'active'", r.sql];
    const params = [...r.params];
    if (q.prefix !== undefined && q.prefix !== '') {
      conds.push('substr(i.name, 1, ?) = ?');
      params.push(q.prefix.length, q.prefix);
    }
    if (q.project !== undefined) {
      conds.push(`${ownerExpr('project', 'i.name', 'a')} = ?`);
      params.push(defaults.project, q.project);
    }
    if (q.visibility !== undefined) {
      conds.push(`${ownerExpr('visibility', 'i.name', 'a')} = ?`);
      params.push(defaults.visibility, q.visibility);
    }
    const from = `FROM images i LEFT JOIN image_access a ON a.image = i.name WHERE ${conds.join(' AND ')}`;
    // the page in name order (SQLite walks the names' index and stops at the page's end),
    // then the count alone when the page does not tell it: two plain queries cost less than
    // one with a window count (which materialises and sorts every readable image first)
    const rows = await this.db.all<{ image: string; project: string; visibility: Visibility }>(
      `SELECT i.name AS image, ${ownerExpr('project', 'i.name', 'a')} AS project,
              ${ownerExpr('visibility', 'i.name', 'a')} AS visibility
         ${from} ORDER BY i.name LIMIT ? OFFSET ?`,
      [defaults.project, defaults.visibility, ...params, q.limit, q.offset],
    );
    const total =
      rows.length < q.limit && (rows.length > 0 || q.offset === 0)
        ? q.offset + rows.length
        : Number((await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n ${from}`, params))?.n ?? 0);
    return { items: rows.map(({ image, project, visibility }) => ({ image, project, visibility })), total };
  }

  async imageAccess(image: string): Promise<ImageAccess | undefined> {
    return this.db.get<ImageAccess>('SELECT image, project, visibility FROM image_access WHERE image = ?', [image]);
  }

  async allImageAccess(): Promise<Map<string, ImageAccess>> {
    const rows = await this.db.all<ImageAccess>('SELECT image, project, visibility FROM image_access');
    return new Map(rows.map((r) => [r.image, r]));
  }

  async setImageAccess(image: string, project: string, visibility: Visibility): Promise<void> {
    if (!VISIBILITIES.includes(visibility)) throw new StrataError('USAGE', `bad visibility ${visibility}`);
    await this.db.run(
      'INSERT INTO image_access (image, project, visibility) VALUES (?, ?, ?) ON CONFLICT (image) DO UPDATE SET project = excluded.project, visibility = excluded.visibility',
      [image, project, visibility],
    );
  }

  async dropImage(image: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run('DELETE FROM image_access WHERE image = ?', [image]);
      await tx.run('DELETE FROM image_members WHERE image = ?', [image]);
    });
  }

  /** Images with no owner yet (checked in locally) given to `project` with `visibility`. */
  async adoptImages(names: string[], project: string, visibility: Visibility): Promise<number> {
    let n = 0;
    for (const name of names) {
      const r = await this.db.run(
        'INSERT INTO image_access (image, project, visibility) VALUES (?, ?, ?) ON CONFLICT (image) DO NOTHING',
        [name, project, visibility],
      );
      n += r.changes;
    }
    return n;
  }

  async members(image: string): Promise<MemberRow[]> {
    return this.db.all<MemberRow>(
      'SELECT image, project, status, created, updated FROM image_members WHERE image = ? ORDER BY project',
      [image],
    );
  }

  async member(image: string, project: string): Promise<MemberRow | undefined> {
    return this.db.get<MemberRow>(
      'SELECT image, project, status, created, updated FROM image_members WHERE image = ? AND project = ?',
      [image, project],
    );
  }

  /** Images shared with `project` and accepted by it. */
  /** Whether `project` accepted the share of `image`. */
  async isAccepted(image: string, project: string): Promise<boolean> {
    const r = await this.db.get(
      "SELECT 1 AS x FROM image_members WHERE image = ? AND project = ? AND status = 'accepted'",
      [image, project],
    );
    return r !== undefined;
  }

  async acceptedImages(project: string): Promise<Set<string>> {
    const rows = await this.db.all<{ image: string }>(
      "SELECT image FROM image_members WHERE project = ? AND status = 'accepted'",
      [project],
    );
    return new Set(rows.map((r) => r.image));
  }

  async addMember(image: string, project: string): Promise<MemberRow> {
    const now = new Date().toISOString();
    await this.db.run(
      'INSERT INTO image_members (image, project, status, created, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT (image, project) DO NOTHING',
      [image, project, 'pending', now, now],
    );
    return (await this.member(image, project)) as MemberRow;
  }

  async setMemberStatus(image: string, project: string, status: MemberStatus): Promise<void> {
    await this.db.run('UPDATE image_members SET status = ?, updated = ? WHERE image = ? AND project = ?', [
      status,
      new Date().toISOString(),
      image,
      project,
    ]);
  }

  async removeMember(image: string, project: string): Promise<boolean> {
    return (
      (await this.db.run('DELETE FROM image_members WHERE image = ? AND project = ?', [image, project])).changes > 0
    );
  }

  // ---- blobs a project has uploaded (it holds them even before a version names them)

  async holdBlobs(project: string, digests: string[]): Promise<void> {
    if (digests.length === 0) return;
    const now = new Date().toISOString();
    // 300 rows a statement (a check-in names hundreds: one statement each was most of a
    // missing-query's time, and a round trip each on PostgreSQL); a digest once per statement
    const unique = [...new Set(digests)];
    await this.db.transaction(async (tx) => {
      for (let i = 0; i < unique.length; i += 300) {
        const part = unique.slice(i, i + 300);
        // a blob sent again (or asked about again) is in use again: its grace period restarts
        await tx.run(
          `INSERT INTO held_blobs (project, digest, created) VALUES ${part.map(() => '(?, ?, ?)').join(', ')}
           ON CONFLICT (project, digest) DO UPDATE SET created = excluded.created`,
          part.flatMap((d) => [project, d, now]),
        );
      }
    });
  }

  /** Those of `digests` that `project` holds (500 a query). */
  async heldBy(project: string, digests: string[]): Promise<Set<string>> {
    const out = new Set<string>();
    const unique = [...new Set(digests)];
    for (let i = 0; i < unique.length; i += 500) {
      const part = unique.slice(i, i + 500);
      const rows = await this.db.all<{ digest: string }>(
        `SELECT digest FROM held_blobs WHERE project = ? AND digest IN (${part.map(() => '?').join(', ')})`,
        [project, ...part],
      );
      for (const r of rows) out.add(r.digest);
    }
    return out;
  }

  /**
   * Blobs some project uploaded (or asked about) since `since` (ISO time): an upload
   * session in progress, whose chunks no version names yet. gc keeps them. Given to `fn` as
   * the rows are read where the database hands them over a few at a time (SQLite one by one,
   * PostgreSQL through a cursor; a digest more than one project holds comes once a project):
   * an upload of a million-file image holds a million of them, ~120 MB as a Set of strings.
   */
  async eachRecentlyHeld(since: string, fn: (digest: string) => void): Promise<void> {
    if (this.db.each) {
      await this.db.each<{ digest: string }>('SELECT digest FROM held_blobs WHERE created >= ?', [since], (r) =>
        fn(r.digest),
      );
      return;
    }
    const rows = await this.db.all<{ digest: string }>('SELECT DISTINCT digest FROM held_blobs WHERE created >= ?', [
      since,
    ]);
    for (const r of rows) fn(r.digest);
  }

  // ---- rate limits, shared by the server processes on this catalog

  /** Requests counted for `key` in `minute` (minutes since the epoch). */
  async requestCount(key: string, minute: number): Promise<number> {
    const r = await this.db.get<{ requests: number }>(
      'SELECT requests FROM rate_windows WHERE rkey = ? AND minute = ?',
      [key, minute],
    );
    return r ? Number(r.requests) : 0;
  }

  /** Count `n` more requests of `key` in `minute`; the total counted so far, by every process. */
  async addRequests(key: string, minute: number, n: number): Promise<number> {
    return this.db.transaction(
      async (tx) => {
        await tx.run(
          'INSERT INTO rate_windows (rkey, minute, requests) VALUES (?, ?, ?) ON CONFLICT (rkey, minute) DO UPDATE SET requests = rate_windows.requests + excluded.requests',
          [key, minute, n],
        );
        const r = await tx.get<{ requests: number }>(
          'SELECT requests FROM rate_windows WHERE rkey = ? AND minute = ?',
          [key, minute],
        );
        return r ? Number(r.requests) : n;
      },
      { quiet: true },
    );
  }

  /** Forget windows before `minute`. */
  async dropRateWindows(before: number): Promise<void> {
    await this.db.transaction((tx) => tx.run('DELETE FROM rate_windows WHERE minute < ?', [before]), { quiet: true });
  }

  // ---- the request log (the analytics work reads it)

  async logRequest(r: RequestLogRow): Promise<void> {
    await this.logRequests([r]);
  }

  /** Several rows in one transaction (one commit, one fsync: the server batches its log). */
  async logRequests(rows: RequestLogRow[]): Promise<void> {
    if (rows.length === 0) return;
    await this.db.transaction(
      async (tx) => {
        for (const r of rows) {
          await tx.run(
            `INSERT INTO request_log (at, username, project, token, method, route, op, image, version, status, bytes_in, bytes_out, micros)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
            [
              r.at ?? new Date().toISOString(),
              r.user,
              r.project,
              r.token,
              r.method,
              r.route,
              r.op,
              r.image,
              r.version,
              r.status,
              r.bytesIn,
              r.bytesOut,
              r.micros,
            ],
          );
        }
      },
      { quiet: true },
    );
  }
}
