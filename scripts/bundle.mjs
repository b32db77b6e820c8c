// Bundle the `strata` CLI into one CommonJS file (dist/cli/strata.cjs) plus its worker
// entry points beside it. Run by `npm run build` after tsc.
//
// Why: a short command is mostly start-up. Loaded as ~60 separate ES modules, the CLI spends
// ~40 ms past Node's own start-up in the ES module loader (resolve, read, translate, link per
// file) and in built-ins nobody uses on that path; one CommonJS file is read and compiled once.
// The library (dist/src) stays ES modules; only the command is bundled.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
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

/**
 * The CLI imports the library only through its public surface (src/library/index.ts and
 * src/serve/index.ts; test/layers.test.ts checks), and loads each verb's part of it when the
 * verb runs. Bundled as written, every use of an index would make esbuild initialise every
 * module behind it (crypto, worker_threads, net ... ~40 more Node built-ins for `strata info`).
 * So in src/cli each `import { a, b } from '…/index.js'` and each
 * `const { a, b } = await import('…/index.js')` is pointed at a module re-exporting a and b
 * from the modules that define them (read from the index's `export { … } from` lines): the
 * bundle loads exactly what it did when the CLI imported those modules itself.
 */
const surfaces = new Map(
  ['library', 'serve'].map((layer) => [path.join(root, 'src', layer, 'index.ts'), undefined]),
);
/** name -> [module path, name there] for one index of `export { a, b as c, type T } from './x.js'` lines. */
function surfaceNames(index) {
  const names = new Map();
  const text = readFileSync(index, 'utf8').replace(/\/\/.*|\/\*[\s\S]*?\*\//g, '');
  for (const m of text.matchAll(/export\s+(type\s+)?\{([^}]*)\}\s*from\s*'([^']+)'/g)) {
    if (m[1]) continue;
    const from = path.resolve(path.dirname(index), m[3].replace(/\.js$/, '.ts'));
    for (const item of m[2].split(',').map((x) => x.trim())) {
      if (!item || item.startsWith('type ')) continue;
      const [orig, as] = item.split(/\s+as\s+/);
      names.set(as ?? orig, [from, orig]);
    }
  }
  return names;
}
const valueNames = (list) =>
  list
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n && !n.startsWith('type '))
    .map((n) => n.split(/\s*[:]\s*|\s+as\s+/)[0].trim());
