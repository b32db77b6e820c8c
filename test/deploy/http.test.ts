import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { parseByteRange, parseHostPort } from '../../src/deploy/http.js';
import { run, runBuffer } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { prng, sameAs, startDeploy, twoVersions } from './helpers.js';

/**
 * `strata deploy --http`: the deploy's view over HTTP range requests, checked with clients
 * nobody here wrote: curl (ranges, HEAD, status and headers) and qemu's curl block driver
 * (qemu-img compare over `json:{"driver":"raw","file":{"driver":"http",...}}`, from
 * qemu-block-extra), mid-copy and once the deploy is complete.
 */
let dir: string;
let lib: string;
let v1: string;

before(async () => {
  dir = tempDir('deploy-http');
  ({ lib, v1 } = await twoVersions(dir));
});

/** curl: status, headers (lower-case names) and body. */
async function curl(
  url: string,
  args: string[],
): Promise<{ status: number; headers: Map<string, string>; body: Buffer }> {
  const out = path.join(dir, `curl-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const hdr = await run('curl', ['-sS', '-D', '-', '-o', out, ...args, url]);
  const lines = hdr.split('\r\n');
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(lines[0])?.[1]);
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers.set(l.slice(0, i).toLowerCase(), l.slice(i + 1).trim());
  }
  let body = Buffer.alloc(0);
  try {
    body = readFileSync(out);
  } catch {}
  return { status, headers, body };
}

/** qemu-img compare of a raw file with the disk read by qemu's curl block driver: true when identical. */
function sameOverHttp(raw: string, url: string): Promise<boolean> {
  const spec = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'http', url, readahead: 65536 } })}`;
  return new Promise((resolve, reject) => {
    execFile('qemu-img', ['compare', '-f', 'raw', raw, spec], (e, _o, stderr) => {
      const code = e ? (e as { code?: number }).code : 0;
      if (code === 0) resolve(true);
      else if (code === 1) resolve(false);
      else reject(new Error(`qemu-img compare over HTTP failed (${code}): ${stderr}`));
    });
  });
}

describe('strata deploy --http', () => {
  test('Range requests read the version mid-copy (fetched first), then TARGET alone', async () => {
    const target = path.join(dir, 'http.raw');
    const d = await startDeploy([
      'disk@1',
      '--library',
      lib,
      '--to',
      target,
      '--bandwidth',
      '1M',
      '--http',
      '127.0.0.1:0',
    ]);
    const image = readFileSync(v1);
    const size = image.length;
    try {
      const { url } = (await d.event('http')) as { url: string };
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/disk\.raw$/);

      const head = await curl(url, ['-I']);
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('accept-ranges'), 'bytes');
      assert.equal(head.headers.get('content-length'), String(size));
      const headRange = await curl(url, ['-I', '-r', '0-511']);
      assert.equal(headRange.status, 206);
      assert.equal(headRange.headers.get('content-range'), `bytes 0-511/${size}`);

      const r = prng(2016);
      for (let i = 0; i < 10; i++) {
        assert.ok(!d.events.some((e) => e.event === 'complete'), `read ${i} runs while the copy is under way`);
        const n = 1 + Math.floor(r() * 300_000);
        const o = Math.floor(r() * (size - n));
        const got = await curl(url, ['-r', `${o}-${o + n - 1}`]);
        assert.equal(got.status, 206, `range ${o}+${n}`);
        assert.equal(got.headers.get('content-range'), `bytes ${o}-${o + n - 1}/${size}`);
        assert.equal(got.headers.get('content-length'), String(n));
        assert.ok(got.body.equals(image.subarray(o, o + n)), `range ${o}+${n} reads as the version`);
      }
      // a suffix range, an open range, a range past the end
      const tail = await curl(url, ['-r', '-4096']);
      assert.equal(tail.status, 206);
      assert.ok(tail.body.equals(image.subarray(size - 4096)));
      const open = await curl(url, ['-r', `${size - 10000}-`]);
      assert.ok(open.body.equals(image.subarray(size - 10000)));
      const past = await curl(url, ['-r', `${size}-`]);
      assert.equal(past.status, 416);
      assert.equal(past.headers.get('content-range'), `bytes */${size}`);
      assert.equal((await curl(url.replace('/disk.raw', '/other'), [])).status, 404);
      assert.equal((await curl(url, ['-X', 'POST', '--data', 'x'])).status, 405);

      // the next progress event counts the reads fetched ahead of the copier
      const seen = d.events.length;
      while (!d.events.slice(seen).some((e) => e.event === 'progress'))
        await new Promise((res) => setTimeout(res, 100));
      const p = d.events.slice(seen).find((e) => e.event === 'progress')!;
      assert.ok(Number(p.guestFetches) > 0, 'HTTP reads were fetched ahead of the copier');
      assert.ok(!d.events.some((e) => e.event === 'complete'), 'still copying');

      // qemu's curl driver reads the whole disk over HTTP (the rest fetched on demand)
      assert.equal(await sameOverHttp(v1, url), true, 'qemu-img compare over HTTP mid-copy');
      await d.event('complete');
      assert.equal(await sameOverHttp(v1, url), true, 'qemu-img compare over HTTP once TARGET alone serves');
      const whole = await runBuffer('curl', ['-sS', url]);
      assert.ok(whole.equals(image), 'a GET without Range is the whole disk');
    } finally {
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0, `the deploy exits 0 on SIGTERM: ${d.stderr()}`);
    }
    assert.equal(await sameAs(v1, target), true, 'TARGET is the version');
  });

  test('Range headers and --http addresses parse as RFC 9110 says', () => {
    assert.deepEqual(parseByteRange(undefined, 100), null);
    assert.deepEqual(parseByteRange('bytes=0-9', 100), [0, 10]);
    assert.deepEqual(parseByteRange('bytes=90-', 100), [90, 100]);
    assert.deepEqual(parseByteRange('bytes=90-500', 100), [90, 100]);
    assert.deepEqual(parseByteRange('bytes=-10', 100), [90, 100]);
    assert.deepEqual(parseByteRange('bytes=-500', 100), [0, 100]);
    assert.equal(parseByteRange('bytes=100-', 100), 'unsatisfiable');
    assert.equal(parseByteRange('bytes=-0', 100), 'unsatisfiable');
    assert.equal(parseByteRange('bytes=0-1,5-6', 100), null, 'several ranges: the whole body');
    assert.equal(parseByteRange('items=0-1', 100), null);
    assert.equal(parseByteRange('bytes=9-3', 100), null);
    assert.deepEqual(parseHostPort('8080'), { host: '127.0.0.1', port: 8080 });
    assert.deepEqual(parseHostPort('0.0.0.0:80'), { host: '0.0.0.0', port: 80 });
    assert.deepEqual(parseHostPort('[::1]:0'), { host: '::1', port: 0 });
    assert.throws(() => parseHostPort('host:99999'), /HOST:\]PORT/);
    assert.throws(() => parseHostPort('nope'), /HOST:\]PORT/);
  });
});
