/**
 * The LIVE comparison of issue 27 (`node dist/bench/introspect.js --live`): a guest booting
 * over NBD from Strata's server whose source is slow, with a cold 64 MiB cache, under each
 * policy: plain block LRU, LRU + 128 KiB sequential read-ahead, introspective with each
 * prefetcher alone, none, and all.
 *
 * The slow source: the guest disk (a local raw file) behind an added per-request latency
 * and a bandwidth: each source read takes BENCH_LATENCY_MS (default 2 ms) + its bytes at
 * BENCH_MBIT (default 1000 Mbit/s); reads overlap (a link with that round trip, not a
 * shared pipe). Not a tbf-shaped veth: the server runs in this process (the library's
 * export over plain HTTP is deploy's side) and the latency is what seed 000's regime is.
 *
 * The guest (the deploy boot test's recipe, test/deploy/boot.test.ts): the host's kernel, an
 * initramfs of ours (busybox-static, virtio + ext4 modules) that mounts /dev/vda1 read-only
 * and switch_roots; the root is a GPT disk (sgdisk) whose ext4 (mkfs.ext4 -d) holds busybox,
 * an init script, the host's /etc and /usr/share/doc (or its first BENCH_DOC_MB MB of
 * files), and the first BENCH_LIB_MB (default 260) MB of regular files under the host's
 * /usr/lib. Not the Debian image of bench/deploy:
 * its systemd boot under TCG takes minutes per run, times nine runs. The root's init, after
 * printing STRATA-BOOTED, runs `find / -xdev | wc -l`, `grep -r -l -s strata /etc
 * /usr/share/doc | wc -l` and reads BENCH_READ_MB (default 200) MB of files under /usr/lib
 * (`find | xargs cat | head -c`), each timed on the host by its console line's arrival.
 * TCG here (chooseAccel: /dev/kvm is kvm_pvm). The peer, in the same run: qemu-nbd serving
 * the same disk through qemu's curl driver from an HTTP server with the same per-request
 * latency and bandwidth (`qemu-nbd` in BENCH_CONFIGS).
 *
 * Prints one JSON line per policy: seconds to the boot marker and per workload, source
 * reads and MiB, hit rates by class; then a summary with the ratios against LRU and
 * read-ahead.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import type { BlockMap } from '../src/blockmap/block-map.js';
import { blockMapOfImage } from '../src/blockmap/of-image.js';
import type { ByteSource } from '../src/io/byte-source.js';
import { FileSource } from '../src/io/file-source.js';
import { FilterSource, type Unwrapped } from '../src/io/filter-source.js';
import type { LiveCachePolicy } from '../src/io/introspective-cache.js';
import { openExportCache } from '../src/serve/nbd/cache.js';
import { sourceExport } from '../src/serve/nbd/export.js';
import { NbdServer } from '../src/serve/nbd/server.js';
import {
  bootQemu,
  chooseAccel,
  hostKernel,
  makeInitramfs,
  rootInit,
  staticBusybox,
  VIRTIO_EXT4,
} from '../test/helpers/qemu.js';
import { benchChildEnv, need, ROOT, sh } from './common.js';

const BENCH = process.env.BENCH_DIR ?? path.join(ROOT, '.cache', 'bench');
const DIR = path.join(BENCH, 'introspect-live');
const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 2);
const MBIT = Number(process.env.BENCH_MBIT ?? 1000);
const LIB_MB = Number(process.env.BENCH_LIB_MB ?? 260);
const READ_MB = Number(process.env.BENCH_READ_MB ?? 200);
/** MB of the host's /usr/share/doc copied (0: all of it). */
const DOC_MB = Number(process.env.BENCH_DOC_MB ?? 0);
const CACHE_MIB = Number(process.env.BENCH_CACHE_MIB ?? 64);
const log = (m: string) => process.stderr.write(`# live: ${m}\n`);

const INIT = [
  '#!/bin/busybox sh',
  'B=/bin/busybox',
  '$B mount -t proc proc /proc',
  // each marker carries the guest's own clock (uptime) and its CPU counters (/proc/stat, USER_HZ)
  'M() { echo "STRATA-$1 $2 @ $($B cat /proc/uptime) $($B head -n 1 /proc/stat)"; }',
  'M BOOTED 0',
  'M FIND "$($B find / -xdev | $B wc -l)"',
  'M GREP "$($B grep -r -l -s strata /etc /usr/share/doc | $B wc -l)"',
  `M READ "$($B find /usr/lib -type f | $B xargs $B cat 2>/dev/null | $B head -c ${READ_MB * 1000000} | $B wc -c)"`,
  '$B poweroff -f',
  '',
].join('\n');

