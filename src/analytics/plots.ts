import type { SimilarityReport } from './library-reports.js';
import type { DedupReport, LifespanReport, PopularityReport, WorkingSetReport } from './reports.js';
import { SPAN_BUCKETS } from './reports.js';
import { heatMatrix, histogram, lineChart, logLogScatter } from './svg.js';

/** Each report's plot (see svg.ts). */

/** Rank-frequency of facility and user images (each ranked in its own class) with the fitted tails. */
export function popularitySvg(r: PopularityReport): string {
  const fac = r.ranked.filter((x) => x.facility);
  const usr = r.ranked.filter((x) => !x.facility);
  const fits = [];
  if (r.facility.fit)
    fits.push({
      name: `facility fit s=${r.facility.fit.exponent.toFixed(2)}`,
      exponent: r.facility.fit.exponent,
      intercept: r.facility.fit.intercept,
      from: 1,
      to: Math.max(1, fac.length),
    });
  if (r.user.fit)
    fits.push({
      name: `user fit s=${r.user.fit.exponent.toFixed(2)}`,
      exponent: r.user.fit.exponent,
      intercept: r.user.fit.intercept,
      from: 1,
      to: Math.max(1, usr.length),
    });
  return logLogScatter({
    title: 'Image popularity (rank-frequency)',
    xLabel: 'rank',
    yLabel: 'requests',
    series: [
      { name: 'facility images', points: fac.map((x, i) => [i + 1, x.requests]) },
      { name: 'user images', points: usr.map((x, i) => [i + 1, x.requests]) },
    ],
    fits,
  });
}

export function workingSetSvg(r: WorkingSetReport, by: 'daily' | 'weekly' = 'daily'): string {
  const ws = r[by];
  return lineChart({
    title: `${by === 'daily' ? 'Daily' : 'Weekly'} working set`,
    xLabel: by === 'daily' ? 'day' : 'week starting',
    yLabel: 'distinct images / GiB',
    labels: ws.map((w) => w.start),
    series: [
      { name: 'images', values: ws.map((w) => w.images) },
      { name: 'GiB', values: ws.map((w) => w.bytes / 1024 ** 3) },
    ],
  });
}

export function lifespanSvg(r: LifespanReport): string {
  return histogram({
    title: 'Image lifespan (first to last request)',
    xLabel: 'days',
    yLabel: 'images',
    labels: SPAN_BUCKETS.map((d, i) => (i + 1 < SPAN_BUCKETS.length ? `${d}-${SPAN_BUCKETS[i + 1]}` : `${d}+`)),
    series: [
      { name: 'user images', values: r.histogram.map((h) => h.user) },
      { name: 'facility images', values: r.histogram.map((h) => h.facility) },
    ],
  });
}

export function orgsSvg(r: { orgs: Array<{ project: string; requests: number }> }, top = 20): string {
  const xs = r.orgs.slice(0, top);
  return histogram({
    title: `Requests per organisation (top ${xs.length})`,
    xLabel: 'project',
    yLabel: 'requests',
    labels: xs.map((x) => x.project),
    series: [{ name: 'requests', values: xs.map((x) => x.requests) }],
  });
}

export function dedupSvg(r: DedupReport): string {
  return histogram({
    title: `Dedup from deltas: ${(r.savedShare * 100).toFixed(1)}% saved`,
    xLabel: '',
    yLabel: 'GiB',
    labels: ['whole copies', 'with deltas'],
    series: [{ name: 'GiB', values: [r.fullBytes / 1024 ** 3, r.deltaBytes / 1024 ** 3] }],
  });
}

/** The matrix (left) and the histogram of best shares (right), side by side in one SVG. */
export function similaritySvg(r: SimilarityReport): string {
  const m = heatMatrix({
    title: 'Share of blocks to write (row from column)',
    rowLabel: 'version',
    colLabel: 'base',
    labels: r.versions,
    matrix: r.matrix,
  });
  const h = histogram({
    title: 'Most similar base: share of blocks to write',
    xLabel: 'share',
    yLabel: 'versions',
    labels: r.histogram.map((_, i) => `${i / 10}`),
    series: [{ name: 'versions', values: r.histogram }],
  });
  const inner = (s: string, x: number) => s.replace('<svg ', `<svg x="${x}" y="0" `);
  return [
    '<svg xmlns="http://www.w3.org/2000/svg" width="1280" height="420" viewBox="0 0 1280 420">',
    inner(m, 0),
    inner(h, 640),
    '</svg>',
    '',
  ].join('\n');
}
