/**
 * The service memory keeper (src/serve/keep-memory.ts): with the budget not enforced (a
 * service without --memory), buffers past 80% of it bring a full collection, the C heap is
 * trimmed each second where the addon is built, and V8's young generation stops growing at
 * 4 MiB however many objects survive. node --test runs this file in its own process, so the
 * V8 flag the keeper sets touches nothing else.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { getHeapSpaceStatistics } from 'node:v8';
import { trimHeap } from '../../src/io/native.js';
import { keepServiceMemory, keptStats, stopKeepingServiceMemory } from '../../src/serve/keep-memory.js';
import { resetMemoryBudget, setMemoryBudget } from '../../src/util/memory.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const youngSize = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;

test('the keeper collects past 80% of an unenforced budget, trims, and stops the young generation', async () => {
  setMemoryBudget(64 << 20, false);
  keepServiceMemory();
  try {
    assert.equal(keptStats.collections, 0);
    // 60 MiB of buffers held: past 80% of 64 MiB, which no guard would act on (not enforced)
    let held: Buffer[] | undefined = Array.from({ length: 60 }, () => Buffer.alloc(1 << 20, 1));
    await until('a collection', () => keptStats.collections >= 1);
    assert.equal(held.length, 60);
    held = undefined;
    const trims = trimHeap(); // the addon and the C library can trim here
    if (trims) await until('a trim', () => keptStats.trims >= 1, 3000);
    // objects that survive scavenges make V8 grow its young generation (to 16 MiB semi-spaces)
    const keep: object[][] = [];
    for (let round = 0; round < 40; round++) {
      keep.push(Array.from({ length: 50_000 }, (_, i) => ({ i, s: `x${i}` })));
      if (round % 8 === 7) await sleep(300);
    }
    await until('the young generation stopped', () => keptStats.youngStopped);
    const stoppedAt = youngSize();
    for (let round = 0; round < 40; round++) keep.push(Array.from({ length: 50_000 }, (_, i) => ({ i, s: `y${i}` })));
    await sleep(300);
    assert.ok(keep.length === 80);
    assert.ok(youngSize() <= Math.max(stoppedAt, 4 << 20), `young generation ${youngSize()} grew past ${stoppedAt}`);
  } finally {
    stopKeepingServiceMemory();
    resetMemoryBudget();
  }
});