const lazySurface = {
  name: 'lazy-public-surface',
  setup(b) {
    const spec = String.raw`'((?:\.\.\/)+(?:library|serve)\/index\.js)'`;
    const dynamic = new RegExp(String.raw`const \{([^}]*)\} = await import\(\s*${spec}\s*\)`, 'g');
    const stat = new RegExp(String.raw`import \{([^}]*)\} from ${spec}`, 'g');
    b.onLoad({ filter: /[\\/]src[\\/]cli[\\/].*\.ts$/ }, (args) => {
      // The index as a path from the repository root: the bundle names modules by it.
      const at = (s) => {
        const index = path.resolve(path.dirname(args.path), s.replace(/\.js$/, '.ts'));
        return path.relative(root, index).split(path.sep).join('/');
      };
      const surface = (s, names) => `'surface:${at(s)}?${valueNames(names)}'`;
      const contents = readFileSync(args.path, 'utf8')
        .replace(dynamic, (_, names, s) => `const {${names}} = await import(${surface(s, names)})`)
        .replace(stat, (_, names, s) => `import {${names}} from ${surface(s, names)}`);
      const left = contents.replace(/import type \{[^}]*\} from '[^']*'/g, '');
      if (/(import\(|from)\s*'(\.\.\/)+(library|serve)\/index\.js'/.test(left)) {
        throw new Error(`${args.path}: import the public surface as \`import { a } from\` or \`const { a } = await import\``);
      }
      return { contents, loader: 'ts' };
    });
    b.onResolve({ filter: /^surface:/ }, (args) => ({
      path: args.path.slice('surface:'.length),
      namespace: 'surface',
    }));
    b.onLoad({ filter: /.*/, namespace: 'surface' }, (args) => {
      const [rel, list] = args.path.split('?');
      const index = path.join(root, rel);
      if (!surfaces.has(index)) throw new Error(`lazy-public-surface: ${index} is not a public surface`);
      const names = surfaces.get(index) ?? surfaces.set(index, surfaceNames(index)).get(index);
      const lines = list
        .split(',')
        .filter(Boolean)
        .map((n) => {
          const found = names.get(n);
          if (!found) throw new Error(`lazy-public-surface: ${index} exports no value ${n}`);
          return `export { ${found[1]} as ${n} } from ${JSON.stringify(found[0])};`;
        });
      return { contents: lines.join('\n'), loader: 'ts', resolveDir: root };
    });
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
const cjs = {
  ...common,
  format: 'cjs',
  define: { 'import.meta.url': '__strataUrl', __STRATA_VERSION__: JSON.stringify(pkg.version) },
  banner: { js: ownUrl },
};
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'bin.ts')],
  outfile: path.join(out, 'strata-main.cjs'),
  plugins: [lazyChildProcess, lazySurface],
});
// convert, info and map alone (src/cli/image-main.ts; launch.ts runs it for those verbs): a
// fraction of the whole CLI to parse on every short convert (issue 26).
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'image-main.ts')],
  outfile: path.join(out, 'strata-image.cjs'),
  plugins: [lazyChildProcess, lazySurface],
});
// convert alone (src/cli/convert-main.ts): without the file-system readers info describes,
// 0.4 MB instead of 0.7 (~5 ms of CPU per short convert).
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'convert-main.ts')],
  outfile: path.join(out, 'strata-convert.cjs'),
  plugins: [lazyChildProcess, lazySurface],
});
// src/cli/launch.ts compiles the bundles through vm.Script on Node 20, where import() cannot work,
// and util/code-cache.ts reads them as latin1 (faster than UTF-8): ASCII only (esbuild's default
// charset escapes the rest).
for (const f of ['strata-main.cjs', 'strata-image.cjs', 'strata-convert.cjs']) {
  const text = readFileSync(path.join(out, f), 'latin1');
  if (/(^|[^\w$.])import\(/.test(text)) {
    throw new Error(`dist/cli/${f} has an import(): load that module with a static import or require`);
  }
  if (/[^\x00-\x7f]/.test(text)) throw new Error(`dist/cli/${f} is not ASCII (util/code-cache.ts reads it as latin1)`);
}
await build({
  ...cjs,
  entryPoints: [path.join(root, 'src', 'cli', 'launch.ts')],
  outfile: path.join(out, 'strata.cjs'),
  banner: { js: `#!/usr/bin/env node\n${ownUrl}` },
});

// The AWS SDK (S3 store) as one file beside the CLI, loaded only by S3 libraries
// (src/store/s3-backend.ts) with V8's code cache like the CLI itself (src/util/code-cache.ts):
// the SDK's hundreds of modules took ~0.55 s of every S3 command's start here, one cached
// file ~0.27 s. Its two import()s of Node built-ins become requires (vm scripts cannot
// import on Node 20).
await build({
  ...common,
  external: [],
  format: 'cjs',
  stdin: { contents: "module.exports = require('@aws-sdk/client-s3');", resolveDir: root, loader: 'js' },
  outfile: path.join(out, 'aws-s3.cjs'),
  sourcemap: false,
});
{
  const f = path.join(out, 'aws-s3.cjs');
  const text = readFileSync(f, 'utf8').replace(/\bimport\(("node:[a-z_/]+")\)/g, 'Promise.resolve(require($1))');
  if (/(^|[^\w$.])import\(/.test(text)) throw new Error('dist/cli/aws-s3.cjs has an import() bundle.mjs does not rewrite');
  if (/[^\x00-\x7f]/.test(text)) throw new Error('dist/cli/aws-s3.cjs is not ASCII (util/code-cache.ts reads it as latin1)');
  writeFileSync(f, text);
}

// The PostgreSQL driver (pg) the same way (src/catalog/pg.ts loads it): ~56 ms of CPU per
// PostgreSQL command on Node 20 as ~40 modules, 32 of them in one check, pg's "are we in a
// Cloudflare Worker" (lib/stream.js), which on Node 20 (no global navigator) makes a
// `Response` and so loads all of Node's fetch (undici); in Node it is never a Worker. The
// optional native binding and the Workers socket stay out (pg requires them only when asked).
await build({
  ...common,
  external: ['pg-native', 'pg-cloudflare'],
  format: 'cjs',
  stdin: { contents: "module.exports = require('pg');", resolveDir: root, loader: 'js' },
  outfile: path.join(out, 'pg.cjs'),
  sourcemap: false,
  plugins: [
    {
      name: 'pg-not-in-a-worker',
      setup(b) {
        b.onLoad({ filter: /[\\/]pg[\\/]lib[\\/]stream\.js$/ }, (args) => {
          const text = readFileSync(args.path, 'utf8');
          const fn = 'function isCloudflareRuntime() {';
          if (!text.includes(fn)) throw new Error(`${args.path}: no ${fn} to answer (pg changed: see bundle.mjs)`);
          return { contents: text.replace(fn, `${fn}\n  return false;`), loader: 'js' };
        });
      },
    },
  ],
});
{
  const text = readFileSync(path.join(out, 'pg.cjs'), 'latin1');
  if (/(^|[^\w$.])import\(/.test(text)) throw new Error('dist/cli/pg.cjs has an import()');
  if (/[^\x00-\x7f]/.test(text)) throw new Error('dist/cli/pg.cjs is not ASCII (util/code-cache.ts reads it as latin1)');
}

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
    'reader-worker': path.join(root, 'src', 'serve', 'fuse', 'reader-worker.ts'),
    'serve-worker': path.join(root, 'src', 'serve', 'fuse', 'serve-worker.ts'),
  },
  outdir: out,
});
writeFileSync(path.join(out, 'package.json'), `${JSON.stringify({ type: 'commonjs' })}\n`);

// The web UI (webui/): Preact + htm, bundled for the browser into dist/webui, which
// `strata serve` serves at / (src/serve/http/webui.ts). esbuild is already the build's
// bundler, so the UI needs no second tool; htm keeps the source plain JavaScript (no JSX step).
const webui = path.join(root, 'dist', 'webui');
await build({
  entryPoints: [path.join(root, 'webui', 'app.js')],
  outdir: webui,
  // pages loaded on demand (the storage dashboard's chart library) become chunk-*.js
  splitting: true,
  chunkNames: 'chunk-[hash]',
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  sourcemap: 'linked',
  logLevel: 'warning',
  legalComments: 'none',
});
for (const f of ['index.html', 'app.css']) copyFileSync(path.join(root, 'webui', f), path.join(webui, f));
