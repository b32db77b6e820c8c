/**
 * bench:inspect — `strata inspect` vs `virt-inspector`, and `strata diff` vs `virt-diff`, on
 * the same Debian qcow2 images in one run; JSON lines on stdout.
 *
 * Inputs (built once under .cache/bench unless given): A = the debootstrapped bookworm
 * minbase tree (bench/ls's .cache/bench/rootfs, made here with debootstrap when missing) as
 * ext4 in partition 1 of a GPT disk, qcow2; B = the same tree with files added, removed,
 * changed and chmod-ed and one package version changed in the dpkg status.
 * STRATA_BENCH_INSPECT_A / STRATA_BENCH_INSPECT_B name other images.
 *
 * libguestfs boots a helper appliance (under TCG where there is no /dev/kvm); each peer
 * tool runs once (--peer-runs N for more, 0 for none), Strata best of --runs N (default 5).
 * The inspect case also compares virt-inspector's XML with Strata's JSON field by field.
 *
 * The libdiff case (not run by default: virt-diff of the pair takes an hour under TCG)
 * diffs library versions, from their manifests: bench:checkin's 1200 MiB base and derived
 * bookworm images (bench/common.ts) are checked in to a fresh library (--out DIR, default
 * /dev/shm/strata-bench-libdiff), then `strata diff --library L base@1 derived@1 --json`
 * (alone, --packages, --blocks) runs as a child process against `virt-diff -a base -A derived`.
 *
 * The windows case inspects the Windows test disk (test/helpers/windows-images.ts: NTFS by
 * mkntfs filled through ntfs-3g, SOFTWARE and SYSTEM hives by hivexregedit, MBR by sfdisk)
 * with both, and compares product, version, hostname, drive letters and programs. Where
 * /dev/kvm exists but qemu cannot use it (nested KVM here aborts on an MSR), set
 * LIBGUESTFS_BACKEND_SETTINGS=force_tcg.
 *
 * --cases inspect,diff,libdiff,windows chooses (default inspect,diff).
 */
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import {
  benchBaseImage,
  benchChildEnv,
  benchDerivedImage,
  benchDerivedRootfs,
  benchRootfs,
  CLI,
  childCpuMs,
  need,
  opt,
  ROOT,
  sh,
} from './common.js';

const BENCH = path.join(ROOT, '.cache', 'bench');
const RUNS = Number(opt('--runs') ?? 5);
const PEER_RUNS = Number(opt('--peer-runs') ?? 1);
const CASES = new Set((opt('--cases') ?? 'inspect,diff').split(','));

const log = (m: string) => process.stderr.write(`bench:inspect: ${m}\n`);
const line = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);
const round = (x: number) => Math.round(x * 10) / 10;

function rootfs(): string {
  return benchRootfs(BENCH, log);
}