/** Each source read waits LATENCY_MS plus its bytes at MBIT; counts reads and bytes. */
class SlowSource extends FilterSource {
  readonly name: string;
  readonly size: number;
  reads = 0;
  bytes = 0;
  constructor(private readonly inner: ByteSource) {
    super();
    this.name = inner.name;
    this.size = inner.size;
  }
  unwrap(): Unwrapped {
    return { source: this.inner, offset: 0 };
  }
  override get fd(): number | undefined {
    return undefined; // no bulk copier may go around the link
  }
  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    this.reads++;
    this.bytes += n;
    await new Promise((r) => setTimeout(r, LATENCY_MS + (n * 8) / (MBIT * 1000)));
    return super.readRange(offset, n);
  }
  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    out.set(await this.readRange(offset, out.length));
  }
}

/** Records each request the server makes of the cache (offset, length), for replays (BENCH_TRACE_OUT). */
class Tap extends FilterSource {
  readonly name: string;
  readonly size: number;
  readonly reads: Array<[number, number, number]> = [];
  readonly markers: Array<[string, number]> = [];
  constructor(private readonly inner: ByteSource) {
    super();
    this.name = inner.name;
    this.size = inner.size;
  }
  unwrap(): Unwrapped {
    return { source: this.inner, offset: 0 };
  }
  override get fd(): number | undefined {
    return undefined;
  }
  protected override async readRange(offset: number, n: number): Promise<Uint8Array> {
    this.reads.push([offset, n, Date.now()]);
    return this.inner.read(offset, n);
  }
  protected override async readIntoRange(offset: number, out: Uint8Array): Promise<void> {
    this.reads.push([offset, out.length, Date.now()]);
    await this.inner.readInto!(offset, out);
  }
}

/** The guest root disk: GPT, ext4 made by mkfs.ext4 -d from the tree (see above). */
function guestDisk(): string {
  const out = path.join(DIR, `root-lib${LIB_MB}-doc${DOC_MB}-read${READ_MB}-v2.raw`);
  if (existsSync(out)) return out;
  const tree = `${out}.tree`;
  rmSync(tree, { recursive: true, force: true });
  for (const d of ['bin', 'sbin', 'proc', 'dev', 'usr/share', 'usr/lib'])
    mkdirSync(path.join(tree, d), { recursive: true });
  sh('cp', [staticBusybox(), path.join(tree, 'bin', 'busybox')]);
  writeFileSync(path.join(tree, 'sbin', 'init'), INIT, { mode: 0o755 });
  spawnSync('cp', ['-a', '/etc', path.join(tree, 'etc')]); // some entries may not copy: fine
  // the first LIB_MB MB of regular files under /usr/lib (DOC_MB of /usr/share/doc), in readdir order, paths kept
  let left = 0;
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (left <= 0) return;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const s = statSync(p).size;
        if (s === 0 || s > left) continue;
        const dst = path.join(tree, p);
        mkdirSync(path.dirname(dst), { recursive: true });
        if (spawnSync('cp', ['-p', p, dst]).status === 0) left -= s;
      }
    }
  };
  left = LIB_MB * 1e6;
  walk('/usr/lib');
  if (DOC_MB > 0) {
    left = DOC_MB * 1e6;
    walk('/usr/share/doc');
  } else spawnSync('cp', ['-a', '/usr/share/doc', path.join(tree, 'usr/share/doc')]);
  const used = Number(sh('du', ['-sb', tree]).split('\t')[0]);
  const bytes = Math.ceil((used * 1.5 + (64 << 20)) / (1 << 20)) << 20;
  sh('truncate', ['-s', String(bytes), `${out}.tmp`]);
  sh('sgdisk', ['-o', '-n', '1:2048:0', '-t', '1:8300', `${out}.tmp`]);
  const last = Number(/Last sector: (\d+)/.exec(sh('sgdisk', ['-i', '1', `${out}.tmp`]))?.[1]);
  const kib = Math.floor(((last - 2048 + 1) * 512) / 4096) * 4;
  sh('mkfs.ext4', ['-q', '-F', '-E', `offset=${2048 * 512},root_owner=0:0`, '-d', tree, `${out}.tmp`, `${kib}k`]);
  sh('mv', [`${out}.tmp`, out]);
  rmSync(tree, { recursive: true, force: true });
  return out;
}

