import { readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

/**
 * The blocking read loop of /dev/fuse, on its own thread (never libuv's pool, which the
 * server's own file reads need): each request the kernel hands over is posted to the main
 * thread, which answers with write(2) on the same descriptor. The loop ends when the file
 * system is unmounted (ENODEV) or the connection is aborted.
 */
const { fd, bufferSize } = workerData as { fd: number; bufferSize: number };
const maybe = parentPort;
if (!maybe) throw new Error('reader-worker runs as a worker thread');
const port = maybe;
const buf = Buffer.allocUnsafe(bufferSize);
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
    const msg = new Uint8Array(n);
    msg.set(buf.subarray(0, n));
    port.postMessage(msg, [msg.buffer]);
  }
}
