import type { ImageRequest } from './request-log.js';

/**
 * The reports of `strata analytics` over a request log (see request-log.ts): popularity,
 * working set, lifespan, organisations, dedup estimated from the log. Each is one pass (or
 * a sort) over the records, so a million requests take well under a second each.
 */

export const DAY_MS = 86400e3;

/** Which images are facility images: owned by one of `projects`, or public (when `public` is on). */
export interface FacilityRule {
  projects: readonly string[];
  /** Public images count as facility images (default true). */
  public?: boolean;
}
export const DEFAULT_FACILITY: FacilityRule = { projects: ['facility', 'system'], public: true };

export function isFacility(r: ImageRequest, rule: FacilityRule = DEFAULT_FACILITY): boolean {
  if (r.owner !== undefined && rule.projects.includes(r.owner)) return true;
  return (rule.public ?? true) && r.public === true;
}

// ---- popularity

export interface TailFit {
  /** s in count ~ rank^-s. */
  exponent: number;
  /** log10 of the fitted count at rank 1 (the line's intercept). */
  intercept: number;
  /** Ranks used in the fit (those with at least minCount requests). */
  points: number;
  /** Coefficient of determination of the line on log-log axes. */
  r2: number;
}

/**
 * Least squares of log10(count) on log10(rank) over the ranks whose count is at least
 * `minCount` (the floor of ones and twos of a finite sample bends any tail flat, so it is
 * left out). Null with fewer than 3 such ranks.
 */
export function fitTail(counts: readonly number[], minCount = 3): TailFit | null {
  let n = 0;
  let sx = 0;
  let sy = 0;
  let sxx = 0;
  let sxy = 0;
  let syy = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] < minCount) continue;
    const x = Math.log10(i + 1);
    const y = Math.log10(counts[i]);
    n++;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
    syy += y * y;
  }
  if (n < 3) return null;
  const vx = sxx - (sx * sx) / n;
  if (vx <= 0) return null;
  const slope = (sxy - (sx * sy) / n) / vx;
  const intercept = (sy - slope * sx) / n;
  const vy = syy - (sy * sy) / n;
  const r2 = vy <= 0 ? 1 : (slope * (sxy - (sx * sy) / n)) / vy;
  return { exponent: -slope, intercept, points: n, r2 };
}

export interface RankedImage {
  image: string;
  requests: number;
  facility: boolean;
}

export interface PopularityReport {
  requests: number;
  images: number;
  facility: { requests: number; share: number; images: number; fit: TailFit | null };
  user: { requests: number; share: number; images: number; fit: TailFit | null };
  /** Share of requests of the most requested image. */
  topShare: number;
  top: RankedImage[];
  /** Every image, most requested first (ties by name). */
  ranked: RankedImage[];
  fit: TailFit | null;
  method: string;
}

export function popularity(
  log: Iterable<ImageRequest>,
  opts: { facility?: FacilityRule; minCount?: number; top?: number } = {},
): PopularityReport {
  const rule = opts.facility ?? DEFAULT_FACILITY;
  const minCount = opts.minCount ?? 3;
  const by = new Map<string, RankedImage>();
  let n = 0;
  for (const r of log) {
    n++;
    let e = by.get(r.image);
    if (!e) {
      e = { image: r.image, requests: 0, facility: isFacility(r, rule) };
      by.set(r.image, e);
    }
    e.requests++;
  }
  const ranked = [...by.values()].sort((a, b) => b.requests - a.requests || (a.image < b.image ? -1 : 1));
  const fac = ranked.filter((x) => x.facility);
  const usr = ranked.filter((x) => !x.facility);
  const sum = (xs: RankedImage[]) => xs.reduce((s, x) => s + x.requests, 0);
  const fr = sum(fac);
  const ur = sum(usr);
  return {
    requests: n,
    images: ranked.length,
    facility: {
      requests: fr,
      share: n ? fr / n : 0,
      images: fac.length,
      fit: fitTail(
        fac.map((x) => x.requests),
        minCount,
      ),
    },
    user: {
      requests: ur,
      share: n ? ur / n : 0,
      images: usr.length,
      fit: fitTail(
        usr.map((x) => x.requests),
        minCount,
      ),
    },
    topShare: n && ranked.length ? ranked[0].requests / n : 0,
    top: ranked.slice(0, opts.top ?? 10),
    ranked,
    fit: fitTail(
      ranked.map((x) => x.requests),
      minCount,
    ),
    method: `least squares of log10(requests) on log10(rank), ranks with at least ${minCount} requests`,
  };
}

// ---- working set

export interface WindowSet {
  /** Start of the window, ISO date. */
  start: string;
  requests: number;
  images: number;
  /** Bytes of the distinct image versions requested in the window (each once). */
  bytes: number;
}

