import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { HttpSource } from '../../src/io/http-source.js';
import type { StrataError } from '../../src/util/errors.js';
import { startRangeServer } from '../helpers/range-server.js';
import { scratch } from '../helpers/tools.js';

/** A TCP server that accepts connections and never says a word. */
async function stalledServer(): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets: Socket[] = [];
  const server: Server = createNetServer((s) => sockets.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/x.qcow2`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A port nothing listens on: bind one, note it, close it. */
async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function sample(dir: string): string {
  const f = path.join(dir, 'disk.raw');
  writeFileSync(f, Buffer.alloc(1 << 20, 0x5a));
  return f;
}

test('a server that accepts and never answers ends in the idle timeout, naming the URL and the seconds', async () => {
  const s = await stalledServer();
  try {
    await assert.rejects(HttpSource.open(s.url, { idleTimeoutMs: 500 }), (e: StrataError) => {
      assert.equal(e.code, 'IO');
      assert.match(e.message, /127\.0\.0\.1:\d+\/x\.qcow2/);
      assert.match(e.message, /no answer from 127\.0\.0\.1:\d+ in 0\.5 s \(idle timeout\)/);
      return true;
    });
  } finally {
    await s.close();
  }
});

test('a refused connection says so (after its retries), naming host and port', async () => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}/disk.raw`;
  await assert.rejects(HttpSource.open(url, { retryDelayMs: 10 }), (e: StrataError) => {
    assert.equal(e.code, 'IO');
    assert.ok(e.message.startsWith(url), e.message);
    assert.match(e.message, new RegExp(`connection refused by 127\\.0\\.0\\.1:${port} \\(3 attempts\\)`));
    return true;
  });
});

test('an unknown host says no such host', async () => {
  await assert.rejects(HttpSource.open('http://strata-test.invalid/disk.raw'), (e: StrataError) => {
    assert.equal(e.code, 'IO');
    assert.match(e.message, /http:\/\/strata-test\.invalid\/disk\.raw: no such host: strata-test\.invalid/);
    return true;
  });
});

test('a self-signed certificate gives a certificate message, not "fetch failed"', async () => {
  const dir = scratch('http-tls');
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  execFileSync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
  ]);
  const server = createHttpsServer({ key: readFileSync(key), cert: readFileSync(cert) }, (_req, res) => {
    res.writeHead(206, { 'content-range': 'bytes 0-0/1', 'content-length': 1 });
    res.end('x');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  try {
    await assert.rejects(HttpSource.open(`https://127.0.0.1:${port}/disk.raw`), (e: StrataError) => {
      assert.equal(e.code, 'IO');
      assert.match(e.message, new RegExp(`certificate error from 127\\.0\\.0\\.1:${port}: .*self[- ]signed`));
      assert.match(e.message, /DEPTH_ZERO_SELF_SIGNED_CERT/);
      return true;
    });
  } finally {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('a server that fails twice and then answers is retried with backoff and read', async () => {
  const dir = scratch('http-retry');
  const f = sample(dir);
  const server = await startRangeServer({ 'disk.raw': f });
  try {
    server.failNext = 2;
    const h = await HttpSource.open(server.url('disk.raw'), { retryDelayMs: 10 });
    assert.equal(h.size, 1 << 20);
    assert.equal(server.requests, 3, 'two 503s, then the answer');
    server.failNext = 2;
    assert.deepEqual(Buffer.from(await h.read(1000, 10)), Buffer.alloc(10, 0x5a));
    assert.equal(server.requests, 6);
    server.failNext = 3;
    await assert.rejects(h.read(0, 10), (e: StrataError) => /HTTP 503 for range 0\+10 \(3 attempts\)/.test(e.message));
    await assert.rejects(
      HttpSource.open(server.url('missing.raw')),
      (e: StrataError) => e.code === 'NOT_FOUND' && /HTTP 404/.test(e.message),
    );
  } finally {
    await server.close();
  }
});

test('timeouts come from the environment in seconds, and nonsense there is refused', async () => {
  const s = await stalledServer();
  const saved = process.env.STRATA_HTTP_TIMEOUT;
  try {
    process.env.STRATA_HTTP_TIMEOUT = '0.3';
    await assert.rejects(HttpSource.open(s.url), /in 0\.3 s \(idle timeout\)/);
    process.env.STRATA_HTTP_TIMEOUT = 'soon';
    await assert.rejects(HttpSource.open(s.url), (e: StrataError) => e.code === 'USAGE');
  } finally {
    if (saved === undefined) delete process.env.STRATA_HTTP_TIMEOUT;
    else process.env.STRATA_HTTP_TIMEOUT = saved;
    await s.close();
  }
});
