import { StrataError } from '../util/errors.js';
import { DAY_MS, DEFAULT_FACILITY, type FacilityRule, isFacility } from './reports.js';
import type { ImageRequest } from './request-log.js';

/**
 * Issue 25's cache and pre-load simulator: a host (or server) cache of a fixed size in
 * bytes replays a request log, and we count what it would have had to fetch.
 *
 * Objects: at `image` level an image version (its `bytes`); at `chunk` level the version in
 * pieces of `chunkBytes`, and when the log says a version derives from a base (`base`,
 * `changed`) each piece is the base's same piece unless it falls in the changed share (a
 * deterministic hash of the piece decides, so the same piece is shared on every request):
 * that is where a derived image gains from its base being cached.
 *
 * Policies, all byte-sized (an object larger than the cache is fetched and not kept):
 * - `lru`: least recently used goes first.
 * - `lfu`: least frequently requested goes first, counting every request of the object
 *   since the log began (kept while it is out of the cache too: "perfect" LFU), ties by
 *   recency.
 * - `arc`: Megiddo and Modha's adaptive replacement cache with sizes in bytes: a recency
 *   list T1 and a frequency list T2, ghost lists B1/B2 of what they evicted, and the target
 *   size of T1 moved by ghost hits (by the missed object's bytes, scaled as in the paper).
 * - `two-tier`: the seed's two populations kept apart. Facility images (steady, lightly
 *   skewed popularity) go to a protected tier (`protectedShare` of the bytes, default 0.5)
 *   ordered by request count (perfect LFU); user images (short-lived bursts) to a general
 *   LRU tier, which also takes what the protected tier pushes out (at its recent end). A
 *   burst of one-off user images cannot flush the facility images, and a facility image
 *   does not stay just because it was used last.
 *
 * Pre-load (`preload`): at the first request of each UTC day (the night before was idle)
 * the host fetches, up to `idleBytes`, the image versions it does not hold, chosen facility
 * images first, then the rest, each group by requests over the last `windowDays` days; at
 * most the cache's size is chosen. Bytes fetched while idle are counted apart from bytes
 * fetched on demand (the ones a user waits for).
 */
export type SimPolicy = 'lru' | 'lfu' | 'arc' | 'two-tier';
export const SIM_POLICIES: readonly SimPolicy[] = ['lru', 'lfu', 'arc', 'two-tier'];

export interface SimulateOptions {
  cacheBytes: number;
  policy: SimPolicy;
  level?: 'image' | 'chunk';
  /** chunk level: piece size (default 64 MiB). */
  chunkBytes?: number;
  facility?: FacilityRule;
  /** two-tier: share of the cache for facility images (default 0.5). */
  protectedShare?: number;
  preload?: { idleBytes: number; windowDays?: number };
}

export interface SimulateResult {
  policy: SimPolicy;
  level: 'image' | 'chunk';
  cacheBytes: number;
  requests: number;
  /** Requests whose every object was in the cache. */
  hits: number;
  hitRate: number;
  /** Objects looked up (= requests at image level). */
  lookups: number;
  objectHits: number;
  requestedBytes: number;
  /** Bytes fetched on demand (misses). */
  fetchedBytes: number;
  byteHitRate: number;
  facility: { requests: number; hits: number };
  user: { requests: number; hits: number };
  /** With preload: bytes fetched while idle, and objects pre-loaded. */
  preload?: { bytes: number; objects: number; idleBytes: number; windowDays: number };
}

/** A byte-bounded cache of objects. `request` says whether it was a hit and keeps the object when it fits. */
interface SimCache {
  request(id: string, size: number, facility: boolean): boolean;
  has(id: string): boolean;
  /** Admit without counting a request (pre-load; an object held already is refreshed where the policy has recency); false when it does not fit. */
  admit(id: string, size: number, facility: boolean): boolean;
}

