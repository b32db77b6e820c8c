import type { Db } from './db.js';

/**
 * Versioned schema changes, the same for SQLite and PostgreSQL: each migration is applied
 * once, in its own transaction, and recorded in schema_migrations. Several processes may
 * start at once (servers sharing one PostgreSQL catalog): the transactions hold one named
 * lock, so the second process finds the first one's record and skips.
 *
 * Statements are portable SQL (see db.ts). A migration, once released, never changes: a
 * change of schema is a new migration with a new id.
 */
export interface Migration {
  id: string;
  statements: string[];
}

const LOCK = 'strata-migrate';

export async function migrate(db: Db, migrations: Migration[]): Promise<string[]> {
  // the usual case, a catalog that has them all: one query, no lock (on PostgreSQL each
  // migration's transaction is five round trips at every start of every command)
  const have = await db.all<{ id: string }>('SELECT id FROM schema_migrations').then(
    (rows) => new Set(rows.map((r) => r.id)),
    () => undefined, // no table yet: a new catalog
  );
  if (have && migrations.every((m) => have.has(m.id))) return [];
  const applied: string[] = [];
  for (const m of migrations) {
    const did = await db.transaction(
      async (tx) => {
        await tx.run('CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied TEXT NOT NULL)');
        if (await tx.get('SELECT id FROM schema_migrations WHERE id = ?', [m.id])) return false;
        for (const s of m.statements) await tx.run(s);
        await tx.run('INSERT INTO schema_migrations (id, applied) VALUES (?, ?)', [m.id, new Date().toISOString()]);
        return true;
      },
      { lock: LOCK },
    );
    if (did) applied.push(m.id);
  }
  return applied;
}

/** Ids of the migrations recorded in `db` (empty for a new one). */
export async function appliedMigrations(db: Db): Promise<string[]> {
  await db.transaction(
    (tx) => tx.run('CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied TEXT NOT NULL)'),
    { lock: LOCK },
  );
  return (await db.all<{ id: string }>('SELECT id FROM schema_migrations ORDER BY applied, id')).map((r) => r.id);
}
