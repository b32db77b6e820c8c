/**
 * Prometheus text exposition (format 0.0.4) of the service: requests by method, route
 * and status, a latency histogram by route, bytes in and out, and gauges the caller
 * supplies at scrape time (store and catalog sizes).
 */
const BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

export class Metrics {
  private readonly requests = new Map<string, number>();
  private readonly latency = new Map<string, { counts: number[]; sum: number; n: number }>();
  private bytesIn = 0;
  private bytesOut = 0;

  observe(method: string, route: string, status: number, seconds: number, bytesIn: number, bytesOut: number): void {
    const k = `method="${esc(method)}",route="${esc(route)}",status="${status}"`;
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
    const r = `route="${esc(route)}"`;
    let h = this.latency.get(r);
    if (!h) this.latency.set(r, (h = { counts: BUCKETS.map(() => 0), sum: 0, n: 0 }));
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]) h.counts[i]++;
    h.sum += seconds;
    h.n++;
    if (Number.isFinite(bytesIn)) this.bytesIn += bytesIn;
    if (Number.isFinite(bytesOut)) this.bytesOut += bytesOut;
  }

  /** The text, with the gauges and `extra` lines (whole families, HELP and TYPE included) after the counters. */
  render(gauges: Record<string, number>, extra: string[] = []): string {
    const out: string[] = [];
    out.push('# HELP strata_http_requests_total HTTP requests by method, route and status.');
    out.push('# TYPE strata_http_requests_total counter');
    for (const [k, v] of this.requests) out.push(`strata_http_requests_total{${k}} ${v}`);
    out.push('# HELP strata_http_request_duration_seconds Request latency by route.');
    out.push('# TYPE strata_http_request_duration_seconds histogram');
    for (const [r, h] of this.latency) {
      for (let i = 0; i < BUCKETS.length; i++) {
        out.push(`strata_http_request_duration_seconds_bucket{${r},le="${BUCKETS[i]}"} ${h.counts[i]}`);
      }
      out.push(`strata_http_request_duration_seconds_bucket{${r},le="+Inf"} ${h.n}`);
      out.push(`strata_http_request_duration_seconds_sum{${r}} ${h.sum}`);
      out.push(`strata_http_request_duration_seconds_count{${r}} ${h.n}`);
    }
    out.push('# HELP strata_http_bytes_in_total Request body bytes received.');
    out.push('# TYPE strata_http_bytes_in_total counter');
    out.push(`strata_http_bytes_in_total ${this.bytesIn}`);
    out.push('# HELP strata_http_bytes_out_total Response body bytes sent.');
    out.push('# TYPE strata_http_bytes_out_total counter');
    out.push(`strata_http_bytes_out_total ${this.bytesOut}`);
    for (const [name, v] of Object.entries(gauges)) {
      out.push(`# TYPE ${name} gauge`);
      out.push(`${name} ${v}`);
    }
    out.push(...extra);
    return `${out.join('\n')}\n`;
  }
}
