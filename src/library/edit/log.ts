import type { TreeDiff } from '../../inspect/tree-diff.js';
import { StrataError } from '../../util/errors.js';
import type { Library } from '../library.js';
import { diffVersions } from '../version-diff.js';

/**
 * `strata log REF`: the provenance chain of a version, newest first, back to a version with
 * no parent (first parents; merges list their other parents), each step with its message
 * and what it changed against its first parent (a file diff from the manifests, no checkout).
 */
export interface LogStep {
  ref: string;
  created: string;
  createdBy: string | null;
  message: string | null;
  source: string | null;
  parents: string[];
  tags: string[];
  state: 'active' | 'deleted';
  /**
   * Against the first parent: the summary of `strata diff`'s file tree diff itself (one
   * count, not a second one); null for the root (or when the parent cannot be read).
   */
  changes: TreeDiff['summary'] | null;
  warnings: string[];
}

export interface LogOptions {
  /** At most this many steps (default 100). */
  limit?: number;
  /** `--part N`: the file system compared (default as diff chooses). */
  part?: string;
  /**
   * Which images the caller may read (the service's policy): a parent in any other image is
   * left out of `parents`, and the chain stops where the first parent is one (default: all).
   */
  canRead?: (image: string) => Promise<boolean>;
}

export async function versionLog(lib: Library, ref: string, opts: LogOptions = {}): Promise<LogStep[]> {
  const limit = opts.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1)
    throw new StrataError('USAGE', `--limit ${limit} is not a positive integer`);
  const steps: LogStep[] = [];
  const seen = new Set<string>();
  let v = await lib.catalog.resolve(ref);
  for (;;) {
    const here = `${v.image}@${v.number}`;
    if (seen.has(here)) throw new StrataError('LOOP', `provenance of ${ref} loops at ${here}`);
    seen.add(here);
    const step: LogStep = {
      ref: here,
      created: v.created,
      createdBy: v.createdBy,
      message: v.message ?? null,
      source: v.sourceName,
      parents: [],
      tags: v.tags,
      state: v.state,
      changes: null,
      warnings: [],
    };
    const visible = [];
    for (const p of v.parents) if (!opts.canRead || (await opts.canRead(p.image))) visible.push(p);
    step.parents = visible.map((p) => `${p.image}@${p.number}`);
    steps.push(step);
    // the first parent, when the caller may read it (never a second one in its place)
    const first = v.parents[0] && visible.includes(v.parents[0]) ? v.parents[0] : undefined;
    if (!first) break;
    const parent = await lib.catalog.version(first.image, first.number);
    if (!parent) {
      step.warnings.push(`parent ${first.image}@${first.number} is not in the catalog`);
      break;
    }
    try {
      const d = await diffVersions(lib, `${parent.image}@${parent.number}`, here, { part: opts.part });
      step.changes = { ...d.files.summary };
      step.warnings.push(...d.warnings);
    } catch (e) {
      step.warnings.push(`no diff against ${parent.image}@${parent.number}: ${(e as Error).message}`);
    }
    if (steps.length >= limit) break;
    v = parent;
  }
  return steps;
}
