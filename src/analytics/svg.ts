/**
 * A small SVG writer for the analytics plots: log-log scatter (with fitted lines), line
 * chart, histogram, heat matrix. Our own rather than a charting library because the plots
 * are four fixed shapes, it needs no DOM (the maintained charting libraries mostly render
 * through one, or through a headless browser), adds no dependency, and its output is a
 * deterministic function of the data (numbers printed with fixed decimals, no ids from
 * counters or clocks), so tests can compare and count its elements.
 *
 * Every data mark carries a class: `point` (a scatter point), `line` (a polyline of a
 * series, or a fitted line: `fit`), `bar` (a histogram bar), `cell` (a matrix cell).
 */
const W = 640;
const H = 420;
const M = { left: 70, right: 150, top: 40, bottom: 50 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

const f = (x: number) => (Math.round(x * 100) / 100).toFixed(2);
export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function frame(title: string, body: string[], xLabel: string, yLabel: string): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" fill="none" stroke="#888"/>`,
    `<text x="${M.left + PW / 2}" y="${H - 10}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text x="15" y="${M.top + PH / 2}" text-anchor="middle" transform="rotate(-90 15 ${M.top + PH / 2})">${esc(yLabel)}</text>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

function legend(names: string[]): string[] {
  return names.map(
    (n, i) =>
      `<rect x="${W - M.right + 10}" y="${M.top + i * 18}" width="10" height="10" fill="${COLORS[i % COLORS.length]}"/>` +
      `<text x="${W - M.right + 25}" y="${M.top + i * 18 + 9}">${esc(n)}</text>`,
  );
}

/** Ticks at powers of ten within [lo, hi] (log10 values). */
function decadeTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) out.push(e);
  return out;
}

/** Round ticks for a linear axis [lo, hi]. */
function linearTicks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(Math.round(t / step) * step);
  return out;
}

const tickLabel = (v: number) =>
  Math.abs(v) >= 1e9
    ? `${f(v / 1e9)}G`
    : Math.abs(v) >= 1e6
      ? `${f(v / 1e6)}M`
      : Math.abs(v) >= 1e3
        ? `${f(v / 1e3)}k`
        : Number.isInteger(v)
          ? String(v)
          : f(v);

export interface LogLogSeries {
  name: string;
  /** [x, y] with x, y > 0 (others are left out). */
  points: Array<[number, number]>;
}
export interface FitLine {
  name: string;
  /** log10 y = intercept - exponent * log10 x */
  exponent: number;
  intercept: number;
  /** x range drawn. */
  from: number;
  to: number;
}

export function logLogScatter(o: {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LogLogSeries[];
  fits?: FitLine[];
}): string {
  const pts = o.series.map((s) => s.points.filter(([x, y]) => x > 0 && y > 0));
  const xs = pts.flat().map(([x]) => Math.log10(x));
  const ys = pts.flat().map(([, y]) => Math.log10(y));
  const x0 = xs.length ? Math.floor(Math.min(...xs)) : 0;
  const x1 = xs.length ? Math.max(Math.ceil(Math.max(...xs)), x0 + 1) : 1;
  const y0 = ys.length ? Math.floor(Math.min(...ys)) : 0;
  const y1 = ys.length ? Math.max(Math.ceil(Math.max(...ys)), y0 + 1) : 1;
  const X = (lx: number) => M.left + ((lx - x0) / (x1 - x0)) * PW;
  const Y = (ly: number) => M.top + PH - ((ly - y0) / (y1 - y0)) * PH;
  const body: string[] = [];
  for (const e of decadeTicks(x0, x1))
    body.push(`<text x="${f(X(e))}" y="${M.top + PH + 15}" text-anchor="middle">${tickLabel(10 ** e)}</text>`);
  for (const e of decadeTicks(y0, y1))
    body.push(`<text x="${M.left - 5}" y="${f(Y(e) + 4)}" text-anchor="end">${tickLabel(10 ** e)}</text>`);
  pts.forEach((ps, i) => {
    const c = COLORS[i % COLORS.length];
    for (const [x, y] of ps)
      body.push(`<circle class="point" cx="${f(X(Math.log10(x)))}" cy="${f(Y(Math.log10(y)))}" r="2" fill="${c}"/>`);
  });
  (o.fits ?? []).forEach((l, i) => {
    const a = Math.log10(l.from);
    const b = Math.log10(l.to);
    const ya = l.intercept - l.exponent * a;
    const yb = l.intercept - l.exponent * b;
    body.push(
      `<line class="fit" x1="${f(X(a))}" y1="${f(Y(ya))}" x2="${f(X(b))}" y2="${f(Y(yb))}" stroke="${COLORS[i % COLORS.length]}" stroke-dasharray="4 3"/>`,
    );
  });
  body.push(...legend([...o.series.map((s) => s.name), ...(o.fits ?? []).map((l) => l.name)]));
  return frame(o.title, body, o.xLabel, o.yLabel);
}

export function lineChart(o: {
  title: string;
  xLabel: string;
  yLabel: string;
  /** x labels, one per point (shown at most 8). */
  labels: string[];
  series: Array<{ name: string; values: number[] }>;
}): string {
  const n = o.labels.length;
  const all = o.series.flatMap((s) => s.values);
  const hi = Math.max(1, ...all);
  const X = (i: number) => M.left + (n <= 1 ? PW / 2 : (i / (n - 1)) * PW);
  const Y = (v: number) => M.top + PH - (v / hi) * PH;
  const body: string[] = [];
  const every = Math.max(1, Math.ceil(n / 8));
  for (let i = 0; i < n; i += every)
    body.push(`<text x="${f(X(i))}" y="${M.top + PH + 15}" text-anchor="middle">${esc(o.labels[i])}</text>`);
  for (const t of linearTicks(0, hi))
    body.push(`<text x="${M.left - 5}" y="${f(Y(t) + 4)}" text-anchor="end">${tickLabel(t)}</text>`);
  o.series.forEach((s, k) => {
    const pts = s.values.map((v, i) => `${f(X(i))},${f(Y(v))}`).join(' ');
    body.push(`<polyline class="line" points="${pts}" fill="none" stroke="${COLORS[k % COLORS.length]}"/>`);
  });
  body.push(...legend(o.series.map((s) => s.name)));
  return frame(o.title, body, o.xLabel, o.yLabel);
}

export function histogram(o: {
  title: string;
  xLabel: string;
  yLabel: string;
  labels: string[];
  series: Array<{ name: string; values: number[] }>;
}): string {
  const n = o.labels.length;
  const k = Math.max(1, o.series.length);
  const hi = Math.max(1, ...o.series.flatMap((s) => s.values));
  const slot = PW / Math.max(1, n);
  const bw = (slot * 0.8) / k;
  const Y = (v: number) => M.top + PH - (v / hi) * PH;
  const body: string[] = [];
  for (let i = 0; i < n; i++)
    body.push(
      `<text x="${f(M.left + slot * (i + 0.5))}" y="${M.top + PH + 15}" text-anchor="middle">${esc(o.labels[i])}</text>`,
    );
  for (const t of linearTicks(0, hi))
    body.push(`<text x="${M.left - 5}" y="${f(Y(t) + 4)}" text-anchor="end">${tickLabel(t)}</text>`);
  o.series.forEach((s, j) => {
    for (let i = 0; i < n; i++) {
      const v = s.values[i] ?? 0;
      const x = M.left + slot * i + slot * 0.1 + bw * j;
      body.push(
        `<rect class="bar" x="${f(x)}" y="${f(Y(v))}" width="${f(bw)}" height="${f(M.top + PH - Y(v))}" fill="${COLORS[j % COLORS.length]}"><title>${esc(`${s.name} ${o.labels[i]}: ${v}`)}</title></rect>`,
      );
    }
  });
  body.push(...legend(o.series.map((s) => s.name)));
  return frame(o.title, body, o.xLabel, o.yLabel);
}

/** A matrix of shares in [0, 1] (null: no value), white (0) to dark red (1). */
export function heatMatrix(o: {
  title: string;
  rowLabel: string;
  colLabel: string;
  labels: string[];
  matrix: Array<Array<number | null>>;
}): string {
  const n = o.labels.length;
  const cell = Math.min(PW, PH) / Math.max(1, n);
  const body: string[] = [];
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      const v = o.matrix[r]?.[c];
      const fill =
        v === null || v === undefined
          ? '#ccc'
          : `rgb(${255 - Math.round(v * 116)},${Math.round(255 * (1 - v))},${Math.round(255 * (1 - v))})`;
      body.push(
        `<rect class="cell" x="${f(M.left + c * cell)}" y="${f(M.top + r * cell)}" width="${f(cell)}" height="${f(cell)}" fill="${fill}"><title>${esc(`${o.labels[r]} from ${o.labels[c]}: ${v === null || v === undefined ? '-' : f(v)}`)}</title></rect>`,
      );
    }
  }
  if (n <= 24) {
    for (let i = 0; i < n; i++)
      body.push(
        `<text x="${M.left - 4}" y="${f(M.top + (i + 0.5) * cell + 4)}" text-anchor="end" font-size="8">${esc(o.labels[i])}</text>`,
      );
  }
  body.push(`<text x="${W - M.right + 10}" y="${M.top + 10}">white 0, red 1</text>`);
  return frame(o.title, body, o.colLabel, o.rowLabel);
}
