import { parentPort, workerData } from 'node:worker_threads';
import { ListingEndsView, readRequestPastEnds } from './listing-ends.js';

/**
 * The blocking read loop of /dev/fuse, on its own thread (never libuv's pool, which the
 * server's own file reads need): each request the kernel hands over is posted to the main
 * thread, which answers with write(2) on the same descriptor. The loop ends when the file
 * system is unmounted (ENODEV) or the connection is aborted.
 *
 * One request is answered here, without the hop to the main thread: the READDIR past the end
 * of a listing the main thread has already handed out whole (read-only mounts). The kernel
 * learns a listing's end only from an empty reply, so every directory walked costs this
 * second request; the main thread writes each finished listing's length into `ends` (shared
 * memory, see ListingEndsView) before it replies, so the kernel's follow-up finds it there.
 */
const { fd, bufferSize, ends } = workerData as { fd: number; bufferSize: number; ends?: SharedArrayBuffer };
const maybe = parentPort;
if (!maybe) throw new Error('reader-worker runs as a worker thread');
const port = maybe;
const buf = Buffer.allocUnsafe(bufferSize);
const table = ends ? new ListingEndsView(ends) : undefined;
// started before the mount exists (its start-up overlaps mount(8)): reads once told to
port.once('message', () => port.postMessage({ end: loop() }));

function loop(): string {
  for (;;) {
    const n = readRequestPastEnds(fd, buf, table);
    if (typeof n === 'string') return n;
    const msg = new Uint8Array(n);
    msg.set(buf.subarray(0, n));
    port.postMessage(msg, [msg.buffer]);
  }
}
