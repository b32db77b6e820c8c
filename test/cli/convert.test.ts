import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { IMAGE_GROUPS } from '../../src/cli/image-groups.js';
import { IMAGE_VERBS } from '../../src/cli/image-verbs.js';
import { writePatternDisk } from '../helpers/disk-pattern.js';
import { qemuCheck, qemuCompare } from '../helpers/qemu-oracles.js';
import { fixture, ROOT, run, scratch } from '../helpers/tools.js';

const pexec = promisify(execFile);
const BIN = path.join(ROOT, 'dist', 'cli', 'strata.cjs');
const SIZE = 20 * 1024 * 1024 + 4321;

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the built CLI with pipes (so stdout/stderr are not TTYs); `node`: Node's own options first. */
function strata(
  args: string[],
  cwd?: string,
  opts: { env?: NodeJS.ProcessEnv; node?: string[] } = {},
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...(opts.node ?? []), BIN, ...args], {
      cwd,
      env: opts.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const pattern = () => fixture(`cli-convert-${SIZE}-s5-v1.raw`, async (out) => writePatternDisk(out, SIZE, 5));

function assertOneLineError(o: Outcome, mention: RegExp): void {
  assert.equal(o.code, 1, `exit code (stderr: ${o.stderr})`);
  const lines = o.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line: ${o.stderr}`);
  assert.match(lines[0], /^strata: /);
  assert.match(lines[0], mention);
  assert.doesNotMatch(o.stderr, /internal error|at .*\.js:\d+/);
}

test('convert raw -> qcow2 -> raw: exit 0, silent without a TTY, identical per qemu-img', async () => {
  const src = await pattern();
  const dir = scratch('cli-conv');
  const q = path.join(dir, 'out.qcow2');
  const r1 = await strata(['convert', src, q, '-O', 'qcow2']);
  assert.equal(r1.code, 0, r1.stderr);
  assert.equal(r1.stdout, '');
  assert.equal(r1.stderr, '', 'no progress output when stderr is not a TTY');
  await qemuCheck(q);
  await qemuCompare(src, 'raw', q, 'qcow2');
  const back = path.join(dir, 'back.raw');
  const r2 = await strata(['convert', q, back, '-O', 'raw']);
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal(r2.stderr, '');
  await qemuCompare(src, 'raw', back, 'raw');
  // qcow2 counts whole 512-byte sectors (as qemu does), so the round trip pads the tail.
  assert.equal(statSync(back).size, Math.ceil(SIZE / 512) * 512);
  assert.deepEqual(readdirSync(dir).sort(), ['back.raw', 'out.qcow2'], 'no temporary files left');
});

test('convert options: zstd compression, cluster size, backing file, --json summary', async () => {
  const base = await pattern();
  const dir = scratch('cli-conv-opts');
  const derived = path.join(dir, 'derived.raw');
  writeFileSync(derived, readFileSync(base));
  writeFileSync(path.join(dir, 'base.raw'), readFileSync(base));
  const buf = readFileSync(derived);
  buf.fill(0x42, 1_000_000, 1_300_000);
  buf.fill(0, 4_000_000, 6_000_000);
  writeFileSync(derived, buf);

  const z = path.join(dir, 'z.qcow2');
  const r = await strata([
    'convert',
    derived,
    z,
    '-O',
    'qcow2',
    '--compression-type',
    'zstd',
    '--cluster-size',
    '128K',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const summary = JSON.parse(r.stdout) as { virtualSize: number; bytesWritten: number; compression: string };
  assert.equal(summary.virtualSize, SIZE);
  assert.equal(summary.compression, 'zstd');
  assert.equal(summary.bytesWritten <= statSync(z).size, true);
  await qemuCheck(z);
  await qemuCompare(derived, 'raw', z, 'qcow2');
  const zi = JSON.parse(await run('qemu-img', ['info', '--output=json', z])) as Record<string, unknown>;
  assert.equal(zi['cluster-size'], 128 * 1024);
  assert.equal((zi['format-specific'] as { data: Record<string, unknown> }).data['compression-type'], 'zstd');

  const o = path.join(dir, 'overlay.qcow2');
  const rb = await strata(['convert', derived, o, '-O', 'qcow2', '-B', 'base.raw', '-F', 'raw']);
  assert.equal(rb.code, 0, rb.stderr);
  await qemuCheck(o);
  await qemuCompare(derived, 'raw', o, 'qcow2');
  const oi = JSON.parse(await run('qemu-img', ['info', '--output=json', o])) as Record<string, unknown>;
  assert.equal(oi['backing-filename'], 'base.raw');
  assert.equal(oi['backing-filename-format'], 'raw');
  assert.ok(statSync(o).size < statSync(z).size, 'the overlay holds only the differences');
});

test('bad input and bad options: exit 1 with one line, no output file', async () => {
  const src = await pattern();
  const dir = scratch('cli-conv-bad');
  const out = path.join(dir, 'out.img');
  assertOneLineError(await strata(['convert', path.join(dir, 'missing.img'), out, '-O', 'raw']), /missing\.img/);
  assertOneLineError(await strata(['convert', src, out, '-O', 'vmdk']), /vmdk/);
  assertOneLineError(await strata(['convert', src, out, '-O', 'raw', '-c']), /qcow2/);
  assertOneLineError(await strata(['convert', src, out, '-O', 'qcow2', '--cluster-size', '3000']), /cluster size/);
  assertOneLineError(await strata(['convert', src, out, '-O', 'qcow2', '--compression-type', 'lz4']), /lz4/);
  assertOneLineError(await strata(['convert', src, out, '-O', 'qcow2', '-B', 'nope.qcow2']), /nope\.qcow2/);
  assert.deepEqual(readdirSync(dir), [], 'nothing written, not even a temporary file');
});

test('a convert that fails midway leaves no output and keeps an existing file intact', async () => {
  const big = await fixture('cli-convert-96M-s6-v1.raw', async (out) => writePatternDisk(out, 96 * 1024 * 1024, 6));
  const dir = scratch('cli-conv-fail');
  // A qcow2 cut short: its first clusters read fine, later L2 entries point past the end.
  const cut = path.join(dir, 'cut.qcow2');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', big, cut]);
  truncateSync(cut, Math.floor(statSync(cut).size * 0.8));
  const out = path.join(dir, 'out.raw');
  writeFileSync(out, 'precious');
  // --force: replacing is allowed, so the failure is the read's (without it the existing output is refused first)
  const r = await strata(['convert', cut, out, '-O', 'raw', '--force']);
  assertOneLineError(r, /cut\.qcow2/);
  assert.equal(readFileSync(out, 'utf8'), 'precious', 'the existing output is untouched');
  assert.deepEqual(readdirSync(dir).sort(), ['cut.qcow2', 'out.raw'], 'the temporary file is removed');

  // Output names an existing directory: all data is written, then putting it in place fails.
  const target = path.join(dir, 'adir');
  mkdirSync(target);
  const r2 = await strata(['convert', await pattern(), target, '-O', 'qcow2', '--force']);
  assertOneLineError(r2, /adir/);
  assert.deepEqual(readdirSync(target), []);
  assert.deepEqual(readdirSync(dir).sort(), ['adir', 'cut.qcow2', 'out.raw']);
  assert.equal(existsSync(path.join(dir, 'out.raw')), true);
});

test('a progress bar appears on stderr when it is a TTY (script(1) provides one)', async () => {
  const src = await pattern();
  const dir = scratch('cli-conv-tty');
  const out = path.join(dir, 'out.qcow2');
  // script(1) runs the command on a pseudo-terminal and copies what it prints.
  const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} convert ${JSON.stringify(src)} ${JSON.stringify(out)} -O qcow2`;
  const { stdout } = await pexec('script', ['-qefc', cmd, '/dev/null']);
  assert.match(stdout, /converting/);
  assert.match(stdout, /\d+% \| \d+\/\d+ MiB/);
  await qemuCompare(src, 'raw', out, 'qcow2');
});

