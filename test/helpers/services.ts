import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

/**
 * The real PostgreSQL and S3 server (OpenStack Swift + s3api) the scale-out tests use.
 * CI starts them once (.ci/run: scripts/test-services.sh) and exports STRATA_TEST_PG,
 * STRATA_TEST_S3 and the AWS_* variables; run alone, a test file starts its own pair (as
 * root, ~30 s) and stops it when the process exits. A missing server is a failure, never a
 * skip: the start fails loudly. `private`: a pair of its own even under CI (a test that
 * restarts or stops the servers must not pull them from under tests running beside it).
 */
export interface Services {
  pg: string;
  s3: string;
  /** The S3 endpoint, credentials and region, as the AWS SDK reads them from the environment. */
  awsEnv: Record<string, string>;
  /** scripts/test-services.sh's state folder (for restart-pg). */
  dir: string;
}

let mine: Services | undefined;

const script = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../scripts/test-services.sh');

export function testServices(opts: { private?: boolean } = {}): Services {
  const e = process.env;
  if (!opts.private && e.STRATA_TEST_PG && e.STRATA_TEST_S3 && e.AWS_ENDPOINT_URL) {
    return {
      pg: e.STRATA_TEST_PG,
      s3: e.STRATA_TEST_S3,
      awsEnv: awsFrom(e),
      dir: e.STRATA_TEST_SERVICES ?? '',
    };
  }
  if (mine && !opts.private) return mine;
  const dir = mkdtempSync(path.join(tmpdir(), 'strata-svc-'));
  execFileSync('bash', [script, 'start', dir], { stdio: ['ignore', 'inherit', 'inherit'] });
  const env: Record<string, string> = {};
  for (const line of readFileSync(path.join(dir, 'env'), 'utf8').split('\n')) {
    const m = /^export ([A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  process.on('exit', () => stopServices({ dir }));
  const got = { pg: env.STRATA_TEST_PG, s3: env.STRATA_TEST_S3, awsEnv: awsFrom(env), dir };
  if (opts.private) return got;
  for (const [k, v] of Object.entries(env)) process.env[k] = v;
  mine = got;
  return mine;
}

/** Stop a pair this process started (a private one: call it from the test's after hook). */
export function stopServices(svc: Pick<Services, 'dir'>): void {
  if (!svc.dir || !existsSync(svc.dir)) return;
  try {
    execFileSync('bash', [script, 'stop', svc.dir], { stdio: 'ignore' });
  } catch {}
}

function awsFrom(e: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION']) {
    if (e[k]) out[k] = e[k] as string;
  }
  return out;
}

let n = 0;
/** A fresh schema name / key prefix for one test's library. */
export function uniqueName(what: string): string {
  return `${what}_${process.pid}_${Date.now().toString(36)}_${n++}`;
}

/** postgres://...?schema=NAME */
export function pgWithSchema(pg: string, schema: string): string {
  const u = new URL(pg);
  u.searchParams.set('schema', schema);
  return u.toString();
}

/** psql, the oracle for what is in the database: rows as tab-separated lines. */
export function psql(pg: string, schema: string, sql: string): string[] {
  const u = new URL(pg);
  const out = execFileSync(
    'psql',
    [
      '-X',
      '-A',
      '-t',
      '-F',
      '\t',
      '-v',
      'ON_ERROR_STOP=1',
      '-h',
      u.hostname,
      '-p',
      u.port,
      '-U',
      u.username,
      '-d',
      u.pathname.slice(1),
      '-c',
      `SET search_path TO ${schema}; ${sql}`,
    ],
    { env: { ...process.env, PGPASSWORD: decodeURIComponent(u.password) }, encoding: 'utf8' },
  );
  return out.split('\n').filter((l) => l !== '' && l !== 'SET');
}

/** An object fetched through Swift's own API (not S3): the oracle for what the S3 client stored. */
export async function swiftGet(key: string): Promise<Buffer> {
  const endpoint = process.env.AWS_ENDPOINT_URL as string;
  const auth = await fetch(`${endpoint}/auth/v1.0`, {
    headers: {
      'X-Auth-User': process.env.AWS_ACCESS_KEY_ID as string,
      'X-Auth-Key': process.env.AWS_SECRET_ACCESS_KEY as string,
    },
  });
  if (auth.status >= 300) throw new Error(`swift auth: ${auth.status}`);
  const url = auth.headers.get('x-storage-url') as string;
  const token = auth.headers.get('x-auth-token') as string;
  const bucket = new URL((process.env.STRATA_TEST_S3 as string).replace(/^s3:/, 'http:')).hostname;
  const r = await fetch(`${url}/${bucket}/${key}`, { headers: { 'X-Auth-Token': token } });
  if (r.status !== 200) throw new Error(`swift GET ${key}: ${r.status}`);
  return Buffer.from(await r.arrayBuffer());
}
