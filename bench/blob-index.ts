/**
 * bench:blob-index (issue 22) — the store's in-memory index (BlobMap) at N blobs, this
 * build's beside another build's (--baseline DIR: a Strata checkout whose dist/ is built,
 * e.g. /work/main), each in its own process: N inserts of random digests (as a load of the
 * index files or a check-in adds them), then N lookups of present digests in random order,
 * N in insertion order (a check-in of a version like the last), N of absent ones (check-in's
 * "is this chunk new?"), and one iteration; lookups a second, the ArrayBuffer bytes the
 * index holds after a full GC and the process's peak RSS. JSON on stdout, with the ratios.
 *
 *     node dist/bench/blob-index.js [--blobs 1000000] [--baseline /work/main]
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { loadavg } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { opt } from './common.js';

interface MapLike {
  set(d: string, e: unknown): unknown;
  get(d: string): unknown;
  has(d: string): boolean;
  keys(): Iterable<string>;
}

async function child(module: string, n: number): Promise<Record<string, number>> {
  const { BlobMap } = (await import(pathToFileURL(module).href)) as { BlobMap: new () => MapLike };
  const gc = (globalThis as { gc?: () => void }).gc as () => void;
  const digests: string[] = new Array(n);
  for (let i = 0; i < n; i++) digests[i] = createHash('sha256').update(`blob ${i}`).digest('hex');
  const pack = (i: number) => createHash('sha256').update(`pack ${i}`).digest('hex');
  const packs = Array.from({ length: Math.max(1, Math.ceil(n / 2000)) }, (_, i) => pack(i));
  gc();
  const before = process.memoryUsage().arrayBuffers;
  const m = new BlobMap();
  let t = performance.now();
  for (let i = 0; i < n; i++) {
    m.set(digests[i], {
      pack: packs[Math.floor(i / 2000)],
      type: 'data',
      flags: 1,
      offset: (i % 2000) * 70_000,
      encLength: 30_000,
      framePlain: 8_000_000,
      at: (i % 100) * 80_000,
      plainLength: 4_000,
    });
  }
  const insertS = (performance.now() - t) / 1000;
  // external memory (the grown tables, scan buffers) is freed by a second full GC after a turn
  await new Promise((r) => setTimeout(r, 100));
  gc();
  gc();
  const held = process.memoryUsage().arrayBuffers - before;
  const order = Array.from({ length: n }, (_, i) => i);
  let x = 12345;
  for (let i = n - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const j = x % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  let found = 0;
  t = performance.now();
  for (const i of order) if (m.get(digests[i])) found++;
  const randomS = (performance.now() - t) / 1000;
  t = performance.now();
  for (let i = 0; i < n; i++) if (m.get(digests[i])) found++;
  const orderedS = (performance.now() - t) / 1000;
  const absent = Array.from({ length: n }, (_, i) => createHash('sha256').update(`absent ${i}`).digest('hex'));
  t = performance.now();
  for (const d of absent) if (m.has(d)) found = -1e9;
  const absentS = (performance.now() - t) / 1000;
  t = performance.now();
  let iterated = 0;
  for (const _ of m.keys()) iterated++;
  const iterateS = (performance.now() - t) / 1000;
  if (found !== 2 * n || iterated !== n) throw new Error(`lookups wrong: found ${found}, iterated ${iterated}`);
  return {
    blobs: n,
    insertPerS: Math.round(n / insertS),
    randomGetPerS: Math.round(n / randomS),
    orderedGetPerS: Math.round(n / orderedS),
    absentHasPerS: Math.round(n / absentS),
    iterateS: Number(iterateS.toFixed(2)),
    indexBytesPerBlob: Number((held / n).toFixed(1)),
    maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  };
}

const here = fileURLToPath(import.meta.url);
const ownModule = path.join(path.dirname(here), '..', 'src', 'store', 'blob-map.js');
const blobs = Number(opt('--blobs') ?? '1000000');
const childModule = opt('--child') ?? '';
if (childModule) {
  console.log(JSON.stringify(await child(childModule, blobs)));
} else {
  const run = (module: string) =>
    JSON.parse(
      execFileSync(process.execPath, ['--expose-gc', here, '--child', module, '--blobs', String(blobs)], {
        encoding: 'utf8',
        maxBuffer: 1 << 24,
      }),
    ) as Record<string, number>;
  const baselineDir = opt('--baseline') ?? '';
  const baselineModule = baselineDir ? path.join(baselineDir, 'dist', 'src', 'store', 'blob-map.js') : '';
  const out: Record<string, unknown> = { blobs, load: loadavg()[0] };
  // alternated (ours, baseline, ours, baseline): the machine's load moves under both
  const ours = [run(ownModule)];
  const base = baselineModule ? [run(baselineModule)] : [];
  ours.push(run(ownModule));
  if (baselineModule) base.push(run(baselineModule));
  out.strata = ours;
  if (baselineModule) {
    out.baseline = base;
    const ratio: Record<string, number> = {};
    for (const k of Object.keys(ours[0])) {
      const a = (ours[0][k] + ours[1][k]) / 2;
      const b = (base[0][k] + base[1][k]) / 2;
      if (b) ratio[k] = Number((a / b).toFixed(3));
    }
    out.ratio = ratio;
  }
  out.loadAfter = loadavg()[0];
  console.log(JSON.stringify(out, null, 2));
}
