// Bundle the `strata` CLI into one CommonJS file (dist/cli/strata.cjs) plus its worker
// entry points beside it. Run by `npm run build` after tsc.
//
// Why: a short command is mostly start-up. Loaded as ~60 separate ES modules, the CLI spends
// ~40 ms past Node's own start-up in the ES module loader (resolve, read, translate, link per
// file) and in built-ins nobody uses on that path; one CommonJS file is read and compiled once.
// The library (dist/src) stays ES modules; only the command is bundled.
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'dist', 'cli');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
// Native addons and anything npm installs stay outside the bundle, loaded from node_modules.
const external = [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})].filter(
  (d) => d !== 'commander' && d !== 'cli-progress',
);

/**
 * commander requires node:child_process at load time, for subcommands that are separate
 * executables (we have none); loading it pulls in net, stream and dgram: ~7 ms per run.
 * Inside the bundle it is required on first use instead.
 */
const lazyChildProcess = {
  name: 'lazy-child-process',
  setup(b) {
    b.onResolve({ filter: /^(node:)?child_process$/ }, (args) =>
      args.importer.includes(`${path.sep}commander${path.sep}`) ? { path: 'child_process', namespace: 'lazy-cp' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy-cp' }, () => ({
      contents:
        "let m; module.exports = new Proxy({}, { get: (_, k) => (m ??= require('node:child_process'))[k] });",
      loader: 'js',
    }));
  },
};

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  external,
  minifySyntax: true,
  minifyWhitespace: true,
  sourcemap: 'linked',
  logLevel: 'warning',
  legalComments: 'none',
};

// Everything is bundled as CommonJS; import.meta.url (used to find workers and native addons)
// becomes each file's own URL. First the CLI, and the entry that loads it with V8's code cache
// (src/cli/launch.ts).
const ownUrl = "const __strataUrl = require('node:url').pathToFileURL(__filename).href;";
const cjs = { ...common, format: 'cjs', define: { 'import.meta.url': '__strataUrl' }, banner: { js: ownUrl } };
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'bin.ts')],
  outfile: path.join(out, 'strata-main.cjs'),
  plugins: [lazyChildProcess],
});
// src/cli/launch.ts compiles the bundle through vm.Script on Node 20, where import() cannot work.
if (/(^|[^\w$.])import\(/.test(readFileSync(path.join(out, 'strata-main.cjs'), 'utf8'))) {
  throw new Error('dist/cli/strata-main.cjs has an import(): load that module with a static import or require');
}
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'launch.ts')],
  outfile: path.join(out, 'strata.cjs'),
  banner: { js: `#!/usr/bin/env node\n${ownUrl}` },
});

// Workers are started by URL relative to the module that starts them: in the bundle that is
// dist/cli/, so each worker entry point is bundled there under its own name. As CommonJS (the
// package.json written beside them says so): a worker then starts ~5 ms sooner than as an ES
// module, and the copy workers start on every large convert.
await build({
  ...cjs,
  entryPoints: {
    'inflate-worker': path.join(root, 'src', 'formats', 'vmdk', 'inflate-worker.ts'),
    'zstd-worker': path.join(root, 'src', 'store', 'zstd-worker.ts'),
    'copy-worker': path.join(root, 'src', 'library', 'convert', 'copy-worker.ts'),
  },
  outdir: out,
});
writeFileSync(path.join(out, 'package.json'), `${JSON.stringify({ type: 'commonjs' })}\n`);
