import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Pool, PoolClient, PoolConfig } from 'pg';
import { requireCached } from '../util/code-cache.js';
import { StrataError } from '../util/errors.js';
import { type Db, type SqlValue, toPostgres } from './db.js';

/**
 * The catalog on PostgreSQL (15 or newer) through `pg`, the maintained driver: the same
 * portable statements as SQLite (db.ts), `?` turned into `$n`.
 *
 * Where SQLite took the one write lock up front (BEGIN IMMEDIATE), a transaction here runs
 * SERIALIZABLE and is run again, from the start, when PostgreSQL aborts it for a
 * serialization failure or a deadlock (SQLSTATE 40001, 40P01): two servers adding the next
 * version of one image at once both compute MAX(number)+1, and one of them is retried.
 * A transaction given a `lock` name instead runs READ COMMITTED under a transaction-level
 * advisory lock (migrations: DDL beside a concurrent migrator is not serializable).
 *
 * The URL is libpq's (`postgres://user:password@host:port/db`), plus `?schema=NAME`: the
 * catalog's tables live in that schema (made when missing), so one database can hold
 * several libraries.
 */
const RETRIES = 40;
const RETRYABLE = new Set(['40001', '40P01']);
/** Connection failures: the server restarting, refusing or going away mid-query. */
const CONNECTION = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', '08001', '08004']);
const NET = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND']);

type PgModule = typeof import('pg');
let pgModule: PgModule | undefined;
/**
 * pg's Client leaves its socket open when the connection fails on our side mid-handshake (no
 * password for SCRAM: "client password must be a string"): the process then lingered until
 * the server's authentication_timeout (60 s) ended it. This one closes the socket.
 */
let closing: unknown;
function closingClient(pg: PgModule): PoolConfig['Client'] {
  if (!closing) {
    const Base = pg.Client as unknown as new (c: unknown) => object;
    closing = class extends Base {
      _handleErrorWhileConnecting(err: unknown): unknown {
        const self = this as unknown as {
          connection?: { stream?: { destroy(): void } };
        };
        const r = (
          Base.prototype as { _handleErrorWhileConnecting(e: unknown): unknown }
        )._handleErrorWhileConnecting.call(this, err);
        self.connection?.stream?.destroy();
        return r;
      }
    };
  }
  return closing as PoolConfig['Client'];
}

function loadPg(): PgModule {
  // pg is CommonJS; required on first use so SQLite-only runs never load it. The CLI's build has
  // it bundled beside it (scripts/bundle.mjs): one file, compiled with V8's code cache
  if (!pgModule) {
    const bundled = fileURLToPath(new URL('./pg.cjs', import.meta.url));
    pgModule = (existsSync(bundled) ? requireCached(bundled) : createRequire(import.meta.url)('pg')) as PgModule;
  }
  return pgModule;
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@');
  }
}

export function isPostgresUrl(s: string): boolean {
  return /^postgres(ql)?:\/\//i.test(s);
}

function pgCode(e: unknown): string | undefined {
  return (e as { code?: string })?.code;
}

function isConnectionError(e: unknown): boolean {
  const c = pgCode(e);
  return (
    (c !== undefined && (CONNECTION.has(c) || NET.has(c))) ||
    /Connection terminated|connection timeout|Client has encountered a connection error/i.test(
      (e as Error)?.message ?? '',
    )
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Statements on one checked-out client (inside a transaction). */
class PgTx implements Db {
  readonly dialect = 'postgres' as const;
  constructor(private readonly client: PoolClient) {}
  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return (await this.client.query(toPostgres(sql), params)).rows as T[];
  }
  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return (await this.client.query(toPostgres(sql), params)).rows[0] as T | undefined;
  }
  async run(sql: string, params: SqlValue[] = []): Promise<{ changes: number }> {
    return { changes: (await this.client.query(toPostgres(sql), params)).rowCount ?? 0 };
  }
  async transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
    return fn(this); // already in one
  }
  async close(): Promise<void> {}
}

/** Give back a client whose work failed with `e`: rolled back, or dropped when its connection broke. */
async function releaseFailed(client: PoolClient, e: unknown, onLost: () => void): Promise<void> {
  const broken = isConnectionError(e);
  if (!broken) await client.query('ROLLBACK').catch(() => {});
  client.off('error', onLost);
  client.release(broken ? (e as Error) : undefined);
}

/** Rows a FETCH of `each` reads at a time. */
const EACH_ROWS = 4096;

export class PgDb implements Db {
  readonly dialect = 'postgres' as const;
  private constructor(
    private readonly pool: Pool,
    readonly url: string,
    readonly schema: string | undefined,
  ) {}

