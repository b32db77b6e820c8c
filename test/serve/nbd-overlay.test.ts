import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { baseQcow2, chainDir, fileSha, nbdsh, serveImage } from '../helpers/nbd.js';
import { ROOT, run, scratch } from '../helpers/tools.js';

/** qemu-io commands that cover partial clusters, cluster-crossing writes, zeroing, discard and the disk's last bytes. */
const WRITES = [
  'write -P 0x11 100k 200k',
  'write -P 0x22 1M 64k',
  'write -P 0x33 5000 3000',
  'write -z 12M 96k',
  'write -z 20M 1M',
  'write -P 0x44 63M 1M',
  'write -P 0x55 67108352 512',
];

function qemuIo(target: string, cmds: string[], format = 'raw'): Promise<string> {
  return run('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), target]);
}

/** The oracle: the disk as qemu reads it, as raw, with the same writes applied by qemu-io. */
async function expectedRaw(image: string, cmds: string[], dir: string): Promise<string> {
  const out = path.join(dir, `expected-${Math.random().toString(36).slice(2)}.raw`);
  await run('qemu-img', ['convert', '-O', 'raw', image, out], { cwd: path.dirname(image) });
  if (cmds.length > 0) await qemuIo(out, cmds); // (without commands qemu-io would wait on stdin)
  return out;
}

test('qemu-io writes through an overlay on a backing chain: qemu-img check is clean, the disk compares, the original is untouched', async () => {
  const chain = await chainDir();
  const child = path.join(chain, 'child.qcow2');
  const before = [fileSha(child), fileSha(path.join(chain, 'base.qcow2'))];
  const dir = scratch('nbd-overlay');
  try {
    // The overlay lives beside a copy of the chain, so its relative backing path resolves for qemu.
    for (const f of ['base.qcow2', 'child.qcow2']) copyFileSync(path.join(chain, f), path.join(dir, f));
    const image = path.join(dir, 'child.qcow2');
    const overlay = path.join(dir, 'overlay.qcow2');
    const { server, errors, uri } = await serveImage(image, { overlay });
    try {
      await qemuIo(uri(), [...WRITES, 'flush']);
      // Writes past the end: ENOSPC, seen by a client that does not check bounds itself.
      const script = [
        'import errno',
        'h.set_strict_mode(0)',
        'try:',
        '  h.pwrite(b"x" * 1024, h.get_size() - 512); raise SystemExit("accepted")',
        'except nbd.Error as e:',
        '  assert e.errnum == errno.ENOSPC, e',
        'assert not h.is_read_only() and h.can_multi_conn() and h.can_zero() and h.can_trim() and h.can_fua()',
        'print("ok")',
      ].join('\n');
      assert.equal((await nbdsh(uri(), script)).trim(), 'ok');
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
    assert.match(await run('qemu-img', ['check', overlay]), /No errors/);
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', overlay]));
    assert.equal(info['backing-filename'], 'child.qcow2');
    assert.equal(info['format-specific'].data.corrupt, false);
    const expected = await expectedRaw(child, WRITES, dir);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, expected]), /identical/);
    assert.deepEqual([fileSha(image), fileSha(path.join(dir, 'base.qcow2'))], before);

    // Reopened: the overlay keeps what it had and takes more writes.
    const more = ['write -P 0x66 2M 128k', 'write -P 0x77 100k 4k'];
    const again = await serveImage(image, { overlay });
    try {
      await qemuIo(again.uri(), more);
    } finally {
      await again.server.close();
    }
    assert.deepEqual(again.errors, []);
    assert.match(await run('qemu-img', ['check', overlay]), /No errors/);
    await qemuIo(expected, more);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, expected]), /identical/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('several clients read while one writes through the overlay; content checked afterwards', async () => {
  const dir = scratch('nbd-concurrent');
  try {
    const image = path.join(dir, 'base.qcow2');
    copyFileSync(await baseQcow2(), image);
    const overlay = path.join(dir, 'overlay.qcow2');
    // Readers hash the first 16 MiB (never written) several times; the oracle is qemu's raw conversion.
    const fd = openSync(await expectedRaw(image, [], dir), 'r');
    const head = Buffer.alloc(16 << 20);
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    const want = createHash('sha256').update(head).digest('hex');
    const { server, errors, uri } = await serveImage(image, { overlay });
    const writes: string[] = [];
    for (let i = 0; i < 24; i++) writes.push(`write -P 0x${(0x30 + i).toString(16)} ${32 + i}M ${64 + i * 7}k`);
    try {
      const reader = [
        'import hashlib',
        'digests = set()',
        'for r in range(4):',
        '  s = hashlib.sha256()',
        '  for off in range(0, 16 << 20, 1 << 20):',
        '    s.update(h.pread(1 << 20, off))',
        '  digests.add(s.hexdigest())',
        'print(" ".join(sorted(digests)))',
      ].join('\n');
      const results = await Promise.all([
        nbdsh(uri(), reader),
        nbdsh(uri(), reader),
        nbdsh(uri(), reader),
        qemuIo(uri(), writes),
      ]);
      for (const r of results.slice(0, 3)) assert.equal(r.trim(), want);
    } finally {
      await server.close();
    }
    assert.deepEqual(errors, []);
    assert.match(await run('qemu-img', ['check', overlay]), /No errors/);
    const expected = await expectedRaw(image, writes, dir);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, expected]), /identical/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('strata nbd CLI: prints the URIs, traces requests, and on SIGTERM leaves a clean overlay', async () => {
  const dir = scratch('nbd-cli');
  try {
    const image = path.join(dir, 'base.qcow2');
    copyFileSync(await baseQcow2(), image);
    const overlay = path.join(dir, 'overlay.qcow2');
    const trace = path.join(dir, 'trace.jsonl');
    const child = spawn(
      process.execPath,
      [
        path.join(ROOT, 'dist/cli/strata.cjs'),
        'nbd',
        image,
        '--port',
        '0',
        '--overlay',
        overlay,
        '--trace',
        trace,
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stderr.on('data', (c) => (err += c));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const listening = await new Promise<{ exports: Array<{ uri: string; name: string; readOnly: boolean }> }>(
      (resolve, reject) => {
        child.stdout.on('data', (c) => {
          out += c;
          try {
            resolve(JSON.parse(out));
          } catch {}
        });
        exited.then(() => reject(new Error(`strata nbd exited: ${err}`)));
      },
    );
    assert.equal(listening.exports.length, 1);
    assert.equal(listening.exports[0].readOnly, false);
    const uri = listening.exports[0].uri;
    assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/base\.qcow2$/);
    await qemuIo(uri, ['write -P 0x99 3M 192k', 'read -P 0x99 3M 192k']);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, err);
    assert.match(await run('qemu-img', ['check', overlay]), /No errors/);
    const expected = await expectedRaw(image, ['write -P 0x99 3M 192k'], dir);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, expected]), /identical/);
    const records = readFileSync(trace, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const w = records.find((r) => r.op === 'write');
    assert.ok(w, 'a write record');
    assert.equal(w.offset, 3 << 20);
    assert.equal(w.length, 192 << 10);
    assert.ok(records.some((r) => r.op === 'read' && r.offset === 3 << 20));
    for (const r of records) {
      assert.equal(typeof r.time, 'number');
      assert.equal(typeof r.latency, 'number');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('after a SIGKILL, flushed writes survive: qemu-img check -r all repairs the dirty overlay and it compares', async () => {
  const dir = scratch('nbd-crash');
  try {
    const image = path.join(dir, 'base.qcow2');
    copyFileSync(await baseQcow2(), image);
    const overlay = path.join(dir, 'overlay.qcow2');
    const child = spawn(
      process.execPath,
      [path.join(ROOT, 'dist/cli/strata.cjs'), 'nbd', image, '--port', '0', '--overlay', overlay],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const uri = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c) => {
        out += c;
        const m = /^(nbd:\S+)/.exec(out);
        if (m && out.includes('\n')) resolve(m[1]);
      });
      exited.then(() => reject(new Error('strata nbd exited')));
    });
    const writes = ['write -P 0x21 7M 100k', 'write -z 30M 128k', 'flush'];
    await qemuIo(uri, writes);
    child.kill('SIGKILL');
    await exited;
    // Killed: the header still says dirty, and Strata refuses to continue it until it is repaired.
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', overlay]));
    assert.equal(info['dirty-flag'], true);
    await assert.rejects(
      import('../../src/serve/nbd/image-export.js').then((m) => m.openImageExport(image, { overlay })),
      /dirty/,
    );
    await run('qemu-img', ['check', '-r', 'all', overlay]);
    assert.match(await run('qemu-img', ['check', overlay]), /No errors/);
    const expected = await expectedRaw(image, writes.slice(0, 2), dir);
    assert.match(await run('qemu-img', ['compare', '-F', 'raw', overlay, expected]), /identical/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