/** Per phase (boot: guest start to STRATA-BOOTED; find, grep, read: from the marker before). */
interface Phase {
  /** Host seconds between the markers' console lines (boot: from starting qemu). */
  hostS?: number;
  /** The guest's own clock (/proc/uptime) between its markers. */
  guestS?: number;
  /** Guest CPU seconds busy (user+nice+system+irq+softirq+steal), waiting on I/O (iowait), idle: /proc/stat. */
  busyS?: number;
  iowaitS?: number;
  idleS?: number;
  /** Source reads (round trips on the link) and those made by requests that waited for them. */
  sourceReads: number;
  demandReads?: number;
  /** Requests that waited for the link, that number x the link's latency, and the milliseconds measured. */
  waitedRequests?: number;
  waitedXLatencyS?: number;
  waitedMeasuredS?: number;
}

interface LiveRun {
  policy: string;
  boot?: number;
  find?: number;
  grep?: number;
  read?: number;
  total?: number;
  /** The same phases by the guest's clock. */
  guest: Record<string, number | undefined>;
  phases: Record<string, Phase>;
  counts: Record<string, string>;
  sourceReads: number;
  sourceMiB: number;
  hitRate: Record<string, number>;
  prefetchMiB: Record<string, number>;
  timedOut: boolean;
  /** The peer: source reads qemu-nbd made before the guest started (probing the image). */
  startReads?: number;
  /** The host's 1-minute load average when the run started and ended. */
  load?: [number, number];
}

/** What the host counts at each marker (source reads; the cache's waits when there is one). */
interface HostCounts {
  reads: number;
  demandReads?: number;
  waitedRequests?: number;
  waitedMs?: number;
}

interface GuestTimes {
  times: Record<string, number>;
  /** By marker: the guest's uptime and its /proc/stat cpu line (USER_HZ ticks). */
  guest: Record<string, { uptime: number; cpu: number[] }>;
  host: Record<string, HostCounts>;
  counts: Record<string, string>;
  code: number | null;
  timedOut: boolean;
}

const MARKERS = ['BOOTED', 'FIND', 'GREP', 'READ'] as const;
const PHASES = ['boot', 'find', 'grep', 'read'] as const;

/** Boot the guest from `uri` and time its markers on the host and by its own clock (the same for every server). */
async function bootGuest(
  uri: string,
  kernel: string,
  initrd: string,
  label: string,
  count: () => HostCounts,
  markers?: Array<[string, number]>,
): Promise<GuestTimes> {
  const times: Record<string, number> = {};
  const guest: GuestTimes['guest'] = {};
  const host: GuestTimes['host'] = { START: count() };
  const counts: Record<string, string> = {};
  const accel = chooseAccel();
  const t0 = Date.now();
  const r = await bootQemu(
    [
      '-m',
      '512',
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      'console=ttyS0 rdinit=/init quiet panic=-1 no_timer_check',
      '-drive',
      `file=${uri},format=raw,if=virtio,cache=none,readonly=on`,
    ],
    {
      accel,
      timeoutMs: 3600_000,
      onLine: (line) => {
        const m = /STRATA-(BOOTED|FIND|GREP|READ) (\S+) @ ([\d.]+) [\d.]+ cpu\s+([\d ]+)/.exec(line);
        if (!m) return;
        times[m[1]] = (Date.now() - t0) / 1000;
        host[m[1]] = count();
        guest[m[1]] = { uptime: Number(m[3]), cpu: m[4].trim().split(/\s+/).map(Number) };
        markers?.push([m[1], Date.now()]);
        if (m[1] !== 'BOOTED') counts[m[1].toLowerCase()] = m[2];
        log(`${label}: ${m[1]} ${m[2]} at ${times[m[1]].toFixed(1)} s (guest ${m[3]} s)`);
      },
    },
  );
  if (times.READ === undefined)
    log(`${label}: no end marker (qemu ${r.code}, ${r.seconds.toFixed(1)} s): ${r.console.slice(-1500)}`);
  return { times, guest, host, counts, code: r.code, timedOut: r.timedOut };
}

