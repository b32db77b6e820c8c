import { StrataError } from '../util/errors.js';
import type { Db } from './db.js';
import { INSPECTION_SCHEMA } from './inspection.js';
import { type Migration, migrate } from './migrations.js';
import { PROFILE_SCHEMA } from './profiles.js';

/**
 * Images, versions, tags and provenance. Portable SQL only (see db.ts). A version row
 * holds the digest of its layout manifest in the store; `parents` are the versions it was
 * derived from. Deleting marks rows 'deleted' (gc then frees their chunks).
 */
export const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS images (
     name TEXT PRIMARY KEY,
     description TEXT,
     created TEXT NOT NULL,
     state TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS versions (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     manifest TEXT NOT NULL,
     created TEXT NOT NULL,
     created_by TEXT,
     source_name TEXT,
     source_format TEXT,
     virtual_size BIGINT NOT NULL,
     used_bytes BIGINT NOT NULL,
     stored_bytes BIGINT NOT NULL,
     new_bytes BIGINT NOT NULL,
     exact INTEGER NOT NULL,
     state TEXT NOT NULL,
     PRIMARY KEY (image, number))`,
  'CREATE INDEX IF NOT EXISTS versions_manifest ON versions (manifest)',
  `CREATE TABLE IF NOT EXISTS version_parents (
     image TEXT NOT NULL,
     number INTEGER NOT NULL,
     parent_image TEXT NOT NULL,
     parent_number INTEGER NOT NULL,
     PRIMARY KEY (image, number, parent_image, parent_number))`,
  `CREATE TABLE IF NOT EXISTS tags (
     image TEXT NOT NULL,
     tag TEXT NOT NULL,
     number INTEGER NOT NULL,
     updated TEXT NOT NULL,
     PRIMARY KEY (image, tag))`,
];

/** The catalog's own migrations (accounts have theirs: ACCESS_MIGRATIONS in access.ts). */
export const CATALOG_MIGRATIONS: Migration[] = [
  { id: 'catalog-1', statements: SCHEMA },
  { id: 'inspection-1', statements: INSPECTION_SCHEMA },
  // what a version changed, in words (an edit's or commit's message; `strata log` shows it)
  { id: 'version-message-1', statements: ['ALTER TABLE versions ADD COLUMN message TEXT'] },
  // boot working-set profiles (profiles.ts); libraries whose deploy made the table on first use keep it
  { id: 'profiles-1', statements: PROFILE_SCHEMA },
];

export interface VersionRow {
  image: string;
  number: number;
  manifest: string;
  created: string;
  createdBy: string | null;
  sourceName: string | null;
  sourceFormat: string | null;
  virtualSize: number;
  usedBytes: number;
  storedBytes: number;
  newBytes: number;
  exact: boolean;
  state: 'active' | 'deleted';
  parents: Array<{ image: string; number: number }>;
  tags: string[];
  /** What this version changed, in words (edits, commits, rebases); null for plain check-ins. */
  message: string | null;
}

export interface ImageRow {
  name: string;
  description: string | null;
  created: string;
  state: string;
  versions: number;
  latest: number | null;
  tags: string[];
}

export interface NewVersion {
  image: string;
  description?: string;
  manifest: string;
  createdBy?: string;
  sourceName?: string;
  sourceFormat?: string;
  virtualSize: number;
  usedBytes: number;
  storedBytes: number;
  newBytes: number;
  exact: boolean;
  parents: Array<{ image: string; number: number }>;
  tags: string[];
  /** What this version changed, in words (kept per version; `description` is the image's). */
  message?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;
const TAG = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkImageName(name: string): void {
  if (!NAME.test(name) || name.includes('..')) {
    throw new StrataError('USAGE', `bad image name ${JSON.stringify(name)} (letters, digits, . _ - /; no ':' or '@')`);
  }
}
export function checkTag(tag: string): void {
  if (!TAG.test(tag)) {
    throw new StrataError('USAGE', `bad tag ${JSON.stringify(tag)} (letters, digits, . _ -)`);
  }
}

interface RawVersion {
  image: string;
  number: number;
  manifest: string;
  created: string;
  created_by: string | null;
  source_name: string | null;
  source_format: string | null;
  virtual_size: number;
  used_bytes: number;
  stored_bytes: number;
  new_bytes: number;
  exact: number;
  state: 'active' | 'deleted';
  message: string | null;
}

const VERSION_COLS =
  'image, number, manifest, created, created_by, source_name, source_format, virtual_size, used_bytes, stored_bytes, new_bytes, exact, state, message';

export class Catalog {
  private constructor(readonly db: Db) {}

  static async open(db: Db): Promise<Catalog> {
    await migrate(db, CATALOG_MIGRATIONS);
    return new Catalog(db);
  }

  async addVersion(v: NewVersion): Promise<VersionRow> {
    checkImageName(v.image);
    for (const t of v.tags) checkTag(t);
    const now = new Date().toISOString();
    // writers of one image queue on a named lock: on PostgreSQL, no serialization failures on its hot rows
    const number = await this.db.transaction(
      async (tx) => {
        await tx.run(
          'INSERT INTO images (name, description, created, state) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = ?',
          [v.image, v.description ?? null, now, 'active', 'active'],
        );
        if (v.description !== undefined) {
          await tx.run('UPDATE images SET description = ? WHERE name = ?', [v.description, v.image]);
        }
        const r = await tx.get<{ n: number | null }>('SELECT MAX(number) AS n FROM versions WHERE image = ?', [
          v.image,
        ]);
        const n = Number(r?.n ?? 0) + 1;
        await tx.run(`INSERT INTO versions (${VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, [
          v.image,
          n,
          v.manifest,
          now,
          v.createdBy ?? null,
          v.sourceName ?? null,
          v.sourceFormat ?? null,
          v.virtualSize,
          v.usedBytes,
          v.storedBytes,
          v.newBytes,
          v.exact ? 1 : 0,
          'active',
          v.message ?? null,
        ]);
        for (const p of v.parents) {
          await tx.run(
            'INSERT INTO version_parents (image, number, parent_image, parent_number) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
            [v.image, n, p.image, p.number],
          );
        }
        for (const t of v.tags) await this.setTagIn(tx, v.image, t, n, now);
        return n;
      },
      { lock: `image:${v.image}` },
    );
    return (await this.version(v.image, number)) as VersionRow;
  }

  private async setTagIn(tx: Db, image: string, tag: string, number: number, now: string): Promise<void> {
    await tx.run(
      'INSERT INTO tags (image, tag, number, updated) VALUES (?, ?, ?, ?) ON CONFLICT (image, tag) DO UPDATE SET number = excluded.number, updated = excluded.updated',
      [image, tag, number, now],
    );
  }

  async setTag(image: string, tag: string, number: number): Promise<void> {
    checkTag(tag);
    await this.db.transaction((tx) => this.setTagIn(tx, image, tag, number, new Date().toISOString()));
  }

  private async hydrate(r: RawVersion): Promise<VersionRow> {
    const parents = await this.db.all<{ parent_image: string; parent_number: number }>(
      'SELECT parent_image, parent_number FROM version_parents WHERE image = ? AND number = ? ORDER BY parent_image, parent_number',
      [r.image, r.number],
    );
    const tags = await this.db.all<{ tag: string }>(
      'SELECT tag FROM tags WHERE image = ? AND number = ? ORDER BY tag',
      [r.image, r.number],
    );
    return {
      image: r.image,
      number: Number(r.number),
      manifest: r.manifest,
      created: r.created,
      createdBy: r.created_by,
      sourceName: r.source_name,
      sourceFormat: r.source_format,
      virtualSize: Number(r.virtual_size),
      usedBytes: Number(r.used_bytes),
      storedBytes: Number(r.stored_bytes),
      newBytes: Number(r.new_bytes),
      exact: Number(r.exact) === 1,
      state: r.state,
      parents: parents.map((p) => ({ image: p.parent_image, number: Number(p.parent_number) })),
      tags: tags.map((t) => t.tag),
      message: r.message ?? null,
    };
  }

  async version(image: string, number: number): Promise<VersionRow | undefined> {
    const r = await this.db.get<RawVersion>(`SELECT ${VERSION_COLS} FROM versions WHERE image = ? AND number = ?`, [
      image,
      number,
    ]);
    return r ? this.hydrate(r) : undefined;
  }

  async versions(image: string, includeDeleted = false): Promise<VersionRow[]> {
    const rows = await this.db.all<RawVersion>(
      `SELECT ${VERSION_COLS} FROM versions WHERE image = ?${includeDeleted ? '' : " AND state = 'active'"} ORDER BY number`,
      [image],
    );
    return Promise.all(rows.map((r) => this.hydrate(r)));
  }

  async images(): Promise<ImageRow[]> {
    return this.imageRows();
  }

  /** Names of the active images, in order (cheap: for filtering before `imagesNamed`). */
  async imageNames(): Promise<string[]> {
    const rows = await this.db.all<{ name: string }>("SELECT name FROM images WHERE state = 'active' ORDER BY name");
    return rows.map((r) => r.name);
  }

  /** The active images of these names, in name order (a page of a list filtered by name first). */
  async imagesNamed(names: string[]): Promise<ImageRow[]> {
    const out: ImageRow[] = [];
    for (let i = 0; i < names.length; i += 500) out.push(...(await this.imageRows(names.slice(i, i + 500))));
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Active images (those named, when `names` is given) with their version counts and
   * tags: two queries whatever the number of images (one image's lookup used to read them
   * all, and the tags of each with a query apiece; on a library of 500 images that was 500
   * queries behind every request of the service). Counts by subquery on the versions key,
   * not a GROUP BY over a join (half the time on SQLite: no temporary b-trees).
   */
  private async imageRows(names?: string[]): Promise<ImageRow[]> {
    if (names?.length === 0) return [];
    const marks = names === undefined ? '' : names.map(() => '?').join(', ');
    const rows = await this.db.all<{
      name: string;
      description: string | null;
      created: string;
      state: string;
      n: number;
      latest: number | null;
    }>(
      `SELECT i.name, i.description, i.created, i.state,
              (SELECT COUNT(*) FROM versions v WHERE v.image = i.name AND v.state = 'active') AS n,
              (SELECT MAX(v.number) FROM versions v WHERE v.image = i.name AND v.state = 'active') AS latest
         FROM images i
        WHERE i.state = 'active'${names === undefined ? '' : ` AND i.name IN (${marks})`} ORDER BY i.name`,
      names ?? [],
    );
    if (rows.length === 0) return [];
    const tagRows = await this.db.all<{ image: string; tag: string; number: number }>(
      `SELECT image, tag, number FROM tags${names === undefined ? '' : ` WHERE image IN (${marks})`} ORDER BY image, tag`,
      names ?? [],
    );
    const tags = new Map<string, string[]>();
    for (const t of tagRows) {
      let l = tags.get(t.image);
      if (!l) tags.set(t.image, (l = []));
      l.push(`${t.tag}@${t.number}`);
    }
    return rows.map((r) => ({
      name: r.name,
      description: r.description,
      created: r.created,
      state: r.state,
      versions: Number(r.n),
      latest: r.latest === null ? null : Number(r.latest),
      tags: tags.get(r.name) ?? [],
    }));
  }

  /**
   * A REF: `NAME` (latest active version), `NAME:TAG`, `NAME@N`, or a prefix (>= 6 hex
   * digits) of a version's manifest digest.
   */
  async resolve(ref: string): Promise<VersionRow> {
    const fail = (why: string) => new StrataError('NOT_FOUND', `${why}: ${ref}`, { structure: 'catalog' });
    const at = ref.lastIndexOf('@');
    if (at > 0) {
      const n = Number(ref.slice(at + 1));
      if (!Number.isSafeInteger(n) || n < 1) throw new StrataError('USAGE', `bad version number in ${ref}`);
      const v = await this.version(ref.slice(0, at), n);
      if (v?.state !== 'active') throw fail('no such version');
      return v;
    }
    const colon = ref.lastIndexOf(':');
    if (colon > 0) {
      const image = ref.slice(0, colon);
      const t = await this.db.get<{ number: number }>('SELECT number FROM tags WHERE image = ? AND tag = ?', [
        image,
        ref.slice(colon + 1),
      ]);
      if (!t) throw fail('no such tag');
      const v = await this.version(image, Number(t.number));
      if (v?.state !== 'active') throw fail('tag points at a deleted version');
      return v;
    }
    const latest = await this.db.get<{ n: number | null }>(
      "SELECT MAX(number) AS n FROM versions WHERE image = ? AND state = 'active'",
      [ref],
    );
    if (latest?.n !== null && latest?.n !== undefined) return (await this.version(ref, Number(latest.n))) as VersionRow;
    if (/^[0-9a-f]{6,64}$/.test(ref)) {
      const rows = await this.db.all<RawVersion>(
        `SELECT ${VERSION_COLS} FROM versions WHERE manifest LIKE ? AND state = 'active' ORDER BY image, number`,
        [`${ref}%`],
      );
      const distinct = new Set(rows.map((r) => r.manifest));
      if (distinct.size > 1)
        throw new StrataError('USAGE', `digest prefix ${ref} is ambiguous (${distinct.size} manifests)`);
      if (rows.length > 0) return this.hydrate(rows[0]);
    }
    throw fail('no such image, version or manifest');
  }

  /** Mark a version deleted and drop the tags on it; the image goes when its last version does. */
  async deleteVersion(image: string, number: number): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run("UPDATE versions SET state = 'deleted' WHERE image = ? AND number = ?", [image, number]);
      await tx.run('DELETE FROM tags WHERE image = ? AND number = ?', [image, number]);
      const left = await tx.get<{ n: number }>(
        "SELECT COUNT(*) AS n FROM versions WHERE image = ? AND state = 'active'",
        [image],
      );
      if (Number(left?.n ?? 0) === 0) await tx.run("UPDATE images SET state = 'deleted' WHERE name = ?", [image]);
    });
  }

  /** One active image (undefined when it does not exist or was deleted). */
  /** Whether an active image of this name exists (one row by key: the service's access checks ask it of every request). */
  async imageExists(name: string): Promise<boolean> {
    return (await this.db.get("SELECT 1 AS x FROM images WHERE name = ? AND state = 'active'", [name])) !== undefined;
  }

  async image(name: string): Promise<ImageRow | undefined> {
    return (await this.imageRows([name]))[0];
  }

  /** Make an image with no version yet (the check-in of its first version fills it). */
  async createImage(name: string, description?: string): Promise<void> {
    checkImageName(name);
    const now = new Date().toISOString();
    await this.db.transaction(async (tx) => {
      const had = await tx.get<{ state: string }>('SELECT state FROM images WHERE name = ?', [name]);
      if (had?.state === 'active') throw new StrataError('USAGE', `image ${name} exists`, { structure: 'catalog' });
      await tx.run(
        'INSERT INTO images (name, description, created, state) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = ?, description = ?, created = ?',
        [name, description ?? null, now, 'active', 'active', description ?? null, now],
      );
    });
  }

  async setDescription(name: string, description: string | null): Promise<void> {
    await this.db.run('UPDATE images SET description = ? WHERE name = ?', [description, name]);
  }

  /** Delete an image: every version marked deleted, its tags dropped (gc frees the chunks). */
  async deleteImage(name: string): Promise<void> {
    await this.db.transaction(async (tx) => {
      await tx.run("UPDATE versions SET state = 'deleted' WHERE image = ?", [name]);
      await tx.run('DELETE FROM tags WHERE image = ?', [name]);
      await tx.run("UPDATE images SET state = 'deleted' WHERE name = ?", [name]);
    });
  }

  async deleteTag(image: string, tag: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM tags WHERE image = ? AND tag = ?', [image, tag])).changes > 0;
  }

  /** Active versions derived from image@number (provenance downwards). */
  async children(image: string, number: number): Promise<Array<{ image: string; number: number }>> {
    const rows = await this.db.all<{ image: string; number: number }>(
      `SELECT p.image, p.number FROM version_parents p JOIN versions v ON v.image = p.image AND v.number = p.number
        WHERE p.parent_image = ? AND p.parent_number = ? AND v.state = 'active' ORDER BY p.image, p.number`,
      [image, number],
    );
    return rows.map((r) => ({ image: r.image, number: Number(r.number) }));
  }

  /** Every active version: image, number and layout manifest digest. */
  async activeVersions(): Promise<Array<{ image: string; number: number; manifest: string }>> {
    const rows = await this.db.all<{ image: string; number: number; manifest: string }>(
      "SELECT image, number, manifest FROM versions WHERE state = 'active' ORDER BY image, number",
    );
    return rows.map((r) => ({ image: r.image, number: Number(r.number), manifest: r.manifest }));
  }

  /** Manifest digests of every active version (gc's roots). */
  async liveManifests(): Promise<string[]> {
    const rows = await this.db.all<{ manifest: string }>(
      "SELECT DISTINCT manifest FROM versions WHERE state = 'active'",
    );
    return rows.map((r) => r.manifest);
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
