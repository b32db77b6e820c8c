import { StrataError } from '../util/errors.js';
import type { Backend } from './backend.js';
import { type IndexEntry, sha256hex } from './blob-index.js';
import { decodeInto } from './blob-reader.js';
import { type PackEntry, packKey, parsePackHeader, parsePackTrailer, TRAILER_BYTES } from './pack.js';
import type { BufferPool } from './zstd-into.js';

/**
 * Checking a store: re-read every pack the index names, as restic's checker does. Each
 * problem is a finding of its own kind (a discriminated union on `kind`), so a program can
 * tell a missing pack from a damaged byte without parsing messages; `describeFinding`
 * gives the one-line text `strata verify` prints.
 *
 * Everything except `orphan-pack` loses data or makes a read fail. An orphan pack (one no
 * index file names: a killed writer's, or one prune had not yet deleted) is harmless: no
 * reader sees it, and the next prune removes it.
 */
export type StoreFinding =
  /** An index entry names a pack that is not in the store. */
  | { kind: 'missing-pack'; blob: string; pack: string }
  /** A pack's bytes do not hash to its name. */
  | { kind: 'pack-name-mismatch'; pack: string; sha256: string }
  /** A pack that cannot be read or whose header and trailer do not parse. */
  | { kind: 'unreadable-pack'; pack: string; message: string }
  /** A frame that does not decode to the length its header gives; `blobs` are the ones in it. */
  | { kind: 'undecodable-frame'; pack: string; offset: number; blobs: string[]; message: string }
  /** A blob whose bytes (frame decoded) do not hash to its digest. */
  | { kind: 'digest-mismatch'; pack: string; blob: string; offset: number }
  /** An index entry whose frame runs past the end of its pack. */
  | { kind: 'index-past-pack-end'; blob: string; pack: string; end: number; packSize: number }
  /** An index entry naming a pack whose header does not list that blob. */
  | { kind: 'blob-not-in-pack'; blob: string; pack: string }
  /** The index and the pack's header place a blob differently. */
  | { kind: 'index-mismatch'; blob: string; pack: string }
  /** A pack no index file names (harmless). */
  | { kind: 'orphan-pack'; pack: string; bytes: number };

export type StoreFindingKind = StoreFinding['kind'];

export interface VerifyReport {
  packs: number;
  blobs: number;
  bytes: number;
  /** Every finding, in the order found. */
  findings: StoreFinding[];
  /** The findings that lose data, as the lines `strata verify` prints (describeFinding). */
  errors: string[];
  /** Harmless leftovers: packs no index names (a killed writer's), removed by gc. */
  orphanPacks: string[];
}

/** Whether a finding leaves the store intact (only orphan packs do). */
export const harmless = (f: StoreFinding): boolean => f.kind === 'orphan-pack';

/** One line for a finding; `store` is the store's name (its directory or bucket). */
export function describeFinding(f: StoreFinding, store: string): string {
  switch (f.kind) {
    case 'missing-pack':
      return `blob ${f.blob}: its pack ${f.pack} is missing`;
    case 'pack-name-mismatch':
      return `pack ${f.pack}: content does not match its name (sha256)`;
    case 'unreadable-pack':
      return `pack ${f.pack}: ${f.message}`;
    case 'undecodable-frame':
      return `${f.message} (blobs ${f.blobs.map((d) => d.slice(0, 16)).join(', ')})`;
    case 'digest-mismatch':
      return `blob ${f.blob} in ${store}/${packKey(f.pack)} at ${f.offset}: content does not match its sha256 (damaged pack)`;
    case 'index-past-pack-end':
    case 'blob-not-in-pack':
    case 'index-mismatch':
      return `blob ${f.blob}: the index and pack ${f.pack} disagree on where it is`;
    case 'orphan-pack':
      return `pack ${f.pack}: no index names it (orphan, removed by gc)`;
  }
}

/** The entries of a whole pack held in memory (either format). */
export function readPackEntries(body: Uint8Array, file: string): PackEntry[] {
  if (body.length < TRAILER_BYTES) {
    throw new StrataError('TRUNCATED', 'pack shorter than its trailer', { file, structure: 'pack trailer' });
  }
  const { version, headerBytes } = parsePackTrailer(body.subarray(body.length - TRAILER_BYTES), body.length, file);
  const blobArea = body.length - TRAILER_BYTES - headerBytes;
  return parsePackHeader(body.subarray(blobArea, blobArea + headerBytes), blobArea, file, version);
}

