import cluster from 'node:cluster';
import type { Command } from 'commander';
import { type Library, StrataError } from '../../library/index.js';
import type { Access } from '../../serve/index.js';
import { printJson } from '../output.js';
import { addPlaceOptions, placesFrom } from '../places.js';
import { remoteOf, withRemote } from '../remote.js';
import { parseSize } from './convert.js';
import { cacheOptionsFrom } from './nbd.js';

/**
 * `strata serve` (the library service) and the accounts it checks: `user add|list`,
 * `project add`, `token create|list|revoke`. Accounts are kept in the library's catalog;
 * these verbs work on the library directory directly (the server's operator runs them).
 */
const withLib = (cmd: Command) =>
  addPlaceOptions(
    cmd.option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)'),
  );

async function withAccess<T>(o: Record<string, unknown>, fn: (lib: Library, access: Access) => Promise<T>): Promise<T> {
  const { Library } = await import('../../library/index.js');
  const { Access } = await import('../../serve/index.js');
  const lib = await Library.open(o.library as string | undefined, { create: true, ...placesFrom(o) });
  try {
    return await fn(lib, await Access.open(lib.catalog.db));
  } finally {
    await lib.close();
  }
}

/** With a remote, `fn` runs against it (access undefined); else on the library directory. */
async function withAccessOr<T>(
  remote: unknown,
  o: Record<string, unknown>,
  fn: (access: Access | undefined) => Promise<T>,
): Promise<T> {
  if (remote) return fn(undefined);
  return withAccess(o, (_lib, access) => fn(access));
}

/** The account verbs act on --library DIR, or with --remote URL (STRATA_REMOTE) through the API. */
const withAccounts = (cmd: Command) => withRemote(withLib(cmd));