  /** Connect (checking the server answers, so a refusal is one clear error at start-up). */
  static async open(url: string, opts: { max?: number } = {}): Promise<PgDb> {
    const pg = loadPg();
    const shown = redactUrl(url);
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new StrataError('USAGE', `bad catalog URL ${JSON.stringify(shown)}`);
    }
    const schema = u.searchParams.get('schema') ?? undefined;
    if (schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
      throw new StrataError('USAGE', `bad schema name ${JSON.stringify(schema)} in ${shown} (a-z, 0-9, _)`);
    }
    u.searchParams.delete('schema');
    // BIGINT (COUNT, sizes) and NUMERIC (SUM) as numbers, as SQLite gives them
    const toNumber = (v: string) => Number(v);
    const config: PoolConfig = {
      Client: closingClient(pg),
      connectionString: u.toString(),
      max: opts.max ?? 8,
      connectionTimeoutMillis: 15_000,
      application_name: 'strata',
      types: {
        getTypeParser: ((oid: number, format?: string) =>
          format === 'binary'
            ? pg.types.getTypeParser(oid, 'binary')
            : oid === 20 || oid === 1700
              ? toNumber
              : pg.types.getTypeParser(oid, 'text')) as never,
      },
      ...(schema ? { options: `-c search_path=${schema}` } : {}),
    };
    const pool = new pg.Pool(config);
    // an idle client losing its connection (server restart) must not crash the process
    pool.on('error', () => {});
    const db = new PgDb(pool, url, schema);
    try {
      // the first query checks the server answers and whether the schema is there: made (under
      // a lock, beside other servers starting) only when it is not (4 round trips a checkout paid)
      let present = true;
      if (schema) {
        const r = await pool.query('SELECT to_regnamespace($1) IS NOT NULL AS present', [schema]);
        present = r.rows[0]?.present === true;
      } else await pool.query('SELECT 1');
      if (!present) {
        await db.transaction(
          async (tx) => {
            await tx.run(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
          },
          { lock: `schema:${schema}` },
        );
      }
    } catch (e) {
      await pool.end().catch(() => {});
      throw new StrataError(
        'IO',
        `cannot use the catalog database: ${(e as Error).message}; check --catalog / STRATA_CATALOG (host, port, user; the password from the URL or PGPASSWORD) and that PostgreSQL is up`,
        { file: shown },
        { cause: e },
      );
    }
    return db;
  }

  /** A query outside a transaction, retried while the server restarts (up to ~30 s). */
  private async query(sql: string, params: SqlValue[]) {
    const text = toPostgres(sql);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.pool.query(text, params);
      } catch (e) {
        if (attempt < 30 && isConnectionError(e)) {
          await sleep(1000);
          continue;
        }
        throw this.wrap(e);
      }
    }
  }

  private wrap(e: unknown): unknown {
    if (isConnectionError(e)) {
      return new StrataError(
        'IO',
        `catalog database: ${(e as Error).message}`,
        { file: redactUrl(this.url) },
        { cause: e },
      );
    }
    return e;
  }

  async all<T>(sql: string, params: SqlValue[] = []): Promise<T[]> {
    return (await this.query(sql, params)).rows as T[];
  }
  async get<T>(sql: string, params: SqlValue[] = []): Promise<T | undefined> {
    return (await this.query(sql, params)).rows[0] as T | undefined;
  }
  async run(sql: string, params: SqlValue[] = []): Promise<{ changes: number }> {
    return { changes: (await this.query(sql, params)).rowCount ?? 0 };
  }

  /**
   * `fn` on each row of a query, read through a server-side cursor EACH_ROWS rows at a time
   * (in a READ ONLY transaction on one client): a scan of millions of rows holds one page.
   * A lost connection before the first row was handed over is retried as `query` does;
   * after it, the error is the caller's (rows were already given).
   */
  async each<T>(sql: string, params: SqlValue[], fn: (row: T) => void): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      let client: PoolClient | undefined;
      let given = false;
      const onLost = () => {};
      try {
        client = await this.pool.connect();
        client.on('error', onLost);
        await client.query('BEGIN READ ONLY');
        await client.query(`DECLARE strata_each NO SCROLL CURSOR FOR ${toPostgres(sql)}`, params);
        for (;;) {
          const r = await client.query(`FETCH ${EACH_ROWS} FROM strata_each`);
          for (const row of r.rows) {
            given = true;
            fn(row as T);
          }
          if (r.rows.length < EACH_ROWS) break;
        }
        await client.query('COMMIT');
        client.off('error', onLost);
        client.release();
        return;
      } catch (e) {
        if (client) await releaseFailed(client, e, onLost);
        if (!given && attempt < 30 && isConnectionError(e)) {
          await sleep(1000);
          continue;
        }
        throw this.wrap(e);
      }
    }
  }

  /**
   * Run `fn` in one transaction (SERIALIZABLE, retried on serialization failures and on a
   * connection lost before COMMIT was sent; `fn` must only touch the database, as it may run
   * more than once). With `lock`, READ COMMITTED under an advisory lock of that name.
   */
  async transaction<T>(fn: (tx: Db) => Promise<T>, opts: { lock?: string } = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let client: PoolClient | undefined;
      let committing = false;
      // A checked-out client has no pool listener: a connection the server ends between two
      // queries (a restart) emits 'error' on the client, which would kill the process. The
      // next query on it fails, and that failure is what the retry below sees.
      const onLost = () => {};
      try {
        client = await this.pool.connect();
        client.on('error', onLost);
        if (opts.lock) {
          await client.query('BEGIN ISOLATION LEVEL READ COMMITTED');
          await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [opts.lock]);
        } else await client.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
        const r = await fn(new PgTx(client));
        committing = true;
        await client.query('COMMIT');
        client.off('error', onLost);
        client.release();
        return r;
      } catch (e) {
        if (client) await releaseFailed(client, e, onLost);
        const code = pgCode(e);
        // a lost connection during COMMIT may have committed: not safe to run again
        const again = (code !== undefined && RETRYABLE.has(code)) || (isConnectionError(e) && !committing);
        if (again && attempt < RETRIES + (isConnectionError(e) ? 18 : 0)) {
          await sleep(isConnectionError(e) ? 1000 : Math.min(1000, 5 * 2 ** attempt) * Math.random());
          continue;
        }
        throw this.wrap(e);
      }
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