/** Insertion-ordered map used as an LRU list: first key is the least recent. */
class LruList {
  readonly m = new Map<string, number>();
  bytes = 0;
  has(id: string): boolean {
    return this.m.has(id);
  }
  touch(id: string): void {
    const s = this.m.get(id) as number;
    this.m.delete(id);
    this.m.set(id, s);
  }
  add(id: string, size: number): void {
    this.remove(id);
    this.m.set(id, size);
    this.bytes += size;
  }
  remove(id: string): boolean {
    const s = this.m.get(id);
    if (s === undefined) return false;
    this.m.delete(id);
    this.bytes -= s;
    return true;
  }
  /** Remove and return the least recent entry. */
  pop(): [string, number] | undefined {
    const it = this.m.entries().next();
    if (it.done) return undefined;
    const [id, s] = it.value;
    this.m.delete(id);
    this.bytes -= s;
    return [id, s];
  }
  get size(): number {
    return this.m.size;
  }
}

class LruCache implements SimCache {
  private readonly l = new LruList();
  constructor(private readonly cap: number) {}
  has(id: string): boolean {
    return this.l.has(id);
  }
  request(id: string, size: number): boolean {
    if (this.l.has(id)) {
      this.l.touch(id);
      return true;
    }
    this.admit(id, size);
    return false;
  }
  admit(id: string, size: number): boolean {
    if (this.l.has(id)) {
      this.l.touch(id);
      return true;
    }
    if (size > this.cap) return false;
    while (this.l.bytes + size > this.cap) this.l.pop();
    this.l.add(id, size);
    return true;
  }
}

/**
 * Perfect LFU: request counts kept for every object ever requested; the cached object with
 * the fewest goes first, ties by recency. A min-heap of [count, tick, id] with lazy deletion
 * (stale entries are skipped on pop, and the heap is rebuilt when mostly stale).
 */
class LfuCache implements SimCache {
  private readonly freq = new Map<string, number>();
  private readonly inCache = new Map<string, { size: number; tick: number }>();
  bytes = 0;
  private tick = 0;
  private heap: Array<[number, number, string]> = [];
  constructor(private readonly cap: number) {}
  has(id: string): boolean {
    return this.inCache.has(id);
  }
  private push(e: [number, number, string]): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  private popMin(): [number, number, string] | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop() as [number, number, string];
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l], h[m])) m = l;
        if (r < h.length && less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
  /** Remove and return the cached object with the fewest requests. */
  evictOne(): [string, number] | undefined {
    for (;;) {
      const e = this.popMin();
      if (!e) return undefined;
      const c = this.inCache.get(e[2]);
      if (!c || c.tick !== e[1]) continue; // stale
      this.inCache.delete(e[2]);
      this.bytes -= c.size;
      return [e[2], c.size];
    }
  }
  private compact(): void {
    if (this.heap.length < 4 * this.inCache.size + 1024) return;
    const live: Array<[number, number, string]> = [];
    for (const [id, c] of this.inCache) live.push([this.freq.get(id) ?? 0, c.tick, id]);
    this.heap = [];
    for (const e of live) this.push(e);
  }
  /** Count one request of `id`; true when it is cached (its place in the order is updated). */
  count(id: string): boolean {
    const f = (this.freq.get(id) ?? 0) + 1;
    this.freq.set(id, f);
    const c = this.inCache.get(id);
    if (!c) return false;
    c.tick = ++this.tick;
    this.push([f, c.tick, id]);
    this.compact();
    return true;
  }
  /** Cache `id`, evicting the least requested; the evicted objects (`id` itself when larger than the cache). */
  insert(id: string, size: number): Array<[string, number]> {
    if (this.inCache.has(id)) return [];
    if (size > this.cap) return [[id, size]];
    const out: Array<[string, number]> = [];
    while (this.bytes + size > this.cap) out.push(this.evictOne() as [string, number]);
    const tick = ++this.tick;
    this.inCache.set(id, { size, tick });
    this.bytes += size;
    this.push([this.freq.get(id) ?? 0, tick, id]);
    this.compact();
    return out;
  }
  remove(id: string): void {
    const c = this.inCache.get(id);
    if (!c) return;
    this.inCache.delete(id); // its heap entries turn stale
    this.bytes -= c.size;
  }
  request(id: string, size: number): boolean {
    if (this.count(id)) return true;
    this.insert(id, size);
    return false;
  }
  admit(id: string, size: number): boolean {
    if (this.inCache.has(id)) return true;
    if (size > this.cap) return false;
    this.insert(id, size);
    return true;
  }
}
const less = (a: [number, number, string], b: [number, number, string]) =>
  a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

