import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Access } from '../../src/catalog/access.js';
import type { Library } from '../../src/library/library.js';
import { type RunningServer, type ServeOptions, startServer } from '../../src/serve/http/server.js';
import { CLI } from '../helpers/cli.js';

/**
 * A real server on a real port (port 0) and a checker that validates every answer
 * against the server's own /openapi.json (ajv, JSON Schema 2020-12, as OpenAPI 3.1 says):
 * status declared, content type declared, JSON body valid against the declared schema.
 */
export interface Answer {
  status: number;
  type: string;
  body: unknown;
  bytes: Buffer;
  headers: Headers;
}

type Doc = {
  paths: Record<
    string,
    Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>
  >;
};

export class Checked {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
  private readonly compiled = new Map<string, ReturnType<Ajv2020['compile']>>();
  /** Answers validated, by route template and status (the tests check that routes were covered). */
  readonly seen = new Map<string, number>();

  constructor(
    readonly url: string,
    readonly doc: Doc,
  ) {}

  static async open(url: string): Promise<Checked> {
    const r = await fetch(`${url}/openapi.json`);
    assert.equal(r.status, 200);
    const doc = (await r.json()) as Doc & { openapi: string };
    assert.equal(doc.openapi, '3.1.0');
    return new Checked(url, doc);
  }

  /**
   * `tpl` is the OpenAPI path ('/v1/images/{name}'), `params` fill it (URL-encoded).
   */
  async call(
    method: string,
    tpl: string,
    opts: {
      params?: Record<string, string | number>;
      query?: Record<string, string | number | boolean | undefined>;
      token?: string;
      json?: unknown;
      body?: Uint8Array;
      headers?: Record<string, string>;
    } = {},
  ): Promise<Answer> {
    let p = tpl;
    for (const [k, v] of Object.entries(opts.params ?? {})) p = p.replace(`{${k}}`, encodeURIComponent(String(v)));
    const u = new URL(this.url + p);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    let body: string | Uint8Array | undefined;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers['content-type'] = 'application/json';
    } else if (opts.body) {
      body = opts.body;
      headers['content-type'] = 'application/octet-stream';
    }
    const res = await fetch(u, { method, headers, body });
    const bytes = Buffer.from(await res.arrayBuffer());
    const type = (res.headers.get('content-type') ?? '').split(';')[0].trim();
    let parsed: unknown;
    if (type.endsWith('json') && bytes.length > 0) parsed = JSON.parse(bytes.toString('utf8'));
    this.validate(method, tpl, res.status, type, parsed);
    return { status: res.status, type, body: parsed, bytes, headers: res.headers };
  }

  private validate(method: string, tpl: string, status: number, type: string, body: unknown): void {
    const op = this.doc.paths[tpl]?.[method.toLowerCase()];
    assert.ok(op, `${method} ${tpl} is not in /openapi.json`);
    const key = String(status) in op.responses ? String(status) : `${String(status)[0]}XX`;
    const resp = op.responses[key];
    assert.ok(resp, `${method} ${tpl}: status ${status} is not declared (${Object.keys(op.responses).join(', ')})`);
    this.seen.set(`${method} ${tpl} ${status}`, (this.seen.get(`${method} ${tpl} ${status}`) ?? 0) + 1);
    if (status === 204 || !resp.content) return;
    const c = resp.content[type];
    assert.ok(
      c,
      `${method} ${tpl} ${status}: content type ${type} is not declared (${Object.keys(resp.content).join(', ')})`,
    );
    if (!type.endsWith('json')) return;
    const k = `${method} ${tpl} ${key} ${type}`;
    let v = this.compiled.get(k);
    if (!v) this.compiled.set(k, (v = this.ajv.compile(c.schema as object)));
    assert.ok(
      v(body),
      `${method} ${tpl} ${status}: body does not match the document: ${this.ajv.errorsText(v.errors)} in ${JSON.stringify(body).slice(0, 400)}`,
    );
  }
}

/** Accounts for the tests: projects own, other, third; users with each role; tokens. */
export interface People {
  tokens: Record<string, string>;
  access: Access;
}

export async function addPeople(lib: Library): Promise<People> {
  const access = await Access.open(lib.catalog.db);
  for (const p of ['own', 'other', 'third']) await access.addProject(p);
  const users: Array<[string, string | null, 'admin' | 'member' | 'reader' | null, boolean]> = [
    ['root', null, null, true],
    ['own-admin', 'own', 'admin', false],
    ['own-member', 'own', 'member', false],
    ['own-reader', 'own', 'reader', false],
    ['other-admin', 'other', 'admin', false],
    ['other-member', 'other', 'member', false],
    ['third-admin', 'third', 'admin', false],
  ];
  const tokens: Record<string, string> = {};
  for (const [u, p, role, admin] of users) {
    await access.addUser(u, { admin });
    if (p && role) await access.setRole(p, u, role);
    tokens[u] = (await access.createToken({ user: u, project: p ?? undefined, scope: 'write' })).token;
  }
  tokens['own-admin-read'] = (await access.createToken({ user: 'own-admin', project: 'own', scope: 'read' })).token;
  return { tokens, access };
}

export async function serve(lib: Library, opts: ServeOptions = {}): Promise<RunningServer> {
  // the request log written at once, so tests read it right after a request (http-ops checks the batched default)
  return startServer(lib, '127.0.0.1:0', { defaultProject: 'own', rateLimit: 0, requestLogMs: 0, ...opts });
}

/**
 * `strata serve` as its own process (the built CLI, port 0, default project "own") on a
 * library folder: its URL, and `stop` (SIGTERM, then waits for the exit). `args` replace the
 * default-project option.
 */
export async function serveProcess(
  libDir: string,
  args: string[] = ['--default-project', 'own'],
): Promise<{ url: string; stop: () => Promise<void> }> {
  const server = spawn(
    process.execPath,
    [CLI, 'serve', '--listen', '127.0.0.1:0', '--library', libDir, '--quiet', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    server.stderr?.on('data', (b: Buffer) => {
      err += b.toString();
      const m = / at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    server.on('exit', (code) => reject(new Error(`strata serve exited ${code}: ${err}`)));
  });
  return {
    url,
    stop: async () => {
      if (server.exitCode !== null || server.signalCode !== null) return;
      const gone = new Promise((r) => server.once('exit', r));
      server.kill('SIGTERM');
      await gone;
    },
  };
}
