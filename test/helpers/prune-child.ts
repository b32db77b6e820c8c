/**
 * A child process for the prune kill test: `node prune-child.js STORE LIVE_JSON KILL_AT`
 * prunes STORE keeping the digests listed in the file LIVE_JSON, and SIGKILLs itself just
 * before its KILL_AT-th change to the store (put, putIfAbsent or delete; 0: never). It
 * prints the number of changes it made when it finishes.
 */
import { readFileSync } from 'node:fs';
import type { Backend } from '../../src/store/backend.js';
import { LocalBackend } from '../../src/store/local-backend.js';
import { Store } from '../../src/store/store.js';

const [root, liveFile, killAtText] = process.argv.slice(2);
const killAt = Number(killAtText);
const live = new Set(JSON.parse(readFileSync(liveFile, 'utf8')) as string[]);
const inner = new LocalBackend(root);
let changes = 0;
const CHANGES = new Set(['put', 'putIfAbsent', 'delete']);
const backend = new Proxy(inner, {
  get(target, key, receiver) {
    const v = Reflect.get(target, key, receiver);
    if (typeof v !== 'function') return v;
    if (!CHANGES.has(String(key))) return v.bind(target);
    return async (...args: unknown[]) => {
      if (++changes === killAt) {
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => {}); // the signal is on its way
      }
      return v.apply(target, args);
    };
  },
}) as Backend;
const store = await Store.open(backend);
await store.prune(live);
await store.close();
process.stdout.write(`${JSON.stringify({ changes })}\n`);
