// Build native/strata_native.node (lseek with SEEK_DATA/SEEK_HOLE, see native/seek.c) with
// node-gyp against the headers of the Node that runs this script (<prefix>/include/node:
// installed with Node itself, so nothing is downloaded). Run by `npm install` (the
// package's install script) and `npm run build`; skips when the addon is newer than its
// source. Without a compiler the build fails with a warning and Strata still works:
// local files then report no holes (everything reads as data), as before the addon.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'native');
const out = path.join(dir, 'build', 'Release', 'strata_native.node');
const sources = ['seek.c', 'copy.c', 'extract.c', 'inflate.c', 'dirplus.c', 'heap.c', 'fuseread.c', 'zstd.c', 'zstd-lib.c', 'napi-job.h', 'binding.gyp'].map((f) => path.join(dir, f));
if (existsSync(out) && sources.every((s) => statSync(s).mtimeMs <= statSync(out).mtimeMs)) process.exit(0);

function nodeGyp() {
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) return process.env.npm_config_node_gyp;
  // npm's own copy, beside the npm that came with this Node
  const prefix = path.dirname(path.dirname(process.execPath));
  for (const p of [
    path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    path.join(prefix, 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ]) {
    if (existsSync(p)) return p;
  }
  try {
    return createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    return undefined;
  }
}

const gyp = nodeGyp();
const nodedir = path.dirname(path.dirname(process.execPath));
if (!gyp || !existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
  console.warn('strata: node-gyp or the Node headers are missing: sparse files will not show their holes');
  process.exit(0);
}
/** node-gyp rebuild; `extra` becomes gyp variables (node-gyp hands unknown options to config.gypi). */
const rebuild = (...extra) =>
  spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn', ...extra], {
    cwd: dir,
    // binding.gyp runs `node` to find zstd-napi's zstd sources (native/zstd.c): this Node first on PATH
    env: { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}` },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
let r = rebuild();
if (r.status !== 0) {
  // zstd's sources are the largest part: without them the rest of the addon still helps
  // (the store then compresses on a worker isolate, as before native/zstd.c)
  console.warn('strata: building native/strata_native.node with zstd failed: trying without it');
  r = rebuild('--zstd_lib=none');
}
if (r.status !== 0) {
  console.warn('strata: building native/strata_native.node failed: sparse files will not show their holes');
}