/** What is wrong with index entry `e` of a pack of `size` bytes whose header places the blob at `en` (absent: not there). */
function placement(blob: string, e: IndexEntry, en: PackEntry | undefined, size: number): StoreFinding | undefined {
  if (e.offset + e.encLength > size) {
    return { kind: 'index-past-pack-end', blob, pack: e.pack, end: e.offset + e.encLength, packSize: size };
  }
  if (!en) return { kind: 'blob-not-in-pack', blob, pack: e.pack };
  if (
    en.offset !== e.offset ||
    en.encLength !== e.encLength ||
    en.at !== e.at ||
    en.plainLength !== e.plainLength ||
    en.framePlain !== e.framePlain
  ) {
    return { kind: 'index-mismatch', blob, pack: e.pack };
  }
  return undefined;
}

/**
 * Re-read every pack: its name is the sha256 of its bytes, its header parses, every frame
 * decodes, every blob in it hashes to its digest, and every index entry points at a
 * pack that holds that blob where the index says.
 */
export async function checkStore(
  backend: Backend,
  index: ReadonlyMap<string, IndexEntry>,
  pool: BufferPool,
  onPack?: (done: number, total: number) => void,
): Promise<VerifyReport> {
  const name = backend.name;
  const findings: StoreFinding[] = [];
  const report: VerifyReport = { packs: 0, blobs: 0, bytes: 0, findings, errors: [], orphanPacks: [] };
  const packs = await backend.list('packs/');
  /** Index entries naming each pack. */
  const indexed = new Map<string, number>();
  for (const e of index.values()) indexed.set(e.pack, (indexed.get(e.pack) ?? 0) + 1);
  const present = new Set<string>();
  // Packs read (their size); findings about index entries, made while their pack was read,
  // reported in index order below. A pack's blobs are kept past its reading only when some
  // index entries naming it were not among them (damage): at a million blobs, keeping every
  // pack's contents for the final pass held ~250 MB.
  const sizes = new Map<string, number>();
  const placed = new Map<string, StoreFinding>();
  const short = new Map<string, Set<string>>();
  let done = 0;
  for (const f of packs) {
    const id = f.key.split('/').pop() as string;
    present.add(id);
    onPack?.(++done, packs.length);
    if (!indexed.has(id)) {
      findings.push({ kind: 'orphan-pack', pack: id, bytes: f.size });
      continue;
    }
    report.packs++;
    report.bytes += f.size;
    try {
      const body = await backend.get(f.key);
      const sha256 = sha256hex(body);
      if (sha256 !== id) findings.push({ kind: 'pack-name-mismatch', pack: id, sha256 });
      const entries = readPackEntries(body, `${name}/${f.key}`);
      const m = new Map<string, PackEntry>();
      let i = 0;
      while (i < entries.length) {
        // one frame: the entries that share its offset
        const first = entries[i];
        let j = i;
        while (j < entries.length && entries[j].offset === first.offset) j++;
        const scratch = pool.take(first.framePlain);
        try {
          let decoded = true;
          try {
            decodeInto(
              scratch,
              body.subarray(first.offset, first.offset + first.encLength),
              first.flags,
              first.framePlain,
              `${name}/${f.key}`,
              first.offset,
            );
          } catch (e) {
            decoded = false;
            findings.push({
              kind: 'undecodable-frame',
              pack: id,
              offset: first.offset,
              blobs: entries.slice(i, j).map((x) => x.digest),
              message: (e as Error).message,
            });
          }
          for (const en of entries.slice(i, j)) {
            m.set(en.digest, en);
            report.blobs++;
            if (decoded && sha256hex(scratch.subarray(en.at, en.at + en.plainLength)) !== en.digest) {
              findings.push({ kind: 'digest-mismatch', pack: id, blob: en.digest, offset: en.offset });
            }
          }
        } finally {
          pool.give(scratch);
        }
        i = j;
      }
      sizes.set(id, body.length);
      let named = 0;
      for (const [digest, en] of m) {
        const e = index.get(digest);
        if (e?.pack !== id) continue;
        named++;
        const f = placement(digest, e, en, body.length);
        if (f) placed.set(digest, f);
      }
      if (named < (indexed.get(id) ?? 0)) short.set(id, new Set(m.keys()));
    } catch (e) {
      findings.push({ kind: 'unreadable-pack', pack: id, message: (e as Error).message });
    }
  }
  for (const [digest, e] of index) {
    if (!present.has(e.pack)) {
      findings.push({ kind: 'missing-pack', blob: digest, pack: e.pack });
      continue;
    }
    const size = sizes.get(e.pack);
    if (size === undefined) continue; // unreadable: reported above
    const f = placed.get(digest) ?? (short.get(e.pack)?.has(digest) === false && placement(digest, e, undefined, size));
    if (f) findings.push(f);
  }
  for (const f of findings) {
    if (f.kind === 'orphan-pack') report.orphanPacks.push(f.pack);
    else report.errors.push(describeFinding(f, name));
  }
  return report;
}