class ArcCache implements SimCache {
  private readonly t1 = new LruList();
  private readonly t2 = new LruList();
  private readonly b1 = new LruList();
  private readonly b2 = new LruList();
  /** Target bytes of T1. */
  private p = 0;
  constructor(private readonly c: number) {}
  has(id: string): boolean {
    return this.t1.has(id) || this.t2.has(id);
  }
  /** Make room for `size` bytes in T1+T2, evicting into the ghost lists. */
  private replace(size: number, inB2: boolean): void {
    while (this.t1.bytes + this.t2.bytes + size > this.c && (this.t1.size > 0 || this.t2.size > 0)) {
      if (this.t1.size > 0 && (this.t1.bytes > this.p || (inB2 && this.t1.bytes >= this.p) || this.t2.size === 0)) {
        const [id, s] = this.t1.pop() as [string, number];
        this.b1.add(id, s);
      } else {
        const [id, s] = this.t2.pop() as [string, number];
        this.b2.add(id, s);
      }
    }
  }
  private trimGhosts(): void {
    while (this.t1.bytes + this.b1.bytes > this.c && this.b1.size > 0) this.b1.pop();
    while (this.t1.bytes + this.t2.bytes + this.b1.bytes + this.b2.bytes > 2 * this.c && this.b2.size > 0)
      this.b2.pop();
  }
  request(id: string, size: number): boolean {
    if (this.t1.has(id)) {
      this.t1.remove(id);
      this.t2.add(id, size);
      return true;
    }
    if (this.t2.has(id)) {
      this.t2.touch(id);
      return true;
    }
    if (size > this.c) return false;
    if (this.b1.has(id)) {
      const d = Math.max(1, this.b2.bytes / Math.max(1, this.b1.bytes)) * size;
      this.p = Math.min(this.c, this.p + d);
      this.b1.remove(id);
      this.replace(size, false);
      this.t2.add(id, size);
    } else if (this.b2.has(id)) {
      const d = Math.max(1, this.b1.bytes / Math.max(1, this.b2.bytes)) * size;
      this.p = Math.max(0, this.p - d);
      this.b2.remove(id);
      this.replace(size, true);
      this.t2.add(id, size);
    } else {
      this.replace(size, false);
      this.t1.add(id, size);
    }
    this.trimGhosts();
    return false;
  }
  admit(id: string, size: number): boolean {
    if (this.has(id)) return true;
    if (size > this.c) return false;
    this.b1.remove(id);
    this.b2.remove(id);
    this.replace(size, false);
    this.t1.add(id, size);
    this.trimGhosts();
    return true;
  }
}

class TwoTierCache implements SimCache {
  private readonly prot: LfuCache;
  private readonly gen = new LruList();
  constructor(
    private readonly cap: number,
    share: number,
  ) {
    this.prot = new LfuCache(Math.floor(cap * share));
  }
  has(id: string): boolean {
    return this.prot.has(id) || this.gen.has(id);
  }
  /** Into the protected tier; what it pushes out goes to the general tier's recent end. */
  private protect(id: string, size: number): void {
    this.gen.remove(id);
    for (const [d, s] of this.prot.insert(id, size)) this.gen.add(d, s);
    while (this.prot.bytes + this.gen.bytes > this.cap && this.gen.size > 0) this.gen.pop();
  }
  request(id: string, size: number, facility: boolean): boolean {
    if (facility) {
      if (this.prot.count(id)) return true;
      const hit = this.gen.has(id);
      if (size <= this.cap) this.protect(id, size);
      return hit;
    }
    if (this.gen.has(id)) {
      this.gen.touch(id);
      return true;
    }
    this.admit(id, size, false);
    return false;
  }
  admit(id: string, size: number, facility: boolean): boolean {
    if (this.prot.has(id)) return true;
    if (size > this.cap) return false;
    if (facility) {
      this.protect(id, size);
      return this.has(id);
    }
    if (this.gen.has(id)) {
      this.gen.touch(id);
      return true;
    }
    // the general tier has what the protected tier leaves
    if (size > this.cap - this.prot.bytes) return false;
    while (this.prot.bytes + this.gen.bytes + size > this.cap) this.gen.pop();
    this.gen.add(id, size);
    return true;
  }
}

