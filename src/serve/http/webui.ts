import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { HttpProblem } from './problem.js';

/**
 * The web UI's static files (dist/webui, built by scripts/bundle.mjs from webui/), served
 * by the service itself at / and /ui/FILE. A handful of small files, read once into memory
 * and looked up by exact name: no file-system path is ever built from a request, so no
 * traversal to guard against, and no static-file plugin to depend on.
 */
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
};

/** dist/webui beside this module: dist/src/serve/http/ (ES modules) or dist/cli/ (the bundle). */
export function defaultWebuiDir(): string | undefined {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const rel of ['../../../webui', '../webui']) {
    const d = path.resolve(here, rel);
    if (existsSync(path.join(d, 'index.html'))) return d;
  }
  return undefined;
}

export function registerWebui(app: FastifyInstance, dir: string): void {
  const files = new Map<string, { type: string; body: Buffer }>();
  for (const f of readdirSync(dir)) {
    const type = TYPES[path.extname(f)];
    if (type) files.set(f, { type, body: readFileSync(path.join(dir, f)) });
  }
  const index = files.get('index.html');
  if (!index) throw new HttpProblem(500, `no index.html in ${dir}`);
  const headers = {
    'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'",
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  };
  app.get('/', { schema: { hide: true } }, async (_req, reply) => {
    reply.headers(headers).header('cache-control', 'no-cache').type(index.type);
    return index.body;
  });
  app.get('/ui/:file', { schema: { hide: true } }, async (req, reply) => {
    const f = files.get((req.params as { file: string }).file);
    if (!f) throw new HttpProblem(404, `no such UI file: ${(req.params as { file: string }).file}`);
    reply.headers(headers).header('cache-control', 'no-cache').type(f.type);
    return f.body;
  });
}