test('convert runs from its own bundle (strata-convert.cjs), info and map from strata-image.cjs, other verbs from the whole CLI', async () => {
  const dir = scratch('cli-bundle-choice');
  mkdirSync(dir, { recursive: true });
  const img = path.join(dir, 'tiny.raw');
  writeFileSync(img, Buffer.alloc(1 << 20, 7));
  /** Which bundle a run loaded: the code cache file it wrote (Node 20) or the module it required (Node >= 22.1). */
  const loaded = async (args: string[]): Promise<string[]> => {
    const cache = path.join(dir, `cache-${args[0]}`);
    const r = await strata(args, undefined, {
      env: { ...process.env, STRATA_CODE_CACHE: cache, NODE_DEBUG: 'module' },
    });
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    const names = new Set<string>();
    for (const m of r.stderr.matchAll(/(strata-(?:image|main|convert))\.cjs/g)) names.add(m[1]);
    if (existsSync(cache))
      for (const f of readdirSync(cache)) names.add(/^code-(strata-(?:image|main|convert))-/.exec(f)?.[1] ?? f);
    return [...names].sort();
  };
  assert.deepEqual(await loaded(['convert', '-O', 'raw', img, path.join(dir, 'out.raw')]), ['strata-convert']);
  assert.deepEqual(readFileSync(path.join(dir, 'out.raw')), readFileSync(img));
  assert.deepEqual(await loaded(['info', img]), ['strata-image']);
  assert.deepEqual(await loaded(['images', '--help']), ['strata-main']);
  assert.deepEqual(await loaded(['convert', '--help']), ['strata-convert']);
  // the verbs launch.ts sends to the image bundle are exactly the verbs its groups register
  assert.deepEqual(IMAGE_GROUPS.flatMap((g) => g.verbs).sort(), [...IMAGE_VERBS].sort());
});

test('a plain convert of a file loads neither the library (node:crypto) nor workers, node:v8, node:tty or stdout', async () => {
  // Start-up is most of a short convert (issue 26): each of these built-ins cost 2-8 ms of CPU
  // to load. Counted from Node's own list of loaded modules, so the test does not time anything.
  const dir = scratch('cli-conv-modules');
  const img = path.join(dir, 'in.raw');
  writeFileSync(img, Buffer.alloc(1 << 20, 9));
  const list = path.join(dir, 'modules.txt');
  const hook = path.join(dir, 'hook.cjs');
  writeFileSync(
    hook,
    `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(list)}, process.moduleLoadList.join('\\n')));\n`,
  );
  const out = path.join(dir, 'out.raw');
  const r = await strata(['convert', img, out, '-O', 'raw'], undefined, { node: ['-r', hook] });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readFileSync(out), readFileSync(img));
  const loaded = new Set(readFileSync(list, 'utf8').split('\n'));
  assert.ok(loaded.has('NativeModule fs/promises'), 'the list is the real one (convert reads through fs/promises)');
  for (const m of ['crypto', 'worker_threads', 'v8', 'tty', 'net', 'internal/worker']) {
    assert.ok(!loaded.has(`NativeModule ${m}`), `convert loaded node:${m}`);
  }
  // the same convert with the progress bar's terminal check and --json output still works
  const j = await strata(['convert', img, path.join(dir, 'out2.raw'), '-O', 'raw', '--json']);
  assert.equal(j.code, 0, j.stderr);
  assert.equal(JSON.parse(j.stdout).virtualSize, 1 << 20);
});
