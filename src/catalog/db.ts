import { StrataError } from '../util/errors.js';
import { sqliteDatabaseClass } from '../util/sqlite.js';

/**
 * The catalog's one query layer. Callers write portable SQL (plain CREATE TABLE with
 * TEXT/BIGINT/INTEGER, `?` placeholders, ON CONFLICT upserts, explicit transactions) and
 * get rows as plain objects. SQLite (better-sqlite3) is the embedded default; a
 * PostgreSQL implementation of this interface only has to turn `?` into `$n`
 * (`toPostgres`) and run the same statements.
 */
export type SqlValue = string | number | null;
export type Row = Record<string, SqlValue>;

export interface Db {
  readonly dialect: 'sqlite' | 'postgres';
  all<T = Row>(sql: string, params?: SqlValue[]): Promise<T[]>;
  get<T = Row>(sql: string, params?: SqlValue[]): Promise<T | undefined>;
  run(sql: string, params?: SqlValue[]): Promise<{ changes: number }>;
  /**
   * `fn` on each row of a query as it is read, when the database can hand rows over one at
   * a time (SQLite): a scan whose rows are mostly dropped needs no array of them all.
   * Without it, callers take `all`.
   */
  each?<T = Row>(sql: string, params: SqlValue[], fn: (row: T) => void): Promise<void>;
  /**
   * Run `fn` in one transaction: all its statements or none. PostgreSQL may run `fn` again
   * after a serialization failure, so `fn` touches only the database. `lock` names an
   * exclusive lock held for the transaction (migrations; SQLite's write lock already is one).
   */
  transaction<T>(fn: (tx: Db) => Promise<T>, opts?: TransactionOptions): Promise<T>;
  /**
   * A value that changes whenever the catalog may have changed, by this connection or any
   * other process's (undefined: not known, so nothing may be cached on it). What a reader
   * computed from the catalog stays true while the value is the one read before it began:
   * the service caches token checks and answers on it. Writes in `quiet` transactions
   * (logs, counters no answer reads) do not change it here.
   */
  changeStamp?(): string | undefined;
  close(): Promise<void>;
}

export interface TransactionOptions {
  /** An exclusive lock held for the transaction (migrations; SQLite's write lock already is one). */
  lock?: string;
  /** It writes only what no cached answer reads (the request log, rate counters): changeStamp() stays. */
  quiet?: boolean;
}

/** `?` placeholders to PostgreSQL's `$1, $2 ...` (outside string literals). */
export function toPostgres(sql: string): string {
  let n = 0;
  let out = '';
  let inStr = false;
  for (const ch of sql) {
    if (ch === "'") inStr = !inStr;
    out += ch === '?' && !inStr ? `$${++n}` : ch;
  }
  return out;
}

interface Statement {
  all(...p: SqlValue[]): unknown[];
  iterate(...p: SqlValue[]): IterableIterator<unknown>;
  get(...p: SqlValue[]): unknown;
  run(...p: SqlValue[]): { changes: number };
}
interface SqliteDatabase {
  prepare(sql: string): Statement;
  exec(sql: string): void;
  pragma(s: string): unknown;
  close(): void;
}

/** SQLite through better-sqlite3 (synchronous underneath; the async face is for PostgreSQL's sake). */
export class SqliteDb implements Db {
  readonly dialect = 'sqlite' as const;
  private readonly stmts = new Map<string, Statement>();
  private depth = 0;
  /**
   * Commits (and statements) of this connection: SQLite's data_version moves only for other
   * connections' commits, so this connection's own are counted here for changeStamp().
   */
  private writes = 0;
  /** The face a quiet transaction's body gets: its statements leave `writes` alone. */
  private readonly quietFace: Db = {
    dialect: 'sqlite',
    all: (sql, params) => this.all(sql, params),
    get: (sql, params) => this.get(sql, params),
    run: (sql, params) => this.runCounted(sql, params, false),
    transaction: (fn) => fn(this.quietFace),
    close: () => this.close(),
  };

  private constructor(private readonly db: SqliteDatabase) {}

  static open(file: string): SqliteDb {
    const Database = sqliteDatabaseClass() as unknown as new (f: string, o?: { timeout?: number }) => SqliteDatabase;
    let db: SqliteDatabase;
    try {
      db = new Database(file, { timeout: 30_000 });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
    } catch (e) {
      throw new StrataError('IO', `cannot open the catalog: ${(e as Error).message}`, { file });
    }
    return new SqliteDb(db);
  }

  private prep(sql: string): Statement {
    let s = this.stmts.get(sql);
    if (!s) this.stmts.set(sql, (s = this.db.prepare(sql)));
    return s;
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return this.prep(sql).all(...params) as T[];
  }

  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return this.prep(sql).get(...params) as T | undefined;
  }

  async each<T>(sql: string, params: SqlValue[], fn: (row: T) => void): Promise<void> {
    for (const r of this.prep(sql).iterate(...params)) fn(r as T);
  }

  async run(sql: string, params: SqlValue[] = []): Promise<{ changes: number }> {
    return this.runCounted(sql, params, true);
  }

  private async runCounted(sql: string, params: SqlValue[] = [], count: boolean): Promise<{ changes: number }> {
    try {
      if (params.length === 0 && /^\s*create\s/i.test(sql)) {
        this.db.exec(sql);
        return { changes: 0 };
      }
      const r = this.prep(sql).run(...params);
      return { changes: Number(r.changes) };
    } finally {
      if (count) this.writes++;
    }
  }

  async transaction<T>(fn: (tx: Db) => Promise<T>, opts?: TransactionOptions): Promise<T> {
    const face = opts?.quiet ? this.quietFace : this;
    if (this.depth > 0) return fn(face);
    // BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of failing mid-way.
    this.db.exec('BEGIN IMMEDIATE');
    this.depth++;
    let wrote = !opts?.quiet;
    const before = this.writes;
    try {
      const r = await fn(face);
      this.db.exec('COMMIT');
      return r;
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    } finally {
      this.depth--;
      // another request's statement may have run inside this transaction (one connection)
      if (this.writes !== before) wrote = true;
      if (wrote) this.writes++;
    }
  }

  /** `data_version` (other connections' commits) and this connection's own writes. */
  changeStamp(): string {
    const r = this.prep('PRAGMA data_version').get() as { data_version: number };
    return `${r.data_version}:${this.writes}`;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
