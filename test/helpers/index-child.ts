/**
 * `node --expose-gc index-child.js STORE` opens the local store at STORE and checks its
 * index against the index files themselves (plain JSON, read here, not through the store's
 * loader): every blob's entry as the first file listing it says, absent digests absent,
 * iteration complete. Prints JSON: the blobs, mismatches, and the ArrayBuffer and heap
 * bytes the open added (after a full GC), which the test bounds.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { LocalBackend } from '../../src/store/local-backend.js';
import { Store } from '../../src/store/store.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
const root = process.argv[2];
gc();
const before = process.memoryUsage();
const store = await Store.open(new LocalBackend(root));
// the index files' buffers are freed by a full GC after a turn of the event loop
await new Promise((r) => setTimeout(r, 100));
gc();
gc();
const after = process.memoryUsage();
const files = readdirSync(path.join(root, 'index')).sort();
const seen = new Set<string>();
let blobs = 0;
let mismatches = 0;
for (const f of files) {
  const ix = JSON.parse(readFileSync(path.join(root, 'index', f), 'utf8')) as {
    packs: Array<{ id: string; blobs: Array<[string, string, number, number, number, number, number, number]> }>;
  };
  for (const p of ix.packs) {
    for (const [d, type, offset, encLength, framePlain, at, plainLength, flags] of p.blobs) {
      if (seen.has(d)) continue;
      seen.add(d);
      blobs++;
      const e = store.entry(d);
      const want = { pack: p.id, type, offset, encLength, framePlain, at, plainLength, flags };
      if (!e || JSON.stringify(Object.entries(e).sort()) !== JSON.stringify(Object.entries(want).sort())) mismatches++;
      if (!store.has(d)) mismatches++;
    }
  }
}
let absentFound = 0;
for (let i = 0; i < 20_000; i++) {
  const d = createHash('sha256').update(`absent ${i}`).digest('hex');
  if (store.has(d) || store.entry(d)) absentFound++;
}
let iterated = 0;
for (const [d] of store.entries()) if (seen.has(d)) iterated++;
console.log(
  JSON.stringify({
    blobs,
    size: store.entries().size,
    iterated,
    mismatches,
    absentFound,
    arrayBuffers: after.arrayBuffers - before.arrayBuffers,
    heap: after.heapUsed - before.heapUsed,
  }),
);
await store.close();
