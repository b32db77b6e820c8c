/**
 * A check-in in a process of its own, for tests that assert its peak RSS:
 * `node checkin-child.js LIBRARY IMAGE NAME MEMORY_BYTES` checks IMAGE in (exact)
 * with that memory budget and prints one JSON line: the result and
 * process.resourceUsage().maxRSS in bytes. The budget is set process-wide first, as the
 * CLI's --memory does (the file-system readers size their caches from it).
 */
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import { setMemoryBudget } from '../../src/util/memory.js';

const [dir, image, name, memory] = process.argv.slice(2);
// the process-wide budget too, as `strata checkin --memory` sets it: it sizes the file-system caches
setMemoryBudget(Number(memory));
const lib = await Library.open(dir);
try {
  const r = await checkin(lib, image, { name, exact: true, memoryBytes: Number(memory) });
  const maxRSS = process.resourceUsage().maxRSS * 1024;
  process.stdout.write(`${JSON.stringify({ ref: r.ref, manifest: r.manifest, volumes: r.volumes, maxRSS })}\n`);
} finally {
  await lib.close();
}
