/**
 * The `strata` command's entry (bundled as dist/cli/strata.cjs): loads the bundled CLI,
 * dist/cli/strata-main.cjs, with V8's code cache, because compiling the ~600 KB bundle is
 * ~15 ms of every run and a short command is mostly start-up.
 *
 * Node >= 22.1 has its own cache (module.enableCompileCache, kept under the OS temporary
 * folder). On Node 20 the bundle is compiled through vm.Script with cached data kept in the
 * user's cache folder ($XDG_CACHE_HOME/strata or ~/.cache/strata, mode 0700; STRATA_CODE_CACHE
 * names another, "off" disables it). A cache V8 rejects (other Node, other bundle) is
 * rewritten; any trouble with the cache only costs the compile.
 */
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vm from 'node:vm';

/**
 * convert, info and map run from a bundle holding only them (src/cli/image-main.ts): a short
 * convert is mostly start-up, and the whole CLI's bundle is ~1.3 MB to parse or deserialize.
 */
const IMAGE_VERBS = new Set(['convert', 'info', 'map']);
const bundle = IMAGE_VERBS.has(process.argv[2] ?? '') ? 'strata-image' : 'strata-main';
const main = path.join(path.dirname(fileURLToPath(import.meta.url)), `${bundle}.cjs`);
const require = nodeModule.createRequire(main);
const enable = (nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache;

if (enable) {
  enable();
  require(main);
} else runCached();

function cacheFile(): string | undefined {
  const dir = process.env.STRATA_CODE_CACHE;
  if (dir === 'off') return undefined;
  const base = dir ?? path.join(process.env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'strata');
  const st = statSync(main);
  return path.join(base, `code-${bundle}-${process.version}-${process.arch}-${st.size}-${Math.floor(st.mtimeMs)}.bin`);
}

function runCached(): void {
  const source = readFileSync(main, 'utf8').replace(/^#!.*/, '');
  let file: string | undefined;
  let cached: Buffer | undefined;
  try {
    file = cacheFile();
    if (file) cached = readFileSync(file);
  } catch {
    cached = undefined;
  }
  // (The bundle has no import(): scripts compiled through vm cannot import on Node 20; bundle.mjs checks.)
  const script = new vm.Script(nodeModule.wrap(source), { filename: main, cachedData: cached });
  if (file && (!cached || script.cachedDataRejected)) {
    const target = file;
    // At exit the cache also holds the functions this run compiled.
    process.once('exit', () => saveCache(target, script));
  }
  const mod = { exports: {} };
  const fn = script.runInThisContext() as (...a: unknown[]) => void;
  fn.call(mod.exports, mod.exports, require, mod, main, path.dirname(main));
}

function saveCache(file: string, script: vm.Script): void {
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
    // A cache we cannot write only costs the compile next time.
  }
}