function makeCache(o: SimulateOptions): SimCache {
  switch (o.policy) {
    case 'lru':
      return new LruCache(o.cacheBytes);
    case 'lfu':
      return new LfuCache(o.cacheBytes);
    case 'arc':
      return new ArcCache(o.cacheBytes);
    case 'two-tier': {
      const share = o.protectedShare ?? 0.5;
      if (!(share >= 0 && share <= 1)) throw new StrataError('USAGE', 'the protected share must be in 0..1');
      return new TwoTierCache(o.cacheBytes, share);
    }
    default:
      throw new StrataError('USAGE', `unknown policy ${JSON.stringify(o.policy)} (${SIM_POLICIES.join(', ')})`);
  }
}

/** FNV-1a of a string, as a share in [0, 1). */
export function pieceHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) / 4294967296;
}

/**
 * The objects a request reads at chunk level: [id, bytes] per piece. Piece i of a version
 * with a base is the base's piece i unless pieceHash(`version#i`) < changed (or the base
 * is shorter).
 */
export function piecesOf(
  r: ImageRequest,
  chunkBytes: number,
  baseBytes: ReadonlyMap<string, number>,
): Array<[string, number]> {
  const id = `${r.image}@${r.version ?? ''}`;
  const n = Math.max(1, Math.ceil(r.bytes / chunkBytes));
  const out: Array<[string, number]> = [];
  const bb = r.base !== undefined ? baseBytes.get(r.base) : undefined;
  const changed = r.changed ?? 1;
  for (let i = 0; i < n; i++) {
    const size = Math.min(chunkBytes, r.bytes - i * chunkBytes) || r.bytes;
    const own = `${id}#${i}`;
    if (r.base !== undefined && (bb === undefined || (i + 1) * chunkBytes <= bb) && pieceHash(own) >= changed)
      out.push([`${r.base}#${i}`, size]);
    else out.push([own, size]);
  }
  return out;
}

export function simulate(log: Iterable<ImageRequest>, o: SimulateOptions): SimulateResult {
  if (!Number.isSafeInteger(o.cacheBytes) || o.cacheBytes < 0)
    throw new StrataError('USAGE', 'the cache size must be a whole number of bytes');
  const level = o.level ?? 'image';
  const chunkBytes = o.chunkBytes ?? 64 * 1024 * 1024;
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw new StrataError('USAGE', 'bad chunk size');
  const rule = o.facility ?? DEFAULT_FACILITY;
  const cache = makeCache(o);
  // the size of every version a derived one names as its base: its largest request (when the log has one)
  const baseBytes = new Map<string, number>();
  if (level === 'chunk') {
    for (const r of log) {
      const id = `${r.image}@${r.version ?? ''}`;
      if ((baseBytes.get(id) ?? -1) < r.bytes) baseBytes.set(id, r.bytes);
    }
  }
  const objects = (r: ImageRequest): Array<[string, number]> =>
    level === 'image' ? [[`${r.image}@${r.version ?? ''}`, r.bytes]] : piecesOf(r, chunkBytes, baseBytes);
  const res: SimulateResult = {
    policy: o.policy,
    level,
    cacheBytes: o.cacheBytes,
    requests: 0,
    hits: 0,
    hitRate: 0,
    lookups: 0,
    objectHits: 0,
    requestedBytes: 0,
    fetchedBytes: 0,
    byteHitRate: 0,
    facility: { requests: 0, hits: 0 },
    user: { requests: 0, hits: 0 },
  };
  const pre = o.preload;
  const windowDays = pre?.windowDays ?? 7;
  if (pre && (!Number.isSafeInteger(pre.idleBytes) || pre.idleBytes < 0))
    throw new StrataError('USAGE', 'the idle capacity must be a whole number of bytes');
  if (pre && (!Number.isInteger(windowDays) || windowDays < 1))
    throw new StrataError('USAGE', 'the pre-load window must be a whole number of days');
  // recent requests per version, by day, for the pre-load choice
  const recent: Array<Map<string, number>> = [];
  const lastSeen = new Map<string, ImageRequest>();
  let day = Number.NaN;
  if (pre) res.preload = { bytes: 0, objects: 0, idleBytes: pre.idleBytes, windowDays };
  for (const r of log) {
    if (pre) {
      const d = Math.floor(r.at / DAY_MS);
      if (d !== day) {
        if (!Number.isNaN(day)) {
          // days without requests still age the window
          for (let k = day + 1; k < d && recent.length > 0; k++) {
            recent.push(new Map());
            if (recent.length > windowDays) recent.shift();
          }
          preloadNow(cache, recent, lastSeen, pre.idleBytes, o.cacheBytes, rule, objects, res);
        }
        day = d;
        recent.push(new Map());
        if (recent.length > windowDays) recent.shift();
      }
      const id = `${r.image}@${r.version ?? ''}`;
      const m = recent[recent.length - 1];
      m.set(id, (m.get(id) ?? 0) + 1);
      lastSeen.set(id, r);
    }
    const fac = isFacility(r, rule);
    let all = true;
    for (const [id, size] of objects(r)) {
      res.lookups++;
      res.requestedBytes += size;
      if (cache.request(id, size, fac)) res.objectHits++;
      else {
        all = false;
        res.fetchedBytes += size;
      }
    }
    res.requests++;
    const cls = fac ? res.facility : res.user;
    cls.requests++;
    if (all) {
      res.hits++;
      cls.hits++;
    }
  }
  res.hitRate = res.requests ? res.hits / res.requests : 0;
  res.byteHitRate = res.requestedBytes ? 1 - res.fetchedBytes / res.requestedBytes : 0;
  return res;
}

