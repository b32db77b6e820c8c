import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer as createNetServer, type Socket } from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { startRangeServer } from '../helpers/range-server.js';
import { scratch } from '../helpers/tools.js';

test('info and map of a 1 GiB raw image served over HTTP answer without reading it', async () => {
  const dir = scratch('cli-http');
  const f = path.join(dir, 'big.raw');
  execFileSync('truncate', ['-s', '1G', f]);
  writeFileSync(f, Buffer.from('not a partition table'), { flag: 'r+' });
  const server = await startRangeServer({ 'big.raw': f });
  try {
    const info = await strata(['info', '--json', server.url('big.raw')]);
    assert.equal(info.code, 0, info.stderr);
    const j = JSON.parse(info.stdout) as { format: string; virtualSize: number };
    assert.equal(j.format, 'raw');
    assert.equal(j.virtualSize, 1024 ** 3);
    const map = await strata(['map', '--json', server.url('big.raw')]);
    assert.equal(map.code, 0, map.stderr);
    // one JSON array, or one record per line (the CLI's --json convention is being settled)
    const text = map.stdout.trim();
    const ranges = (text.startsWith('[') ? JSON.parse(text) : text.split('\n').map((l) => JSON.parse(l))) as Array<{
      start: number;
      length: number;
      data: boolean;
    }>;
    assert.deepEqual(
      ranges.map((r) => [r.start, r.length, r.data]),
      [[0, 1024 ** 3, true]],
    );
    assert.ok(server.bytesSent < 64 << 20, `sent ${server.bytesSent} bytes for info and map`);
  } finally {
    await server.close();
  }
});

test('a stalled server (accepts, never answers) ends in the timeout message within the default, or --timeout', async () => {
  const sockets: Socket[] = [];
  const server = createNetServer((s) => sockets.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/x.qcow2`;
  try {
    const r = await strata(['info', url]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), `strata: ${url}: no answer from ${new URL(url).host} in 15 s (idle timeout)`);
    const q = await strata(['map', '--timeout', '1', url]);
    assert.equal(q.code, 1);
    assert.match(q.stderr, /no answer from 127\.0\.0\.1:\d+ in 1 s \(idle timeout\)/);
    const e = await strata(['info', url], { env: { STRATA_HTTP_TIMEOUT: '2' } });
    assert.match(e.stderr, /in 2 s \(idle timeout\)/);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('refused, unknown host: one message per cause from the CLI', async () => {
  const probe = createNetServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const refused = await strata(['info', `http://127.0.0.1:${port}/d.raw`]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, new RegExp(`^strata: http://127\\.0\\.0\\.1:${port}/d\\.raw: connection refused by`));
  const unknown = await strata(['info', 'http://no-such-host.invalid/d.raw']);
  assert.equal(unknown.code, 1);
  assert.equal(unknown.stderr.trim(), 'strata: http://no-such-host.invalid/d.raw: no such host: no-such-host.invalid');
});