/** ext4 of `tree` in partition 1 of a GPT disk, as qcow2 at `out`. */
function gptQcow2(tree: string, out: string): void {
  const bytes = Number(sh('du', ['-sb', tree]).split(/\s/)[0]);
  const mib = Math.ceil((bytes * 1.4 + (96 << 20)) / (1 << 20));
  const fs = `${out}.ext4.tmp`;
  const raw = `${out}.raw.tmp`;
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', 'debroot', '-d', tree, fs, `${mib}M`]);
  sh('truncate', ['-s', `${mib + 2}M`, raw]);
  sh('sgdisk', ['-o', '-n', '1:2048:0', '-t', '1:8300', '-c', '1:root', raw]);
  sh('dd', [`if=${fs}`, `of=${raw}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  sh('qemu-img', ['convert', '-O', 'qcow2', raw, `${out}.tmp`]);
  renameSync(`${out}.tmp`, out);
  rmSync(fs);
  rmSync(raw);
}

function setup(): { a: string; b: string } {
  mkdirSync(BENCH, { recursive: true });
  const a = process.env.STRATA_BENCH_INSPECT_A ?? path.join(BENCH, 'inspect-debian-a.qcow2');
  const b = process.env.STRATA_BENCH_INSPECT_B ?? path.join(BENCH, 'inspect-debian-b.qcow2');
  if (!existsSync(a) || !existsSync(b)) {
    for (const [c, p] of [
      ['mkfs.ext4', 'e2fsprogs'],
      ['sgdisk', 'gdisk'],
      ['qemu-img', 'qemu-utils'],
    ])
      need(c, p);
    const tree = realpathSync(rootfs()); // .cache/bench/rootfs may be a symlink to a shared tree
    if (!existsSync(a)) {
      log(`building ${a}`);
      gptQcow2(tree, a);
    }
    if (!existsSync(b)) {
      log(`building ${b}`);
      const t = path.join(BENCH, 'inspect-derived.tmp');
      rmSync(t, { recursive: true, force: true });
      mkdirSync(t);
      sh('cp', ['-a', `${tree}/.`, t]); // a copy: the source tree is never written
      writeFileSync(path.join(t, 'etc/added.conf'), 'added=1\n');
      rmSync(path.join(t, 'etc/issue'), { force: true });
      writeFileSync(path.join(t, 'etc/motd'), 'changed\n');
      sh('chmod', ['600', path.join(t, 'etc/debian_version')]);
      const status = path.join(t, 'var/lib/dpkg/status');
      writeFileSync(
        status,
        readFileSync(status, 'utf8').replace(/(Package: bash\n(?:.+\n)*?)Version: .*/, '$1Version: 9.9-1'),
      );
      gptQcow2(t, b);
      rmSync(t, { recursive: true, force: true });
    }
  }
  return { a, b };
}

/**
 * Run a tool; wall and CPU ms (its and its children's user + system). With `timeoutMs` it
 * runs in its own process group, killed whole (libguestfs's appliance too) when time is up.
 */
function timed(cmd: string, argv: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs?: number) {
  return new Promise<{ ms: number; cpuMs: number; out: string; err: string; code: number | null; timedOut: boolean }>(
    (resolve, reject) => {
      const cpu0 = childCpuMs();
      const t0 = process.hrtime.bigint();
      const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env, detached: timeoutMs !== undefined });
      const out: Buffer[] = [];
      let err = '';
      let timedOut = false;
      const kill = (sig: NodeJS.Signals) => {
        try {
          if (c.pid) process.kill(-c.pid, sig);
        } catch {
          // already gone
        }
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              timedOut = true;
              kill('SIGTERM');
              setTimeout(() => kill('SIGKILL'), 10_000).unref();
            }, timeoutMs);
      c.stdout.on('data', (x: Buffer) => out.push(x));
      c.stderr.on('data', (x: Buffer) => {
        if (err.length < 20000) err += x;
      });
      c.on('error', reject);
      c.on('close', (code) => {
        if (timer) clearTimeout(timer);
        resolve({
          ms: Number(process.hrtime.bigint() - t0) / 1e6,
          cpuMs: childCpuMs() - cpu0,
          out: Buffer.concat(out).toString('utf8'),
          err,
          code,
          timedOut,
        });
      });
    },
  );
}

/** The run with the best wall time of `n` (and the least CPU time of any run, `minCpuMs`). */
async function best(n: number, cmd: string, argv: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number) {
  let b: Awaited<ReturnType<typeof timed>> | undefined;
  let minCpuMs = Number.POSITIVE_INFINITY;
  for (let i = 0; i < Math.max(1, n); i++) {
    const r = await timed(cmd, argv, env, timeoutMs);
    if (r.code !== 0) return { ...r, minCpuMs: r.cpuMs };
    minCpuMs = Math.min(minCpuMs, r.cpuMs);
    if (!b || r.ms < b.ms) b = r;
  }
  return { ...(b as Awaited<ReturnType<typeof timed>>), minCpuMs };
}

const tag = (xml: string, name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1];
const unxml = (s: string | undefined) =>
  s
    ?.replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');

/** virt-inspector's XML against our JSON for the first OS, field by field. */
function compareInspect(xml: string, ours: Array<Record<string, unknown>>): Record<string, unknown> {
  const os = /<operatingsystem>([\s\S]*?)<\/operatingsystem>/.exec(xml)?.[1] ?? '';
  const o = ours[0] ?? {};
  const fields: Array<[string, string | undefined, unknown]> = [
    ['osType', tag(os, 'name'), o.osType],
    ['distro', tag(os, 'distro'), o.distro],
    ['productName', unxml(tag(os, 'product_name')), o.productName],
    ['versionMajor', tag(os, 'major_version'), o.versionMajor],
    ['versionMinor', tag(os, 'minor_version'), o.versionMinor],
    ['arch', tag(os, 'arch'), o.arch],
    ['hostname', tag(os, 'hostname'), o.hostname],
    ['packageFormat', tag(os, 'package_format'), o.packageFormat],
    ['packageManager', tag(os, 'package_management'), o.packageManager],
  ];
  const out: Record<string, unknown> = {};
  for (const [k, theirs, mine] of fields)
    out[k] = {
      virtInspector: theirs ?? null,
      strata: mine ?? null,
      same: String(theirs ?? null) === String(mine ?? null),
    };
  const apps = [...os.matchAll(/<application>([\s\S]*?)<\/application>/g)].map((m) =>
    [
      tag(m[1], 'name'),
      tag(m[1], 'epoch') ?? '0',
      tag(m[1], 'version') ?? '',
      tag(m[1], 'release') ?? '',
      tag(m[1], 'arch') ?? '',
    ].join('|'),
  );
  const mine = ((o.packages as Array<Record<string, unknown>>) ?? []).map((p) =>
    [p.name, p.epoch, p.version, p.release, p.arch].join('|'),
  );
  const theirs = new Set(apps);
  const ourSet = new Set(mine);
  out.packages = {
    virtInspector: apps.length,
    strata: mine.length,
    onlyVirtInspector: apps.filter((x) => !ourSet.has(x)).slice(0, 10),
    onlyStrata: mine.filter((x) => !theirs.has(x)).slice(0, 10),
  };
  const mounts = [...os.matchAll(/<mountpoint dev="([^"]*)">([^<]*)<\/mountpoint>/g)].map((m) => `${m[2]}=${m[1]}`);
  out.mountpoints = { virtInspector: mounts, strata: Object.keys((o.mountpoints as object) ?? {}) };
  return out;
}

async function main(): Promise<void> {
  const env = benchChildEnv();
  console.log(JSON.stringify(env));
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: npm run build first`);
  const node = process.execPath;
  const genv = { ...process.env, LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct' };
  if (CASES.has('windows')) await windowsCase(node, genv);
  if (!CASES.has('inspect') && !CASES.has('diff')) {
    if (CASES.has('libdiff')) await libdiffCase(node, genv);
    return;
  }
  const { a, b } = setup();
  log(`A ${a} (${statSync(a).size} bytes), B ${b} (${statSync(b).size} bytes)`);

  if (CASES.has('inspect')) await inspectCase(a, node, genv);
  if (CASES.has('diff')) await diffCase(a, b, node, genv);
  if (CASES.has('libdiff')) await libdiffCase(node, genv);
}

async function inspectCase(a: string, node: string, genv: NodeJS.ProcessEnv): Promise<void> {
  const si = await best(RUNS, node, [CLI, 'inspect', a, '--json']);
  if (si.code !== 0) throw new Error(`strata inspect failed: ${si.err}`);
  // --json of a listing is JSON Lines: one object per OS root
  const ours = si.out
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const kvm = existsSync('/dev/kvm');
  const vi = await best(PEER_RUNS, 'virt-inspector', ['-a', a], genv);
  if (vi.code === 0) {
    line({
      case: 'inspect',
      strataMs: round(si.ms),
      peer: 'virt-inspector',
      peerMs: round(vi.ms),
      ratio: Math.round((si.ms / vi.ms) * 10000) / 10000,
      speedup: round(vi.ms / si.ms),
      kvm,
      packages: (ours[0]?.packages as unknown[])?.length,
      compare: compareInspect(vi.out, ours),
    });
  } else {
    line({ case: 'inspect', strataMs: round(si.ms), peer: 'virt-inspector', peerFailed: vi.err.slice(-2000), kvm });
  }
}

/** `strata inspect` vs `virt-inspector` on the Windows test disk, with the findings side by side. */
async function windowsCase(node: string, genv: NodeJS.ProcessEnv): Promise<void> {
  need('mkntfs', 'ntfs-3g');
  need('hivexregedit', 'libwin-hivex-perl');
  need('sfdisk', 'fdisk');
  const { letterDisks } = await import('../test/helpers/windows-images.js');
  const disk = (await letterDisks()).mbr;
  log(`windows: ${disk}`);
  const si = await best(RUNS, node, [CLI, 'inspect', disk, '--json']);
  if (si.code !== 0) throw new Error(`strata inspect failed: ${si.err}`);
  const o = JSON.parse(si.out.split('\n').filter(Boolean)[0]) as {
    osType?: string;
    productName?: string;
    versionMajor?: number;
    versionMinor?: number;
    hostname?: string;
    mountpoints?: Record<string, { volume?: string }>;
    windows?: { programs: Array<{ name: string; version?: string; publisher?: string }> };
  };
  const kvm = existsSync('/dev/kvm');
  const vi = await best(PEER_RUNS, 'virt-inspector', ['-a', disk], genv);
  if (vi.code !== 0) {
    line({ case: 'windows', strataMs: round(si.ms), peer: 'virt-inspector', peerFailed: vi.err.slice(-2000), kvm });
    return;
  }
  const os = /<operatingsystem>([\s\S]*?)<\/operatingsystem>/.exec(vi.out)?.[1] ?? '';
  const same = (theirs: unknown, mine: unknown) => ({
    virtInspector: theirs ?? null,
    strata: mine ?? null,
    same: String(theirs ?? null) === String(mine ?? null),
  });
  const letters = (m: Record<string, { volume?: string }>) =>
    Object.entries(m)
      .filter(([, v]) => v.volume)
      .map(([k, v]) => `${k[0]}=${v.volume}`)
      .sort();
  const theirLetters = [...os.matchAll(/<drive_mapping name="([A-Z])">\/dev\/sd[a-z](\d+)<\/drive_mapping>/g)]
    .map((m) => `${m[1]}=${m[2]}`)
    .sort();
  const apps = [...os.matchAll(/<application>([\s\S]*?)<\/application>/g)]
    .map((m) =>
      [unxml(tag(m[1], 'display_name')), tag(m[1], 'version') ?? '', unxml(tag(m[1], 'publisher')) ?? ''].join('|'),
    )
    .sort();
  const mine = (o.windows?.programs ?? []).map((p) => [p.name, p.version ?? '', p.publisher ?? ''].join('|')).sort();
  line({
    case: 'windows',
    strataMs: round(si.ms),
    peer: 'virt-inspector',
    peerMs: round(vi.ms),
    ratio: Math.round((si.ms / vi.ms) * 10000) / 10000,
    speedup: round(vi.ms / si.ms),
    kvm,
    tcg: /force_tcg/.test(genv.LIBGUESTFS_BACKEND_SETTINGS ?? '') || !kvm,
    compare: {
      osType: same(tag(os, 'name'), o.osType),
      productName: same(unxml(tag(os, 'product_name')), o.productName),
      versionMajor: same(tag(os, 'major_version'), o.versionMajor),
      versionMinor: same(tag(os, 'minor_version'), o.versionMinor),
      hostname: same(tag(os, 'hostname'), o.hostname),
      driveLetters: same(theirLetters.join(' '), letters(o.mountpoints ?? {}).join(' ')),
      programs: {
        virtInspector: apps.length,
        strata: mine.length,
        same: apps.join('\n') === mine.join('\n'),
        onlyVirtInspector: apps.filter((x) => !mine.includes(x)).slice(0, 5),
        onlyStrata: mine.filter((x) => !apps.includes(x)).slice(0, 5),
      },
    },
  });
}

async function diffCase(a: string, b: string, node: string, genv: NodeJS.ProcessEnv): Promise<void> {
  const kvm = existsSync('/dev/kvm');
  const sd = await best(RUNS, node, [CLI, 'diff', a, b, '--packages', '--json']);
  // like diff(1): 0 same, 1 different; 2 is trouble
  if (sd.code !== 0 && sd.code !== 1) throw new Error(`strata diff failed: ${sd.err}`);
  const d = JSON.parse(sd.out);
  const vd = await best(PEER_RUNS, 'virt-diff', ['-a', a, '-A', b], genv);
  const summary = {
    strata: { ...d.files.summary, packages: { upgraded: d.packages?.upgraded?.length } },
    virtDiff: vd.code === 0 ? { lines: vd.out.split('\n').filter((l) => /^[-+=]/.test(l)).length } : undefined,
  };
  if (vd.code === 0) {
    line({
      case: 'diff',
      strataMs: round(sd.ms),
      peer: 'virt-diff',
      peerMs: round(vd.ms),
      ratio: Math.round((sd.ms / vd.ms) * 10000) / 10000,
      speedup: round(vd.ms / sd.ms),
      kvm,
      summary,
    });
  } else {
    line({ case: 'diff', strataMs: round(sd.ms), peer: 'virt-diff', peerFailed: vd.err.slice(-2000), kvm, summary });
  }
}

interface LibDiffJson {
  files: { summary: Record<string, number> };
  packages?: Record<string, unknown[]> | null;
  blocks?: Record<string, number>;
}

/**
 * `strata diff` of two library versions straight from their manifests (no checkout; Node's
 * start-up included) against virt-diff of the same two images; one line per flag set.
 */
async function libdiffCase(node: string, genv: NodeJS.ProcessEnv): Promise<void> {
  const base = benchBaseImage(BENCH, log);
  const derived = benchDerivedImage(BENCH, log);
  const out = opt('--out') ?? '/dev/shm/strata-bench-libdiff';
  const lib = path.join(out, 'library');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  for (const [img, name] of [
    [base, 'base'],
    [derived, 'derived'],
  ]) {
    const r = await timed(node, [CLI, 'checkin', img, '--name', name, '--library', lib, '--json']);
    if (r.code !== 0) throw new Error(`strata checkin ${img} failed: ${r.err}`);
    log(`checked in ${name} (${statSync(img).size} bytes) in ${round(r.ms)} ms`);
  }
  const bare = await best(RUNS, node, ['-e', '0']);
  const load1 = round(loadavg()[0]);
  const ours: Array<{ flags: string[]; r: Awaited<ReturnType<typeof best>>; d: LibDiffJson }> = [];
  for (const flags of [[], ['--packages'], ['--blocks']]) {
    const r = await best(RUNS, node, [CLI, 'diff', '--library', lib, 'base@1', 'derived@1', '--json', ...flags]);
    if (r.code !== 0 && r.code !== 1) throw new Error(`strata diff ${flags.join(' ')} failed: ${r.err}`);
    ours.push({ flags, r, d: JSON.parse(r.out) as LibDiffJson });
  }
  const kvm = existsSync('/dev/kvm');
  const timeout = opt('--peer-timeout'); // seconds
  const vd =
    PEER_RUNS > 0
      ? await best(
          PEER_RUNS,
          'virt-diff',
          ['-a', base, '-A', derived],
          genv,
          timeout === undefined ? undefined : Number(timeout) * 1000,
        )
      : undefined;
  // virt-diff prints paths in sorted order: how far it got when stopped (share of B's paths)
  const progress = (out: string) => {
    const last = out
      .split('\n')
      .filter((l) => /^[-+=] /.test(l))
      .pop()
      ?.split(' ')
      .pop();
    if (!last) return { peerLastPath: null, peerProgress: 0 };
    const tree = realpathSync(benchDerivedRootfs(BENCH, log));
    const paths = readdirSync(tree, { recursive: true }).map((p) => `/${p}`);
    return { peerLastPath: last, peerProgress: round((paths.filter((p) => p <= last).length / paths.length) * 100) };
  };
  for (const { flags, r, d } of ours) {
    const summary = {
      strata: {
        ...d.files.summary,
        packages: d.packages
          ? Object.fromEntries(Object.entries(d.packages).map(([k, v]) => [k, v.length]))
          : undefined,
        blocks: d.blocks,
      },
      virtDiff: vd?.code === 0 ? { lines: vd.out.split('\n').filter((l) => /^[-+=]/.test(l)).length } : undefined,
    };
    const peer =
      vd === undefined
        ? { peerSkipped: '--peer-runs 0' }
        : vd.timedOut
          ? { peerTimedOutMs: round(vd.ms), ...progress(vd.out) } // its appliance's CPU is lost with it
          : vd.code === 0
            ? {
                peerMs: round(vd.ms),
                peerCpuMs: round(vd.cpuMs),
                ratio: Math.round((r.ms / vd.ms) * 10000) / 10000,
                speedup: round(vd.ms / r.ms),
              }
            : { peerFailed: vd.err.slice(-2000) };
    line({
      case: 'libdiff',
      flags: flags.join(' '),
      bytes: [statSync(base).size, statSync(derived).size],
      strataMs: round(r.ms),
      strataCpuMs: round(r.cpuMs),
      strataMinCpuMs: round(r.minCpuMs),
      nodeStartMs: round(bare.ms),
      peer: 'virt-diff',
      ...peer,
      kvm,
      load1,
      summary,
    });
  }
  rmSync(out, { recursive: true, force: true });
}

main().catch((e) => {
  process.stderr.write(`bench:inspect: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
