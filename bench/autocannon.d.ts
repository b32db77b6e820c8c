/** The part of autocannon's API bench/serve.ts uses (it ships no types). */
declare module 'autocannon' {
  interface Stats {
    average: number;
    total: number;
    p50: number;
    p90: number;
    p99: number;
  }
  interface Result {
    requests: Stats;
    latency: Stats;
    errors: number;
    timeouts: number;
    non2xx: number;
  }
  interface Options {
    url: string | string[];
    workers?: number;
    connections?: number;
    duration?: number;
    /** Requests in all (instead of a duration). */
    amount?: number;
    connectionRate?: number;
    requests?: Array<{ method?: string; path?: string; headers?: Record<string, string> }>;
  }
  /** The run: a promise of its result, and the events of each answer. */
  interface Instance extends Promise<Result> {
    /** An answer; at that moment `client.requestIterator` still points at its request. */
    on(
      event: 'response',
      fn: (
        client: { requestIterator: { currentRequestIndex: number } },
        status: number,
        bytes: number,
        ms: number,
      ) => void,
    ): this;
  }
  export default function autocannon(opts: Options): Instance;
}