export interface WorkingSetReport {
  daily: WindowSet[];
  weekly: WindowSet[];
  summary: {
    daily: { meanImages: number; maxImages: number; meanBytes: number; maxBytes: number };
    weekly: { meanImages: number; maxImages: number; meanBytes: number; maxBytes: number };
    totalImages: number;
    totalBytes: number;
  };
}

/** UTC days, and weeks starting on Monday (1970-01-01 was a Thursday: day + 3). */
export function workingSet(log: Iterable<ImageRequest>, opts: { emptyWindows?: boolean } = {}): WorkingSetReport {
  // per image, its versions' largest bytes: image -> version -> bytes (no `image@version`
  // string made per request: three maps of a million requests each)
  type Seen = Map<string, Map<number | null, number>>;
  const note = (seen: Seen, r: ImageRequest) => {
    let vs = seen.get(r.image);
    if (!vs) {
      vs = new Map();
      seen.set(r.image, vs);
    }
    const had = vs.get(r.version);
    if (had === undefined || r.bytes > had) vs.set(r.version, r.bytes);
  };
  const bytesOf = (seen: Seen) => {
    let b = 0;
    for (const vs of seen.values()) for (const v of vs.values()) b += v;
    return b;
  };
  const window = (key: (at: number) => number, startOf: (k: number) => number): WindowSet[] => {
    const out: WindowSet[] = [];
    let cur = Number.NaN;
    let seen: Seen = new Map();
    let w: WindowSet | undefined;
    const close = () => {
      if (!w) return;
      w.images = seen.size;
      w.bytes = bytesOf(seen);
      out.push(w);
    };
    for (const r of log) {
      const k = key(r.at);
      if (k !== cur) {
        close();
        if (opts.emptyWindows && w && !Number.isNaN(cur))
          for (let e = cur + 1; e < k; e++)
            out.push({ start: new Date(startOf(e)).toISOString().slice(0, 10), requests: 0, images: 0, bytes: 0 });
        cur = k;
        seen = new Map();
        w = { start: new Date(startOf(k)).toISOString().slice(0, 10), requests: 0, images: 0, bytes: 0 };
      }
      (w as WindowSet).requests++;
      note(seen, r);
    }
    close();
    return out;
  };
  const daily = window(
    (at) => Math.floor(at / DAY_MS),
    (k) => k * DAY_MS,
  );
  const weekly = window(
    (at) => Math.floor((Math.floor(at / DAY_MS) + 3) / 7),
    (k) => (k * 7 - 3) * DAY_MS,
  );
  const stats = (ws: WindowSet[]) => ({
    meanImages: ws.length ? ws.reduce((s, w) => s + w.images, 0) / ws.length : 0,
    maxImages: ws.reduce((m, w) => Math.max(m, w.images), 0),
    meanBytes: ws.length ? ws.reduce((s, w) => s + w.bytes, 0) / ws.length : 0,
    maxBytes: ws.reduce((m, w) => Math.max(m, w.bytes), 0),
  });
  const all: Seen = new Map();
  for (const r of log) note(all, r);
  return {
    daily,
    weekly,
    summary: { daily: stats(daily), weekly: stats(weekly), totalImages: all.size, totalBytes: bytesOf(all) },
  };
}

// ---- lifespan

export interface ImageLife {
  image: string;
  facility: boolean;
  first: string;
  last: string;
  /** last - first, days. */
  spanDays: number;
  requests: number;
  /** Gaps between consecutive requests longer than the idle threshold. */
  idlePeriods: number;
  /** The longest gap, days. */
  longestIdleDays: number;
}

export interface LifespanReport {
  idleDays: number;
  images: ImageLife[];
  /** Images by span: [0,1) days, [1,3), [3,7), [7,30), [30,90), [90,365), >= 365. */
  histogram: Array<{ from: number; to: number | null; user: number; facility: number }>;
  user: { images: number; medianSpanDays: number; withinDays3: number; withinDays7: number };
  facility: { images: number; medianSpanDays: number };
}

export const SPAN_BUCKETS = [0, 1, 3, 7, 30, 90, 365];

