import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { Library } from '../../src/library/library.js';
import { RemoteError, RemoteLibrary } from '../../src/serve/http/client.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import type { StrataError } from '../../src/util/errors.js';
import { CLI } from '../helpers/cli.js';
import { baseTree, extImageOf, tempDir } from '../library/images.js';
import { addPeople, serve } from './http-helpers.js';

/**
 * The typed client's transport (node:http with a keep-alive agent, not fetch): a remote
 * check-in and listing load no undici (Node's fetch, ~40 ms of a command's start-up);
 * redirects are followed as fetch follows them (the token stays with its origin); problem
 * answers and an unreachable service are the errors they were.
 */
let dir: string;
let srv: Library;
let server: RunningServer;
let tokens: Record<string, string>;
let img: string;
let front: Server;
let frontUrl: string;

before(async () => {
  dir = tempDir('serve-client');
  img = await extImageOf('ext4', await baseTree(), 'client-base', 64);
  srv = await Library.open(path.join(dir, 'server'));
  ({ tokens } = await addPeople(srv));
  server = await serve(srv);
  // a front that sends every request on to the service: 307/308 keep the method and body, 303 makes a GET
  front = createServer((req, res) => {
    const status = req.url?.startsWith('/see-other') ? 303 : req.method === 'POST' ? 308 : 307;
    const to = req.url?.startsWith('/see-other') ? '/v1/whoami' : req.url;
    req.resume();
    res.writeHead(status, { location: `${server.url}${to}` }).end();
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  frontUrl = `http://127.0.0.1:${(front.address() as { port: number }).port}`;
});

after(async () => {
  front?.closeAllConnections();
  await new Promise((r) => front?.close(r));
  await server?.close();
  await srv?.close();
});

/** The CLI with a hook that writes Node's list of loaded modules at exit. */
async function strataModules(
  args: string[],
  name: string,
): Promise<{ code: number; stderr: string; loaded: string[] }> {
  const list = path.join(dir, `${name}.modules`);
  const hook = path.join(dir, `${name}.cjs`);
  writeFileSync(
    hook,
    `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(list)}, process.moduleLoadList.join('\\n')));\n`,
  );
  const r = await new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    const p = spawn(process.execPath, ['-r', hook, CLI, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, STRATA_TOKEN: tokens['own-member'] },
    });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stderr }));
  });
  return { ...r, loaded: readFileSync(list, 'utf8').split('\n') };
}

test('a remote check-in and a listing load no undici (fetch)', async () => {
  const c = await strataModules(['checkin', img, '--name', 'own/base', '--remote', server.url], 'checkin');
  assert.equal(c.code, 0, c.stderr);
  assert.ok(c.loaded.includes('NativeModule http'), 'the list is the real one (the client speaks node:http)');
  assert.deepEqual(
    c.loaded.filter((m) => /undici/.test(m)),
    [],
  );
  assert.equal((await srv.catalog.versions('own/base')).length, 1);
  const l = await strataModules(['images', '--remote', server.url], 'images');
  assert.equal(l.code, 0, l.stderr);
  assert.deepEqual(
    l.loaded.filter((m) => /undici/.test(m)),
    [],
  );
});

test('redirects are followed as fetch follows them; the token stays with its origin', async () => {
  // same answers through the front as from the service, without the token (another origin)
  const via = new RemoteLibrary(frontUrl, tokens['own-member']);
  assert.deepEqual(await via.whoami(), await new RemoteLibrary(server.url).whoami());
  assert.equal((await new RemoteLibrary(server.url, tokens['own-member']).whoami()).user, 'own-member');
  // a POST sent on by 308 keeps its body: the service answers it (a problem: no token arrived)
  await assert.rejects(via.missing(['ab'.repeat(32)]), (e: RemoteError) => {
    assert.ok(e instanceof RemoteError);
    assert.equal(e.status, 401);
    assert.equal(e.code, 'DENIED');
    assert.match(e.message, /needs a write token/);
    assert.equal(e.problem?.status, 401);
    return true;
  });
  // 303 turns a POST into a GET of the place it names
  const seeOther = new RemoteLibrary(`${frontUrl}/see-other`);
  assert.deepEqual(await seeOther.json('POST', '', { json: { x: 1 } }), await new RemoteLibrary(server.url).whoami());
});

test('problem answers and an unreachable service are the errors they were', async () => {
  const remote = new RemoteLibrary(server.url, tokens['own-member']);
  await assert.rejects(remote.image('own/none'), (e: RemoteError) => {
    assert.ok(e instanceof RemoteError);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'NOT_FOUND');
    assert.equal(e.problem?.status, 404);
    return true;
  });
  await assert.rejects(new RemoteLibrary('http://127.0.0.1:1').whoami(), (e: StrataError) => {
    assert.equal(e.code, 'IO');
    assert.match(e.message, /cannot reach the library service: connect ECONNREFUSED 127\.0\.0\.1:1/);
    return true;
  });
});