export function registerServeCommands(program: Command): void {
  withLib(
    program
      .command('serve')
      .description('serve the library over HTTP: images, versions, files, inspection, diff, search, check-in by upload')
      .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8080')
      .option('--default-project <name>', 'project that owns images checked in locally', 'default')
      .option('--default-visibility <v>', 'visibility of those images (private, shared, public)', 'private')
      .option(
        '--rate-limit <n>',
        'requests a minute per token, counted in the catalog across server processes (0: none)',
        '6000',
      )
      .option('--no-import-urls', 'refuse imports of images the server would fetch from a URL')
      .option('--demo [dir]', 'serve a ready demo library (made in DIR, default .cache/serve-demo, on first use)')
      .option('--quiet', 'no request log lines on stdout')
      .option(
        '--commit-limit <size>',
        'largest body of a check-in commit or an edit (default 256M; a commit sends new files as chunks, not in it)',
      )
      .option(
        '--cache-policy <policy>',
        'a live cache in front of each version whose raw disk is read by range (GET .../disk with Range): lru, readahead or introspective (as strata nbd), and one of blobs behind the file routes (ls, stat, content, tar: lru, or introspective with its meta and file prefetchers); counters in /metrics',
      )
      .option(
        '--prefetch <list>',
        'introspective prefetchers: meta, dir, file, siblings, disk, all, none (default all)',
      )
      .option('--cache-size <size>', 'bytes of that cache per version (default 64M)')
      .option(
        '--workers <n>',
        'server processes sharing the port (node cluster; each opens the library; default 1: one process, one core)',
        '1',
      ),
  ).action(async (o: Record<string, unknown>) => {
    const workers = Number(o.workers);
    if (!Number.isInteger(workers) || workers < 1 || workers > 64)
      throw new StrataError('USAGE', `--workers is a number of processes (1-64), not ${String(o.workers)}`);
    if (workers > 1 && cluster.isPrimary) return servePrimary(workers, o);
    // in a cluster, the first worker speaks for all (the URL, the demo's links)
    const speaks = !cluster.isWorker || cluster.worker?.id === 1;
    const diskCache = await cacheOptionsFrom(o);
    if (o.cacheSize !== undefined) {
      if (!diskCache) throw new StrataError('USAGE', '--cache-size needs --cache-policy');
      diskCache.cacheSize = parseSize(String(o.cacheSize), 'cache size');
    }
    const { Library } = await import('../../library/index.js');
    const { startServer } = await import('../../serve/index.js');
    let lib: Library;
    if (o.demo) {
      const { demoLibrary } = await import('../../serve/index.js');
      const dir = typeof o.demo === 'string' ? o.demo : '.cache/serve-demo';
      if (speaks) process.stderr.write(`strata: demo library in ${dir}\n`);
      const d = await demoLibrary(dir);
      if (speaks) for (const n of d.notes) process.stderr.write(`strata: ${n}\n`);
      lib = d.lib;
      o.defaultProject = 'demo';
    } else lib = await Library.open(o.library as string | undefined, { create: true, ...placesFrom(o) });
    const s = await startServer(lib, String(o.listen), {
      logger: o.quiet ? false : { level: 'info' },
      defaultProject: String(o.defaultProject),
      defaultVisibility: String(o.defaultVisibility) as 'private',
      rateLimit: Number(o.rateLimit),
      importUrls: o.importUrls !== false,
      diskCache,
      ...(diskCache ? { blobCache: blobCacheFrom(diskCache) } : {}),
      ...(o.commitLimit !== undefined ? { commitLimit: parseSize(String(o.commitLimit), 'commit limit') } : {}),
    });
    if (speaks)
      process.stderr.write(
        `strata: serving ${lib.dir}${lib.places.store.startsWith('s3:') || lib.places.catalog.startsWith('postgres') ? ` (catalog ${lib.places.catalog}, store ${lib.places.store})` : ''} at ${s.url} (API under ${s.url}/v1, document at ${s.url}/openapi.json)\n`,
      );
    if (o.demo && speaks) {
      process.stdout.write(
        [
          `Strata library service: ${s.url}`,
          `  web UI:  ${s.url}/`,
          `  images:  ${s.url}/v1/images`,
          `  files:   ${s.url}/v1/images/demo%2Ffiles/versions/latest/files?path=/etc`,
          `  a file:  ${s.url}/v1/images/demo%2Ffiles/versions/1/files/content?path=/etc/motd`,
          `  diff:    ${s.url}/v1/diff?a=demo/files@1&b=demo/files@2`,
          `  API:     ${s.url}/openapi.json`,
          `  CLI:     strata ls demo/files /etc --remote ${s.url}`,
          '',
        ].join('\n'),
      );
    }
    await new Promise<void>((resolve) => {
      let closing = false;
      const stop = (sig: string) => {
        if (closing) return;
        closing = true;
        process.stderr.write(`strata: ${sig}: finishing requests in flight\n`);
        s.close()
          .then(() => lib.close())
          .then(resolve, resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    // a worker's channel to the primary would keep it alive
    if (cluster.isWorker) process.disconnect?.();
  });

  const user = program.command('user').description('accounts of the library service');
  withAccounts(
    user
      .command('add')
      .description('add a user (and with --project, give them a role there; the project is made when missing)')
      .argument('<name>', 'user name')
      .option('--admin', 'server admin: reads and writes everything')
      .option('--project <p>', 'project to join')
      .option('--role <r>', 'admin, member or reader', 'member')
      .option('--json', 'machine-readable output'),
  ).action(async (name: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o);
    if (remote) {
      let u = await remote.addUser(name, { admin: Boolean(o.admin) });
      if (o.project) u = await remote.setRole(String(o.project), name, String(o.role) as 'member');
      if (o.json) printJson(u);
      else
        process.stdout.write(
          `user ${name}${u.admin ? ' (server admin)' : ''}: ${u.projects.map((p) => `${p.project}:${p.role}`).join(' ') || 'no project'}\n`,
        );
      return;
    }
    await withAccess(o, async (_lib, access) => {
      await access.addUser(name, { admin: Boolean(o.admin) });
      if (o.project) {
        await access.addProject(String(o.project));
        await access.setRole(String(o.project), name, String(o.role) as 'member');
      }
      const u = (await access.users()).find((x) => x.name === name);
      if (o.json) printJson(u);
      else
        process.stdout.write(
          `user ${name}${u?.admin ? ' (server admin)' : ''}: ${u?.projects.map((p) => `${p.project}:${p.role}`).join(' ') || 'no project'}\n`,
        );
    });
  });
  withLib(
    user.command('list').description('users and their projects').option('--json', 'machine-readable output'),
  ).action(async (o: Record<string, unknown>) => {
    await withAccess(o, async (_lib, access) => {
      const us = await access.users();
      if (o.json) return printJson(us);
      for (const u of us) {
        process.stdout.write(
          `${u.name}${u.admin ? ' (admin)' : ''}  ${u.projects.map((p) => `${p.project}:${p.role}`).join(' ')}\n`,
        );
      }
    });
  });

  const project = program.command('project').description('projects of the library service');
  withAccounts(project.command('add').argument('<name>', 'project name').description('add a project')).action(
    async (name: string, o: Record<string, unknown>) => {
      const remote = await remoteOf(o);
      await withAccessOr(remote, o, async (access) => {
        if (remote) await remote.addProject(name);
        else await (access as Access).addProject(name);
        process.stdout.write(`project ${name}\n`);
      });
    },
  );

  const token = program.command('token').description('API tokens (stored hashed; the secret is shown once)');
  withAccounts(
    token
      .command('create')
      .description('a token for USER in PROJECT')
      .option('--user <name>', 'whose token (required locally; remotely: the caller, unless a server admin names one)')
      .option('--project <p>', 'the project it acts in (a server admin may omit it)')
      .option('--scope <s>', 'read or write', 'read')
      .option('--expires <d>', 'lifetime: 30d, 12h, 90m ... (default: never)')
      .option('--json', 'machine-readable output'),
  ).action(async (o: Record<string, unknown>) => {
    const { parseDuration } = await import('../../serve/index.js');
    const scope = String(o.scope);
    if (scope !== 'read' && scope !== 'write') throw new StrataError('USAGE', '--scope is read or write');
    const remote = await remoteOf(o);
    if (!remote && o.user === undefined) throw new StrataError('USAGE', 'token create needs --user');
    await withAccessOr(remote, o, async (access) => {
      const r = remote
        ? await (async () => {
            const t = await remote.createToken({
              user: o.user as string | undefined,
              project: o.project as string | undefined,
              scope,
              expires: o.expires as string | undefined,
            });
            const { token, ...row } = t;
            return { token, row };
          })()
        : await (access as Access).createToken({
            user: String(o.user),
            project: o.project as string | undefined,
            scope,
            expiresInMs: o.expires ? parseDuration(String(o.expires)) : undefined,
          });
      if (o.json) return printJson({ token: r.token, ...r.row });
      process.stdout.write(`${r.token}\n`);
      process.stderr.write(
        `strata: token ${r.row.id} for ${r.row.user}${r.row.project ? ` in ${r.row.project}` : ''}, ${r.row.scope}, expires ${r.row.expires ?? 'never'} (shown once: keep it)\n`,
      );
    });
  });
  withAccounts(
    token
      .command('revoke')
      .description('revoke a token by its id')
      .argument('<id>', 'token id (token list shows them)'),
  ).action(async (id: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o);
    await withAccessOr(remote, o, async (access) => {
      if (remote) await remote.revokeToken(id);
      else if (!(await (access as Access).revokeToken(id))) throw new StrataError('NOT_FOUND', `no live token ${id}`);
      process.stdout.write(`revoked ${id}\n`);
    });
  });
  withAccounts(
    token
      .command('list')
      .description('tokens (ids, never secrets)')
      .option('--user <name>', 'only this user’s')
      .option('--json', 'machine-readable output'),
  ).action(async (o: Record<string, unknown>) => {
    const remote = await remoteOf(o);
    await withAccessOr(remote, o, async (access) => {
      const rows = remote
        ? await remote.tokens(o.user as string | undefined)
        : await (access as Access).tokens(o.user as string | undefined);
      if (o.json) return printJson(rows);
      for (const t of rows) {
        process.stdout.write(
          `${t.id}  ${t.user}  ${t.project ?? '-'}  ${t.scope}  expires ${t.expires ?? 'never'}${t.revoked ? `  revoked ${t.revoked}` : ''}\n`,
        );
      }
    });
  });
}

/**
 * `strata serve --workers N`: the primary (this process) prepares the library once (made,
 * migrated: workers would race to), then forks N workers running the same command, which
 * share the listening port (node cluster: the primary accepts and hands connections out
 * round robin). Each worker opens the library itself: the catalog (SQLite in WAL mode or
 * PostgreSQL) and the store are made for several processes (rate limits are counted in the
 * catalog, a store miss refreshes the index, commits take the store's shared lock). A
 * worker that dies is replaced; SIGTERM or SIGINT stops all, each finishing its requests.
 */
async function servePrimary(n: number, o: Record<string, unknown>) {
  const { Library } = await import('../../library/index.js');
  const { Access, demoLibrary } = await import('../../serve/index.js');
  const lib = o.demo
    ? (await demoLibrary(typeof o.demo === 'string' ? o.demo : '.cache/serve-demo')).lib
    : await Library.open(o.library as string | undefined, { create: true, ...placesFrom(o) });
  await Access.open(lib.catalog.db);
  await lib.close();
  let stopping = false;
  const started = new Map<number, number>();
  const fork = () => {
    const w = cluster.fork();
    started.set(w.id, Date.now());
  };
  cluster.on('exit', (w, code, signal) => {
    if (stopping) return;
    const lived = Date.now() - (started.get(w.id) ?? 0);
    process.stderr.write(
      `strata: worker ${w.process.pid} exited (${signal ?? code})${lived < 5000 ? '' : ': starting another'}\n`,
    );
    if (lived >= 5000) return fork();
    // dying at start-up (a bad option, the port taken): stop, not loop
    stopping = true;
    for (const x of Object.values(cluster.workers ?? {})) x?.process.kill('SIGTERM');
    process.exitCode = 1;
  });
  for (let i = 0; i < n; i++) fork();
  await new Promise<void>((resolve) => {
    const stop = () => {
      stopping = true;
      const left = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined);
      if (left.length === 0) return resolve();
      let alive = left.length;
      for (const w of left) {
        w.once('exit', () => {
          if (--alive === 0) resolve();
        });
        w.process.kill('SIGTERM');
      }
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    cluster.on('exit', () => {
      if (stopping && Object.keys(cluster.workers ?? {}).length === 0) resolve();
    });
  });
}

/**
 * The file routes' blob cache from the disk cache's options: the same size; introspective
 * (with those of --prefetch it has: meta, file) or a plain LRU of blobs for lru and readahead.
 */
function blobCacheFrom(d: { policy: string; prefetch?: readonly string[]; cacheSize?: number }): {
  policy: 'lru' | 'introspective';
  capacity?: number;
  prefetch?: string[];
} {
  if (d.policy !== 'introspective') return { policy: 'lru', capacity: d.cacheSize };
  return {
    policy: 'introspective',
    capacity: d.cacheSize,
    prefetch: d.prefetch ? d.prefetch.filter((p) => p === 'meta' || p === 'file') : undefined,
  };
}
