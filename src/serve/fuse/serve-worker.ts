import { parentPort, workerData } from 'node:worker_threads';
import { setMemoryBudget } from '../../util/memory.js';
import { openMountTree } from './index.js';
import { FuseSession, type ServeMessage, type ServeWorkerData } from './session.js';

/**
 * The serving thread of a read-only image mount (FuseSession given a ReaderTree): it opens the
 * image (saying `opened` or `error` before the main thread mounts), then, once told the mount
 * is there, reads each request from /dev/fuse, answers it and writes the reply itself: no hop
 * to the main thread and back, no second thread woken per request (a walk is one round trip
 * per directory, a tar one per file: the hop was a fifth of the server's CPU). Ends when the
 * kernel ends the connection; the tree is closed before `end` is said.
 */
const data = workerData as ServeWorkerData;
const maybe = parentPort;
if (!maybe) throw new Error('serve-worker runs as a worker thread');
const port = maybe;
const say = (m: ServeMessage) => port.postMessage(m);
setMemoryBudget(data.memoryBudget, false);

async function main(): Promise<void> {
  let opened: Awaited<ReturnType<typeof openMountTree>>;
  try {
    opened = await openMountTree(data.tree.image, data.tree.options);
    if (opened.kind !== 'image') {
      await opened.tree.close();
      throw new Error(`${data.tree.image} is not an image file`);
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    say({ error: { code: typeof err.code === 'string' ? err.code : 'IO', message: err.message } });
    return;
  }
  const { tree } = opened;
  const session = new FuseSession(
    tree,
    data.mountpoint,
    { ...data.opts, onWarning: (m) => say({ warn: m }) },
    data.shared,
  );
  let root: Awaited<ReturnType<typeof tree.root>>;
  try {
    root = await tree.root();
  } catch (e) {
    await tree.close().catch(() => {});
    const err = e as Error & { code?: string };
    say({ error: { code: typeof err.code === 'string' ? err.code : 'IO', message: err.message } });
    return;
  }
  for (const w of opened.warnings) say({ warn: w });
  say({ opened: tree.name });
  await new Promise((r) => port.once('message', r));
  let why: string;
  try {
    why = await session.serveOn(data.fd, root, () => say({ init: true }));
  } catch (e) {
    why = `serving thread failed: ${(e as Error).message}`;
  }
  await tree.close().catch(() => {});
  say({ end: why });
}

main();
