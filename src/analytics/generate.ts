import { StrataError } from '../util/errors.js';
import type { ImageRequest } from './request-log.js';

/**
 * A synthetic request log with the shape Atkinson, Wong and Ricci report for four years of
 * Emulab image requests (seed 002): facility images take 55.6% of requests and user images
 * 44.4%; user-image popularity is heavy-tailed (Zipf-like, exponent about 1), facility-image
 * popularity lighter (a smaller exponent: popular facility images are popular together);
 * the most popular image has under 13% of requests; most user images are used for a few
 * days, facility images throughout.
 *
 * How (deterministic by seed, own PRNG so the output does not change with Node's Math.random):
 * 1. Images: `facilityImages` images owned by project `facility` (public, live the whole
 *    period), the rest user images, each owned by one project and derived from a facility
 *    image (`base`) with a small changed share (1-20% of blocks). Each user image has a
 *    birth time (uniform over the period) and a lifespan: with probability `shortLived`
 *    a few days (exponential, mean `lifeDays`), else up to the period's end.
 * 2. Each request is a facility request with probability `facilityShare`; its image is drawn
 *    by Zipf rank (exponent `facilityExponent` over facility images, `userExponent` over
 *    user images; ranks assigned to images at random), its time uniformly within the
 *    image's life, its user from the owner project (user images) or any user (facility).
 * 3. Sizes: facility images 1-4 GiB, user images 0.5-4 GiB (log-uniform), bytes = size.
 */
export interface GenerateOptions {
  requests: number;
  seed: number;
  images?: number;
  users?: number;
  projects?: number;
  days?: number;
  /** Start of the period (ms since the epoch; default 2026-01-01). */
  start?: number;
  facilityImages?: number;
  facilityShare?: number;
  facilityExponent?: number;
  userExponent?: number;
  /** Share of user images that live a few days (default 0.8). */
  shortLived?: number;
  /** Mean life of a short-lived user image, days (default 3). */
  lifeDays?: number;
}

export const GENERATE_DEFAULTS = {
  images: 714,
  users: 1301,
  projects: 120,
  days: 365,
  start: Date.UTC(2026, 0, 1),
  facilityImages: 40,
  facilityShare: 0.556,
  facilityExponent: 0.7,
  userExponent: 1.0,
  shortLived: 0.8,
  lifeDays: 3,
} as const;

/** xoshiro128** seeded through splitmix32: fast, 2^128 period, the same stream on every platform. */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }
  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    return ((this.u32() >>> 5) * 67108864 + (this.u32() >>> 6)) / 9007199254740992;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}
const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

/** Draws ranks 0..n-1 with probability proportional to (rank+1)^-s (inverse CDF by binary search). */
export class Zipf {
  private readonly cdf: Float64Array;
  constructor(
    readonly n: number,
    readonly s: number,
  ) {
    this.cdf = new Float64Array(n);
    let sum = 0;
    for (let k = 0; k < n; k++) {
      sum += (k + 1) ** -s;
      this.cdf[k] = sum;
    }
    for (let k = 0; k < n; k++) this.cdf[k] /= sum;
  }
  draw(rng: Rng): number {
    const u = rng.next();
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.cdf[mid] > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
  /** Probability of rank 0. */
  topShare(): number {
    return this.cdf[0];
  }
}

interface GenImage {
  name: string;
  owner: string;
  facility: boolean;
  from: number;
  to: number;
  bytes: number;
  base?: string;
  changed?: number;
}

const DAY = 86400e3;
const GIB = 1024 ** 3;

function check(name: string, v: number, min: number, max: number, integer = true): void {
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v)))
    throw new StrataError('USAGE', `--${name} must be ${integer ? 'an integer' : 'a number'} in ${min}..${max}`);
}

/** The synthetic log, sorted by time (stable: requests of the same millisecond in the order drawn). */
export function generateLog(opts: GenerateOptions): ImageRequest[] {
  const out: ImageRequest[] = [];
  for (const r of generateRequests(opts)) out.push(r);
  return out.sort((a, b) => a.at - b.at);
}

