/**
 * The catalog layer: images, numbered versions, tags and what inspection found in them, in
 * SQL (SQLite today, written so PostgreSQL can follow).
 * @module
 */
export { Catalog, checkImageName, checkTag, type ImageRow, type NewVersion, type VersionRow } from './catalog.js';
export { type Db, type Row, SqliteDb, type SqlValue } from './db.js';
export {
  type FileWhere,
  findFiles,
  findPackages,
  findRoots,
  findUsers,
  getInspection,
  type StoredFile,
  type StoredPackage,
  type StoredRoot,
  type StoredUser,
  type VersionInspection,
  type VersionKey,
} from './inspection.js';
export {
  type BootProfile,
  checkProfile,
  loadProfile,
  MAX_PROFILE_ENTRIES,
  nearestProfile,
  PROFILE_KIND,
  type ProfileEntry,
  saveProfile,
} from './profiles.js';