const r2 = (x: number) => +x.toFixed(2);

function phases(g: GuestTimes): Pick<LiveRun, 'boot' | 'find' | 'grep' | 'read' | 'total' | 'guest' | 'phases'> {
  const { times } = g;
  const d = (a: string, b: string) =>
    times[a] !== undefined && times[b] !== undefined ? r2(times[a] - times[b]) : undefined;
  const out: Record<string, Phase> = {};
  const guestTimes: Record<string, number | undefined> = {};
  for (let i = 0; i < MARKERS.length; i++) {
    const to = MARKERS[i];
    const from = i === 0 ? 'START' : MARKERS[i - 1];
    const h1 = g.host[to];
    const h0 = g.host[from];
    if (!h1 || !h0) continue;
    const p: Phase = { sourceReads: h1.reads - h0.reads };
    p.hostS = i === 0 ? times[to] : d(to, from);
    const g1 = g.guest[to];
    const g0 = i === 0 ? { uptime: 0, cpu: g1.cpu.map(() => 0) } : g.guest[from];
    if (g1 && g0) {
      // /proc/stat cpu: user nice system idle iowait irq softirq steal ...
      const t = (k: number) => ((g1.cpu[k] ?? 0) - (g0.cpu[k] ?? 0)) / 100;
      p.guestS = r2(g1.uptime - g0.uptime);
      p.busyS = r2(t(0) + t(1) + t(2) + t(5) + t(6) + t(7));
      p.idleS = r2(t(3));
      p.iowaitS = r2(t(4));
      guestTimes[PHASES[i]] = p.guestS;
    }
    if (h1.waitedRequests !== undefined && h0.waitedRequests !== undefined) {
      p.demandReads = h1.demandReads! - h0.demandReads!;
      p.waitedRequests = h1.waitedRequests - h0.waitedRequests;
      p.waitedXLatencyS = r2((p.waitedRequests * LATENCY_MS) / 1000);
      p.waitedMeasuredS = r2((h1.waitedMs! - h0.waitedMs!) / 1000);
    }
    out[PHASES[i]] = p;
  }
  if (g.guest.READ) guestTimes.total = r2(g.guest.READ.uptime);
  return {
    boot: times.BOOTED !== undefined ? r2(times.BOOTED) : undefined,
    find: d('FIND', 'BOOTED'),
    grep: d('GREP', 'FIND'),
    read: d('READ', 'GREP'),
    total: times.READ !== undefined ? r2(times.READ) : undefined,
    guest: guestTimes,
    phases: out,
  };
}

async function liveRun(
  disk: string,
  map: BlockMap,
  kernel: string,
  initrd: string,
  policy: LiveCachePolicy,
  prefetch?: string[],
): Promise<LiveRun> {
  const file = await FileSource.open(disk);
  const slow = new SlowSource(file);
  const tuning = JSON.parse(process.env.BENCH_TUNING ?? '{}'); // cache options as JSON (maxRun, growth, coalesceGap ...)
  const cache = await openExportCache(slow, { policy, prefetch, map, cacheSize: CACHE_MIB << 20, tuning });
  const tap = process.env.BENCH_TRACE_OUT ? new Tap(cache) : undefined;
  const server = new NbdServer({ exports: [sourceExport('live', tap ?? cache, { close: async () => {} })] });
  await server.listen({ host: '127.0.0.1', port: 0 });
  const label = policy === 'introspective' ? `introspective:${prefetch?.join('+') || 'none'}` : policy;
  const count = (): HostCounts => {
    const c = cache.snapshot();
    return {
      reads: slow.reads,
      demandReads: c.source.demandReads,
      waitedRequests: c.waited.requests,
      waitedMs: c.waited.ms,
    };
  };
  const g = await bootGuest(server.uri('live'), kernel, initrd, label, count, tap?.markers);
  await cache.stop();
  const s = cache.snapshot();
  await server.close();
  await file.close();
  if (tap)
    writeFileSync(
      `${process.env.BENCH_TRACE_OUT}.${label.replace(/[^a-z0-9+]/gi, '_')}.json`,
      JSON.stringify({ reads: tap.reads, markers: tap.markers }),
    );
  const hitRate: Record<string, number> = {};
  for (const [c, v] of Object.entries(s.byClass)) if (v.requests) hitRate[c] = v.hitRate;
  const prefetchMiB: Record<string, number> = {};
  for (const [p, v] of Object.entries(s.prefetchers)) prefetchMiB[p] = +(v.fetchedBytes / 2 ** 20).toFixed(1);
  return {
    policy: label,
    ...phases(g),
    counts: g.counts,
    sourceReads: slow.reads,
    sourceMiB: +(slow.bytes / 2 ** 20).toFixed(1),
    hitRate,
    prefetchMiB,
    timedOut: g.timedOut,
  };
}

