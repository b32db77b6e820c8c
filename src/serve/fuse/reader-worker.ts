import { readSync, writeSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { ListingEndsView } from './listing-ends.js';
import { IN_HEADER, Op, OUT_HEADER } from './protocol.js';

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
const empty = Buffer.alloc(OUT_HEADER);
empty.writeUInt32LE(OUT_HEADER, 0);
let why = 'unmounted';
// started before the mount exists (its start-up overlaps mount(8)): reads once told to
port.once('message', () => {
  loop();
  port.postMessage({ end: why });
});

function loop(): void {
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, bufferSize, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted before we read it; EINTR/EAGAIN: try again
      if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
      if (code !== 'ENODEV') why = `read /dev/fuse: ${(e as Error).message}`;
      break;
    }
    if (n <= 0) break;
    if (table && n >= IN_HEADER + 24 && answerEnd(n)) continue;
    const msg = new Uint8Array(n);
    msg.set(buf.subarray(0, n));
    port.postMessage(msg, [msg.buffer]);
  }
}

/** A READDIR at or past the known end of its directory's listing: the empty reply, written here. */
function answerEnd(n: number): boolean {
  const op = buf.readUInt32LE(4);
  if (op !== Op.READDIR && op !== Op.READDIRPLUS) return false;
  if (buf.readUInt32LE(0) > n) return false;
  const count = table?.get(buf.readBigUInt64LE(16));
  if (count === undefined || Number(buf.readBigUInt64LE(IN_HEADER + 8)) < count) return false;
  buf.copy(empty, 8, 8, 16); // the request's unique
  try {
    writeSync(fd, empty);
  } catch {
    return false; // let the main thread answer (or meet the error) as before
  }
  table?.answered();
  return true;
}
