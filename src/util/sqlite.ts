import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';

/**
 * better-sqlite3's Database class for the running Node. 12.x wraps its objects in Node's
 * own ObjectWrap, whose destructor Node 24 may run after the environment is gone (a
 * teardown or GC-time abort: "Assertion failed: (env) != nullptr"); 13.x is built on
 * Node-API and does not, but needs Node 22 (it crashes on 20). Both are installed (13.x
 * as the optional alias `better-sqlite3-napi`, shipping its own prebuilt binaries): from
 * Node 22 on 13.x is used when it loads, else 12.x.
 */
export type SqliteDatabaseClass = typeof BetterSqlite3;

let cached: SqliteDatabaseClass | undefined;

export function sqliteDatabaseClass(): SqliteDatabaseClass {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  if (Number(process.versions.node.split('.')[0]) >= 22) {
    try {
      cached = require('better-sqlite3-napi') as SqliteDatabaseClass;
      return cached;
    } catch {
      // not installed (optional): fall back to 12.x
    }
  }
  cached = require('better-sqlite3') as SqliteDatabaseClass;
  return cached;
}
