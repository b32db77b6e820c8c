/**
 * A child process for the prune memory test: `node prune-memory-child.js STORE N BUDGET`
 * prunes STORE (made by test/store/prune-memory.test.ts: blob i holds blobBytes(i)) keeping
 * the blobs `isLive(i)` picks, with the memory guard on at BUDGET bytes as the CLI's
 * `--memory` sets it, marking them as gc does (a bit per index entry). Prints the result and
 * the process's peak RSS as JSON.
 */
import { createHash } from 'node:crypto';
import { LocalBackend } from '../../src/store/local-backend.js';
import { Store } from '../../src/store/store.js';
import { memoryBudget, setMemoryBudget } from '../../src/util/memory.js';
import { blobBytes, isLive } from './prune-memory-blobs.js';

const [root, nText, budgetText] = process.argv.slice(2);
setMemoryBudget(Number(budgetText), true);
const store = await Store.open(new LocalBackend(root));
const marks = store.marks();
for (let i = 0; i < Number(nText); i++) {
  if (isLive(i, Number(nText))) marks.mark(createHash('sha256').update(blobBytes(i)).digest('hex'));
}
store.setWriteBudget(memoryBudget() / 2);
const r = await store.prune(marks);
await store.close();
process.stdout.write(
  `${JSON.stringify({ ...r, marked: marks.size, maxRSS: process.resourceUsage().maxRSS * 1024 })}\n`,
);
