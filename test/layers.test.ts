import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * The layering rules of ARCHITECTURE.md, checked on the source: every `import`, `export ... from`
 * and `import()` under src/ is parsed with the TypeScript compiler (type-only imports count too:
 * they couple the layers just the same).
 *
 * 1. A module imports only from its own layer or a lower one (LAYERS, lowest first).
 * 2. No cycle between modules (files), through static or dynamic imports.
 * 3. The CLI imports only its own files and public surfaces: the package root, the library's
 *    index, and the index of io and of the layers above the library (serve).
 */
const LAYERS = [
  'util',
  'io',
  'formats',
  'volumes',
  'fs',
  'blockmap',
  'inspect',
  'store',
  'catalog',
  'library',
  'serve',
  'deploy',
  'analytics',
  'cli',
];
const CLI_MAY_IMPORT = [
  'src/index.ts',
  'src/library/index.ts',
  'src/io/index.ts',
  'src/serve/index.ts',
  'src/deploy/index.ts',
  'src/analytics/index.ts',
  // the launcher's V8 code cache: one loader for the CLI bundle and the store's bundled SDK
  'src/util/code-cache.ts',
];

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Edge {
  from: string;
  to: string;
  line: number;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...sourceFiles(rel));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
  }
  return out.sort();
}

/** Every relative import of a file, resolved to a repository path ('src/io/byte-source.ts'). */
function importsOf(file: string): Edge[] {
  const text = readFileSync(path.join(root, file), 'utf8');
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const edges: Edge[] = [];
  const add = (spec: ts.Expression | undefined, at: ts.Node) => {
    if (!spec || !ts.isStringLiteralLike(spec) || !spec.text.startsWith('.')) return;
    const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec.text.replace(/\.js$/, '.ts')));
    edges.push({ from: file, to: resolved, line: sf.getLineAndCharacterOfPosition(at.getStart(sf)).line + 1 });
  };
  const visit = (n: ts.Node) => {
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) add(n.moduleSpecifier, n);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) add(n.arguments[0], n);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) add(n.argument.literal, n);
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return edges;
}

/** 'src/fs/ext/index.ts' -> 'fs'; 'src/index.ts' -> the package root, above everything but the CLI. */
function layerOf(file: string): number {
  const parts = file.split('/');
  if (parts.length === 2) return LAYERS.indexOf('cli') - 0.5;
  const i = LAYERS.indexOf(parts[1]);
  if (i < 0) throw new Error(`${file}: folder ${parts[1]} is in no layer; add it to LAYERS (and ARCHITECTURE.md)`);
  return i;
}

const files = sourceFiles('src');
const edges = files.flatMap(importsOf);
const where = (e: Edge) => `${e.from}:${e.line} imports ${e.to}`;

test('every import under src/ resolves to a file under src/', () => {
  const known = new Set(files);
  const bad = edges.filter((e) => !known.has(e.to)).map(where);
  assert.ok(edges.length > 300, `parsed ${edges.length} imports`);
  assert.deepEqual(bad, []);
});

test('no import goes up a layer', () => {
  const bad = edges.filter((e) => layerOf(e.to) > layerOf(e.from)).map(where);
  for (const b of bad) console.log(`up a layer: ${b}`);
  assert.deepEqual(bad, []);
});

test('the CLI imports only its own files and the public surfaces', () => {
  const bad = edges
    .filter((e) => e.from.startsWith('src/cli/') && !e.to.startsWith('src/cli/') && !CLI_MAY_IMPORT.includes(e.to))
    .map(where);
  for (const b of bad) console.log(`CLI past the public surface: ${b}`);
  assert.deepEqual(bad, []);
});

test('no cycle between modules', () => {
  // Tarjan's strongly connected components; every component of more than one file is a cycle.
  const out = new Map<string, Edge[]>();
  for (const e of edges) out.set(e.from, [...(out.get(e.from) ?? []), e]);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const strong = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const { to } of out.get(v) ?? []) {
      if (!index.has(to)) {
        strong(to);
        low.set(v, Math.min(low.get(v)!, low.get(to)!));
      } else if (onStack.has(to)) low.set(v, Math.min(low.get(v)!, index.get(to)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      const self = (out.get(v) ?? []).some((e) => e.to === v);
      if (scc.length > 1 || self) cycles.push(scc.sort());
    }
  };
  for (const f of files) if (!index.has(f)) strong(f);
  const report = cycles.map((scc) => {
    const inside = new Set(scc);
    const lines = edges.filter((e) => inside.has(e.from) && inside.has(e.to)).map(where);
    return `cycle among ${scc.join(', ')}:\n  ${lines.join('\n  ')}`;
  });
  for (const r of report) console.log(r);
  assert.deepEqual(report, []);
});