/**
 * The synthetic log's requests in the order they are drawn (not by time): generateLog sorts
 * them; `strata analytics generate` puts them through RequestRuns, which orders them the
 * same way without holding them.
 */
export function* generateRequests(opts: GenerateOptions): Generator<ImageRequest> {
  const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
  const o = { ...GENERATE_DEFAULTS, ...given } as Required<GenerateOptions>;
  check('requests', o.requests, 0, 50_000_000);
  check('seed', o.seed, 0, 2 ** 32 - 1);
  check('images', o.images, 2, 1_000_000);
  check('users', o.users, 1, 1_000_000);
  check('projects', o.projects, 1, o.users);
  check('days', o.days, 1, 36500);
  check('facility-images', o.facilityImages, 1, o.images - 1);
  check('facility-share', o.facilityShare, 0, 1, false);
  check('facility-exponent', o.facilityExponent, 0, 5, false);
  check('user-exponent', o.userExponent, 0, 5, false);
  check('short-lived', o.shortLived, 0, 1, false);
  check('life-days', o.lifeDays, 0.01, 36500, false);
  const rng = new Rng(o.seed);
  const period = o.days * DAY;
  const end = o.start + period;
  const logUniform = (lo: number, hi: number) => Math.round(lo * (hi / lo) ** rng.next());
  // users, each in one project (project i has users i, i+projects, ...: every project has one)
  const projectOf = (u: number) => `p${u % o.projects}`;
  const usersOf: number[][] = Array.from({ length: o.projects }, () => []);
  for (let u = 0; u < o.users; u++) usersOf[u % o.projects].push(u);
  const facility: GenImage[] = [];
  for (let i = 0; i < o.facilityImages; i++) {
    facility.push({
      name: `facility-${i}`,
      owner: 'facility',
      facility: true,
      from: o.start,
      to: end,
      bytes: logUniform(GIB, 4 * GIB),
    });
  }
  const user: GenImage[] = [];
  for (let i = 0; i < o.images - o.facilityImages; i++) {
    const born = o.start + rng.next() * period;
    const life = rng.next() < o.shortLived ? -Math.log(1 - rng.next()) * o.lifeDays * DAY : end - born;
    const base = facility[rng.int(facility.length)];
    user.push({
      name: `user-${i}`,
      owner: projectOf(rng.int(o.users)),
      facility: false,
      from: born,
      to: Math.min(end, born + Math.max(life, 3600e3)),
      bytes: logUniform(GIB / 2, 4 * GIB),
      base: `${base.name}@1`,
      changed: Math.round((0.01 + 0.19 * rng.next()) * 1000) / 1000,
    });
  }
  // popularity ranks given at random (not by birth or size)
  const shuffle = <T>(xs: T[]) => {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  };
  const fRank = shuffle([...facility]);
  const uRank = shuffle([...user]);
  const fz = new Zipf(fRank.length, o.facilityExponent);
  const uz = new Zipf(uRank.length, o.userExponent);
  for (let n = 0; n < o.requests; n++) {
    const fac = rng.next() < o.facilityShare;
    const img = fac ? fRank[fz.draw(rng)] : uRank[uz.draw(rng)];
    const at = Math.floor(img.from + rng.next() * (img.to - img.from));
    let u: number;
    if (fac) u = rng.int(o.users);
    else {
      const members = usersOf[Number(img.owner.slice(1))];
      u = members[rng.int(members.length)];
    }
    const r: ImageRequest = {
      at,
      user: `u${u}`,
      project: projectOf(u),
      image: img.name,
      version: 1,
      op: 'versions.download',
      bytes: img.bytes,
      owner: img.owner,
      public: img.facility,
    };
    if (img.base) {
      r.base = img.base;
      r.changed = img.changed;
    }
    yield r;
  }
}
