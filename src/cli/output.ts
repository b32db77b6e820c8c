/** Small output helpers shared by commands: JSON lines, human sizes. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printJsonLine(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

export function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]} (${n} bytes)`;
}

/** A broken pipe on stdout: the reader went away (`| head`); stop quietly. */
function epipe(): NodeJS.ErrnoException {
  const e = new Error('EPIPE') as NodeJS.ErrnoException;
  e.code = 'EPIPE';
  return e;
}

let stdoutBroken = false;
let stdoutHooked = false;
function hookStdout(): void {
  if (stdoutHooked) return;
  stdoutHooked = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') stdoutBroken = true;
    else throw e;
  });
}

/** Write `b` to stdout, waiting for the pipe to drain; throws EPIPE once the reader is gone. */
export function writeOut(b: Uint8Array | string): Promise<void> {
  hookStdout();
  if (stdoutBroken) return Promise.reject(epipe());
  if (process.stdout.write(b)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      process.stdout.off('drain', done);
      process.stdout.off('close', done);
      process.stdout.off('error', done);
      if (stdoutBroken || process.stdout.destroyed) reject(epipe());
      else resolve();
    };
    process.stdout.once('drain', done);
    process.stdout.once('close', done);
    process.stdout.once('error', done);
  });
}