const median = (xs: number[]) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export function lifespan(
  log: Iterable<ImageRequest>,
  opts: { facility?: FacilityRule; idleDays?: number } = {},
): LifespanReport {
  const rule = opts.facility ?? DEFAULT_FACILITY;
  const idleDays = opts.idleDays ?? 1;
  const idle = idleDays * DAY_MS;
  const by = new Map<string, { first: number; last: number; n: number; idle: number; longest: number; fac: boolean }>();
  for (const r of log) {
    const e = by.get(r.image);
    if (!e) {
      by.set(r.image, { first: r.at, last: r.at, n: 1, idle: 0, longest: 0, fac: isFacility(r, rule) });
      continue;
    }
    const gap = r.at - e.last;
    if (gap > idle) e.idle++;
    if (gap > e.longest) e.longest = gap;
    e.last = r.at;
    e.n++;
  }
  const images: ImageLife[] = [...by.entries()]
    .map(([image, e]) => ({
      image,
      facility: e.fac,
      first: new Date(e.first).toISOString(),
      last: new Date(e.last).toISOString(),
      spanDays: (e.last - e.first) / DAY_MS,
      requests: e.n,
      idlePeriods: e.idle,
      longestIdleDays: e.longest / DAY_MS,
    }))
    .sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : a.image < b.image ? -1 : 1));
  const histogram = SPAN_BUCKETS.map((from, i) => ({
    from,
    to: i + 1 < SPAN_BUCKETS.length ? SPAN_BUCKETS[i + 1] : null,
    user: 0,
    facility: 0,
  }));
  for (const im of images) {
    let i = SPAN_BUCKETS.length - 1;
    while (im.spanDays < SPAN_BUCKETS[i]) i--;
    if (im.facility) histogram[i].facility++;
    else histogram[i].user++;
  }
  const us = images.filter((x) => !x.facility).map((x) => x.spanDays);
  const fs = images.filter((x) => x.facility).map((x) => x.spanDays);
  return {
    idleDays,
    images,
    histogram,
    user: {
      images: us.length,
      medianSpanDays: median(us),
      withinDays3: us.filter((d) => d <= 3).length,
      withinDays7: us.filter((d) => d <= 7).length,
    },
    facility: { images: fs.length, medianSpanDays: median(fs) },
  };
}

// ---- organisations

export interface OrgRow {
  project: string;
  requests: number;
  share: number;
  users: number;
  images: number;
  bytes: number;
}

export function orgs(log: Iterable<ImageRequest>): { orgs: OrgRow[]; requests: number } {
  const by = new Map<string, { n: number; users: Set<string>; images: Set<string>; bytes: number }>();
  let n = 0;
  for (const r of log) {
    n++;
    let e = by.get(r.project);
    if (!e) {
      e = { n: 0, users: new Set(), images: new Set(), bytes: 0 };
      by.set(r.project, e);
    }
    e.n++;
    e.users.add(r.user);
    e.images.add(r.image);
    e.bytes += r.bytes;
  }
  return {
    requests: n,
    orgs: [...by.entries()]
      .map(([project, e]) => ({
        project,
        requests: e.n,
        share: n ? e.n / n : 0,
        users: e.users.size,
        images: e.images.size,
        bytes: e.bytes,
      }))
      .sort((a, b) => b.requests - a.requests || (a.project < b.project ? -1 : 1)),
  };
}

// ---- dedup from the log's base/changed fields

export interface DedupReport {
  source: 'log' | 'library';
  versions: number;
  /** Bytes of every version stored whole. */
  fullBytes: number;
  /** Bytes stored with deltas (a derived version stores its changed share; a base once). */
  deltaBytes: number;
  savedBytes: number;
  savedShare: number;
  /** Versions that are stored as a delta on a base. */
  derived: number;
}

/**
 * What delta storage saves over whole copies, estimated from the log: each distinct image
 * version counted once at its largest size; one with a `base` and a `changed` share stores
 * changed × bytes, others their bytes.
 */
export function dedupFromLog(log: Iterable<ImageRequest>): DedupReport {
  // image -> version -> its largest bytes and changed share (no `image@version` string per request)
  const by = new Map<string, Map<number | null, { bytes: number; changed?: number }>>();
  for (const r of log) {
    let vs = by.get(r.image);
    if (!vs) {
      vs = new Map();
      by.set(r.image, vs);
    }
    const e = vs.get(r.version);
    if (!e) vs.set(r.version, { bytes: r.bytes, changed: r.base !== undefined ? r.changed : undefined });
    else if (r.bytes > e.bytes) e.bytes = r.bytes;
  }
  let full = 0;
  let delta = 0;
  let derived = 0;
  let versions = 0;
  for (const vs of by.values())
    for (const e of vs.values()) {
      versions++;
      full += e.bytes;
      if (e.changed !== undefined) {
        derived++;
        delta += Math.round(e.bytes * e.changed);
      } else delta += e.bytes;
    }
  return {
    source: 'log',
    versions,
    fullBytes: full,
    deltaBytes: delta,
    savedBytes: full - delta,
    savedShare: full ? (full - delta) / full : 0,
    derived,
  };
}
