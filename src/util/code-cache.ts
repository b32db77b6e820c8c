import { closeSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { homedir } from 'node:os';
import * as path from 'node:path';
import * as vm from 'node:vm';

/**
 * Require a bundled CommonJS file with V8's code cache (src/cli/launch.ts loads the CLI so):
 * on Node >= 22.1 the process-wide compile cache (launch.ts enables it) already covers a
 * plain require; on Node 20 the file is compiled through vm.Script with cached data kept in
 * the user's cache folder ($XDG_CACHE_HOME/strata or ~/.cache/strata; STRATA_CODE_CACHE
 * names another, "off" disables it). Any trouble with the cache only costs the compile. The
 * file must have no import() and be ASCII (bundle.mjs checks the ones it makes).
 */
export function requireCached(file: string): unknown {
  // Node's own cache, when this process enabled it (Node >= 22.8 says so), covers a plain require
  const enabled = (nodeModule as { getCompileCacheDir?: () => string | undefined }).getCompileCacheDir?.();
  const req = nodeModule.createRequire(file);
  if (enabled) return req(file);
  let cacheAt: string | undefined;
  let cached: Buffer | undefined;
  try {
    const dir = process.env.STRATA_CODE_CACHE;
    if (dir !== 'off') {
      const base = dir ?? path.join(process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'strata');
      const st = statSync(file);
      cacheAt = path.join(
        base,
        `code-${path.basename(file, '.cjs')}-${process.version}-${process.arch}-${st.size}-${Math.floor(st.mtimeMs)}.bin`,
      );
      cached = readFileSync(cacheAt);
    }
  } catch {
    cached = undefined;
  }
  // (a #! line, as the CLI bundle has, is not JavaScript inside the module wrapper). Read as
  // latin1: the bundles are ASCII (scripts/bundle.mjs checks), and decoding 0.7 MB as UTF-8
  // took ~0.5 ms more of every run.
  const source = readFileSync(file, 'latin1').replace(/^#!.*/, '');
  const script = new vm.Script(nodeModule.wrap(source), { filename: file, cachedData: cached });
  if (cacheAt && (!cached || script.cachedDataRejected)) {
    const target = cacheAt;
    process.once('exit', () => save(target, script));
  }
  const mod = { exports: {} as unknown };
  const fn = script.runInThisContext() as (...a: unknown[]) => void;
  fn.call(mod.exports, mod.exports, req, mod, file, path.dirname(file));
  return mod.exports;
}

function save(file: string, script: vm.Script): void {
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, script.createCachedData());
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch {
    // a cache we cannot write only costs the compile next time
  }
}