/**
 * The peer: qemu-nbd serving the same disk through qemu's curl driver from an HTTP server
 * (here, in this process) whose every GET waits the same LATENCY_MS + bytes at MBIT as
 * SlowSource's reads: the same link. qemu's curl driver reads ahead 256 KiB (its default)
 * and keeps no block cache of that size; qemu-nbd runs with --cache=none over it.
 */
async function peerRun(disk: string, kernel: string, initrd: string): Promise<LiveRun> {
  const size = statSync(disk).size;
  const fd = openSync(disk, 'r');
  let reads = 0;
  let bytes = 0;
  const http = createServer((req, res) => {
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' });
      res.end();
      return;
    }
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (req.method !== 'GET' || !m) {
      res.writeHead(400);
      res.end();
      return;
    }
    const start = Number(m[1]);
    const end = Math.min(size - 1, m[2] ? Number(m[2]) : size - 1);
    const n = end - start + 1;
    reads++;
    bytes += n;
    const buf = Buffer.alloc(Math.max(0, n));
    readSync(fd, buf, 0, buf.length, start);
    setTimeout(
      () => {
        res.writeHead(206, {
          'content-length': buf.length,
          'content-range': `bytes ${start}-${end}/${size}`,
          'accept-ranges': 'bytes',
        });
        res.end(buf);
      },
      LATENCY_MS + (n * 8) / (MBIT * 1000),
    );
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const port = (http.address() as AddressInfo).port;
  const sock = path.join(DIR, `qemu-nbd-${process.pid}.sock`);
  rmSync(sock, { force: true });
  const spec = JSON.stringify({ driver: 'raw', file: { driver: 'http', url: `http://127.0.0.1:${port}/disk.raw` } });
  const q = spawn(
    'qemu-nbd',
    ['--read-only', '--persistent', '--cache=none', '-x', 'live', '-k', sock, `json:${spec}`],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let err = '';
  q.stderr?.on('data', (b) => (err += b));
  for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(sock)) throw new Error(`qemu-nbd did not start: ${err}`);
  const base = { reads, bytes };
  reads = 0;
  bytes = 0;
  try {
    const g = await bootGuest(`nbd+unix:///live?socket=${sock}`, kernel, initrd, 'qemu-nbd', () => ({ reads }));
    return {
      policy: 'qemu-nbd (curl)',
      ...phases(g),
      counts: g.counts,
      sourceReads: reads,
      sourceMiB: +(bytes / 2 ** 20).toFixed(1),
      hitRate: {},
      prefetchMiB: {},
      timedOut: g.timedOut,
      ...(base.reads ? { startReads: base.reads } : {}),
    };
  } finally {
    q.kill('SIGTERM');
    await new Promise((r) => q.once('exit', r));
    http.close();
    closeSync(fd);
    rmSync(sock, { force: true });
  }
}

export async function live(): Promise<void> {
  need('qemu-system-x86_64', 'qemu-system-x86');
  need('sgdisk', 'gdisk');
  need('cpio', 'cpio');
  mkdirSync(DIR, { recursive: true });
  const env = benchChildEnv();
  const disk = guestDisk();
  log(`guest disk ${disk}; block map`);
  const map = await blockMapOfImage(disk);
  const { kernel } = hostKernel();
  const initrd = path.join(DIR, `initrd-${process.pid}.cpio`);
  makeInitramfs(initrd, path.join(DIR, `work-${process.pid}`), rootInit('/dev/vda1'), VIRTIO_EXT4);
  const configs: Array<[LiveCachePolicy, string[] | undefined]> = [
    ['lru', undefined],
    ['readahead', undefined],
    ['introspective', ['meta', 'dir', 'file', 'siblings', 'disk']],
    ['introspective', ['meta', 'dir', 'file', 'siblings']],
    ['introspective', []],
    ['introspective', ['meta']],
    ['introspective', ['dir']],
    ['introspective', ['file']],
    ['introspective', ['siblings']],
    ['introspective', ['disk']],
  ];
  const only = process.env.BENCH_CONFIGS?.split(',');
  const runs: LiveRun[] = [];
  try {
    for (const [p, pf] of configs) {
      const label = p === 'introspective' ? `introspective:${pf?.join('+') || 'none'}` : p;
      if (only && !only.includes(label) && !only.includes(p)) continue;
      const load0 = loadavg()[0];
      const r = await liveRun(disk, map, kernel, initrd, p, pf);
      runs.push(r);
      r.load = [r2(load0), r2(loadavg()[0])];
      process.stdout.write(
        `${JSON.stringify({ live: true, cacheMiB: CACHE_MIB, latencyMs: LATENCY_MS, mbit: MBIT, accel: chooseAccel().accel, ...r, ...env })}\n`,
      );
    }
    if (!only || only.includes('qemu-nbd')) {
      need('qemu-nbd', 'qemu-utils');
      const load0 = loadavg()[0];
      const r = await peerRun(disk, kernel, initrd);
      runs.push(r);
      r.load = [r2(load0), r2(loadavg()[0])];
      process.stdout.write(
        `${JSON.stringify({ live: true, peer: true, cacheMiB: CACHE_MIB, latencyMs: LATENCY_MS, mbit: MBIT, accel: chooseAccel().accel, ...r, ...env })}\n`,
      );
    }
  } finally {
    rmSync(initrd, { force: true });
    rmSync(path.join(DIR, `work-${process.pid}`), { recursive: true, force: true });
  }
  const by = (l: string) => runs.find((r) => r.policy === l);
  const lru = by('lru');
  const ra = by('readahead');
  const all = by('introspective:meta+dir+file+siblings+disk');
  const peer = by('qemu-nbd (curl)');
  if (all) {
    const ratio = (base: LiveRun | undefined, k: 'boot' | 'find' | 'grep' | 'read' | 'total') =>
      base?.[k] && all[k] ? +(base[k]! / all[k]!).toFixed(2) : undefined;
    const ks = ['boot', 'find', 'grep', 'read', 'total'] as const;
    const byGuest = (base: LiveRun | undefined) =>
      Object.fromEntries(
        ks.map((k) => [k, base?.guest[k] && all.guest[k] ? r2(base.guest[k]! / all.guest[k]!) : undefined]),
      );
    // the time the guest waited on the link per phase (requests that waited x latency), per config
    const linkWait = Object.fromEntries(
      runs
        .filter((r) => r.phases.boot?.waitedXLatencyS !== undefined)
        .map((r) => [r.policy, Object.fromEntries(PHASES.map((k) => [k, r.phases[k]?.waitedXLatencyS]))]),
    );
    const cpuVsIo = Object.fromEntries(
      runs.map((r) => [
        r.policy,
        Object.fromEntries(
          PHASES.map((k) => [
            k,
            { busyS: r.phases[k]?.busyS, iowaitS: r.phases[k]?.iowaitS, idleS: r.phases[k]?.idleS },
          ]),
        ),
      ]),
    );
    process.stdout.write(
      `${JSON.stringify({
        summary: true,
        ours: 'introspective (all prefetchers)',
        lruOverIntrospective: Object.fromEntries(ks.map((k) => [k, ratio(lru, k)])),
        readaheadOverIntrospective: Object.fromEntries(ks.map((k) => [k, ratio(ra, k)])),
        guestClock: { lruOverIntrospective: byGuest(lru), readaheadOverIntrospective: byGuest(ra) },
        linkWaitS: linkWait,
        guestCpuVsIowait: cpuVsIo,
        peer: 'qemu-nbd over qemu curl, same link',
        qemuNbdOverIntrospective: Object.fromEntries(ks.map((k) => [k, ratio(peer, k)])),
        sourceReads: Object.fromEntries(runs.map((r) => [r.policy, r.sourceReads])),
      })}\n`,
    );
  }
}