/** The pre-load choice: facility versions first, then the rest, each by recent requests (ties by name). */
export function preloadChoice(
  recent: ReadonlyArray<ReadonlyMap<string, number>>,
  lastSeen: ReadonlyMap<string, ImageRequest>,
  rule: FacilityRule,
): ImageRequest[] {
  const counts = new Map<string, number>();
  for (const m of recent) for (const [id, n] of m) counts.set(id, (counts.get(id) ?? 0) + n);
  const xs = [...counts.entries()].map(([id, n]) => ({ id, n, r: lastSeen.get(id) as ImageRequest }));
  xs.sort((a, b) => {
    const fa = isFacility(a.r, rule) ? 0 : 1;
    const fb = isFacility(b.r, rule) ? 0 : 1;
    return fa - fb || b.n - a.n || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  });
  return xs.map((x) => x.r);
}

/**
 * The pre-load selection over a ranked list (preloadChoice's order): take each version whose
 * bytes still fit the cache (`cacheBytes` in all) and whose missing bytes still fit what may
 * be fetched while idle (`idleBytes` in all); a version that does not fit is passed over and
 * the next tried. The simulator's nightly pre-load and `strata preload --auto` both use it.
 */
export function selectPreload(
  ranked: readonly ImageRequest[],
  cacheBytes: number,
  idleBytes: number,
  cost: (r: ImageRequest) => { total: number; missing: number },
): ImageRequest[] {
  let chosen = 0;
  let fetched = 0;
  const out: ImageRequest[] = [];
  for (const r of ranked) {
    const { total, missing } = cost(r);
    if (chosen + total > cacheBytes) continue;
    if (fetched + missing > idleBytes) continue;
    chosen += total;
    fetched += missing;
    out.push(r);
  }
  return out;
}

export interface PreloadPlanOptions {
  /** Bytes the host's cache holds in all. */
  cacheBytes: number;
  /** Bytes that may be fetched now (the idle capacity). */
  idleBytes: number;
  /** Days of recent requests the choice counts (default 7). */
  windowDays?: number;
  facility?: FacilityRule;
  /** The moment of the choice (default now): requests in [now - windowDays, now) count. */
  now?: number;
  /** A version's bytes and the bytes of it the host lacks (default: its logged bytes, all missing). */
  sizes?: (r: ImageRequest) => { bytes: number; missing: number };
}

export interface PreloadPlanEntry {
  /** `image@version`. */
  ref: string;
  image: string;
  version: number | null;
  /** Requests of it in the window. */
  requests: number;
  facility: boolean;
  bytes: number;
  missing: number;
}

