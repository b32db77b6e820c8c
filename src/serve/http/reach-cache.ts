import { DigestSet } from '../../library/digest-set.js';
import type { Library } from '../../library/library.js';
import { reachable } from '../../library/library-verbs.js';
import { memoryShare } from '../../util/memory.js';

/**
 * The blobs each version's manifest reaches (its layout, parts, chunks and file manifests),
 * as the service asks for them: which blobs a caller holds (through the versions it may
 * read), what a commit adds that no other version needs, the storage figures. Callers take
 * them one at a time (`each`), never as a set of their own: a manifest is content-addressed,
 * so its set never goes stale, and what bounds the cache is memory: sets are kept least
 * recently used first out, weighed by their bytes (~40 a blob), within `maxBytes` (by default
 * a quarter of the memory budget, 8 MiB to 512 MiB). A miss walks the manifest again
 * (`reachable`), handing each blob to the caller as it is found and collecting them only
 * while the set still fits the cache: a version whose set is larger than the whole cache (2M
 * files: ~76 MB) is streamed, never held, so a request's memory does not grow with the
 * number of blobs.
 */
export class ReachCache {
  private readonly map = new Map<string, DigestSet>();
  private held = 0;
  /** Counters for /metrics (and the tests). */
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(
    private readonly lib: Library,
    readonly maxBytes = memoryShare(1 / 4, 8 << 20, 512 << 20),
  ) {}

  /** Bytes of the sets kept. */
  get bytes(): number {
    return this.held;
  }

  get entries(): number {
    return this.map.size;
  }

  /**
   * Calls `f` with each blob `manifest` reaches: each once from a kept set; on a walk, as
   * `reachable` finds them (a blob named twice, e.g. a chunk two files share, comes twice).
   */
  async each(manifest: string, f: (digest: string) => void): Promise<void> {
    const kept = this.map.get(manifest);
    if (kept) {
      this.hits++;
      this.map.delete(manifest);
      this.map.set(manifest, kept); // most recent last
      for (const d of kept) f(d);
      return;
    }
    this.misses++;
    let s: DigestSet | undefined = new DigestSet();
    await reachable(this.lib, manifest, {
      add: (d: string) => {
        f(d);
        if (!s) return;
        s.add(d);
        if (s.usedBytes > this.maxBytes) s = undefined; // too large to keep: stream the rest
      },
    });
    if (!s || this.map.has(manifest)) return;
    s.trim();
    const n = s.byteLength;
    if (n > this.maxBytes) return;
    for (const [k, v] of this.map) {
      if (this.held + n <= this.maxBytes) break;
      this.map.delete(k);
      this.held -= v.byteLength;
      this.evictions++;
    }
    this.map.set(manifest, s);
    this.held += n;
  }

  metricLines(): string[] {
    return [
      '# HELP strata_reach_cache_bytes Bytes of the reachable-blob sets the service keeps.',
      '# TYPE strata_reach_cache_bytes gauge',
      `strata_reach_cache_bytes ${this.held}`,
      '# HELP strata_reach_cache_entries Manifests whose reachable-blob sets are kept.',
      '# TYPE strata_reach_cache_entries gauge',
      `strata_reach_cache_entries ${this.map.size}`,
      '# HELP strata_reach_cache_misses_total Reachable-blob sets walked from their manifest.',
      '# TYPE strata_reach_cache_misses_total counter',
      `strata_reach_cache_misses_total ${this.misses}`,
      '# HELP strata_reach_cache_evictions_total Reachable-blob sets dropped to stay within the cache.',
      '# TYPE strata_reach_cache_evictions_total counter',
      `strata_reach_cache_evictions_total ${this.evictions}`,
    ];
  }
}