/**
 * What a host would pre-load now, from its request log: the simulator's nightly choice
 * (facility versions first, then the rest, each by requests in the window; selectPreload's
 * fit) over the last `windowDays` days before `now`. `ranked` is the whole order, `chosen`
 * what fits.
 */
export function planPreload(
  log: Iterable<ImageRequest>,
  o: PreloadPlanOptions,
): { chosen: PreloadPlanEntry[]; ranked: PreloadPlanEntry[]; windowDays: number; since: number; until: number } {
  const windowDays = o.windowDays ?? 7;
  if (!Number.isInteger(windowDays) || windowDays < 1)
    throw new StrataError('USAGE', 'the pre-load window must be a whole number of days');
  for (const [k, v] of [
    ['cache size', o.cacheBytes],
    ['idle capacity', o.idleBytes],
  ] as const)
    if (!Number.isSafeInteger(v) || v < 0) throw new StrataError('USAGE', `the ${k} must be a whole number of bytes`);
  const rule = o.facility ?? DEFAULT_FACILITY;
  const until = o.now ?? Date.now();
  const since = until - windowDays * DAY_MS;
  const counts = new Map<string, number>();
  const lastSeen = new Map<string, ImageRequest>();
  for (const r of log) {
    if (r.at < since || r.at >= until || r.version === null) continue;
    const id = `${r.image}@${r.version}`;
    counts.set(id, (counts.get(id) ?? 0) + 1);
    const prev = lastSeen.get(id);
    if (!prev || prev.at <= r.at) lastSeen.set(id, r);
  }
  const ranked = preloadChoice([counts], lastSeen, rule);
  const entry = (r: ImageRequest): PreloadPlanEntry => {
    const ref = `${r.image}@${r.version}`;
    return {
      ref,
      image: r.image,
      version: r.version,
      requests: counts.get(ref) ?? 0,
      facility: isFacility(r, rule),
      ...(o.sizes ? o.sizes(r) : { bytes: r.bytes, missing: r.bytes }),
    };
  };
  const entries = new Map(ranked.map((r) => [r, entry(r)]));
  const chosen = selectPreload(ranked, o.cacheBytes, o.idleBytes, (r) => {
    const e = entries.get(r) as PreloadPlanEntry;
    return { total: e.bytes, missing: e.missing };
  });
  return {
    chosen: chosen.map((r) => entries.get(r) as PreloadPlanEntry),
    ranked: ranked.map((r) => entries.get(r) as PreloadPlanEntry),
    windowDays,
    since,
    until,
  };
}

function preloadNow(
  cache: SimCache,
  recent: ReadonlyArray<ReadonlyMap<string, number>>,
  lastSeen: ReadonlyMap<string, ImageRequest>,
  idleBytes: number,
  cacheBytes: number,
  rule: FacilityRule,
  objects: (r: ImageRequest) => Array<[string, number]>,
  res: SimulateResult,
): void {
  const partsOf = new Map<ImageRequest, Array<[string, number]>>();
  const chosen = selectPreload(preloadChoice(recent, lastSeen, rule), cacheBytes, idleBytes, (r) => {
    const parts = objects(r);
    partsOf.set(r, parts);
    return {
      total: parts.reduce((s, [, b]) => s + b, 0),
      missing: parts.reduce((s, [id, b]) => s + (cache.has(id) ? 0 : b), 0),
    };
  });
  const picks = chosen.map((r) => ({ fac: isFacility(r, rule), parts: partsOf.get(r) as Array<[string, number]> }));
  // least wanted first, so what follows (more wanted) is more recent and the choice as a whole
  // stays: it fits the cache, so no admission evicts another chosen object
  let fetched = 0;
  for (let i = picks.length - 1; i >= 0; i--) {
    for (const [id, size] of picks[i].parts) {
      const had = cache.has(id);
      if (cache.admit(id, size, picks[i].fac) && !had) {
        fetched += size;
        (res.preload as NonNullable<SimulateResult['preload']>).objects++;
      }
    }
  }
  (res.preload as NonNullable<SimulateResult['preload']>).bytes += fetched;
}
