/**
 * Small output helpers shared by commands.
 *
 * The `--json` convention (README, "Output"): a command that reports one thing prints one
 * JSON document (printJson); a command that lists records (ls, map, blockmap, whatis, trace,
 * search, images, versions, inspect) prints JSON Lines, one compact object per line
 * (printJsonLines / writeOut), so `| head` and line tools work and nothing is held back.
 */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printJsonLine(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Records as JSON Lines, waiting for the pipe to drain. */
export function printJsonLines(values: Iterable<unknown>): Promise<void> {
  return printLines(values, (v) => JSON.stringify(v));
}

/** One line per value as `line` makes it, written in 64 KiB batches, waiting for the pipe to drain. */
export async function printLines<T>(values: Iterable<T>, line: (v: T) => string): Promise<void> {
  let buf = '';
  for (const v of values) {
    buf += `${line(v)}\n`;
    if (buf.length >= 1 << 16) {
      await writeOut(buf);
      buf = '';
    }
  }
  if (buf) await writeOut(buf);
}

/** The status the command asks main() to exit with (diff: 1 when different; search: 1 when none). */
let status = 0;
export function setExitStatus(n: number): void {
  status = n;
}
export function exitStatus(): number {
  return status;
}

/**
 * A warning on stderr, once per kind. A warning's kind is its innermost cause: the text
 * after the last ": " (the names of the image, volume, path and structure come first, what
 * went wrong last), before any "; " remark, with numbers taken out. So one unreadable file
 * system reported by the check-in and again by its inspection, or one refused device node
 * per file, prints the first message only; finishWarnings() then says how many others of a
 * kind already shown were held back (a repeat of the same text is not counted).
 */
const seenKinds = new Map<string, Set<string>>();
let hidden = 0;
export function warn(message: string): void {
  const kind = warningKind(message);
  const seen = seenKinds.get(kind);
  if (seen === undefined) {
    seenKinds.set(kind, new Set([message]));
    process.stderr.write(`strata: warning: ${message}\n`);
  } else if (!seen.has(message) && !sameVolumeCause(seen, message)) {
    seen.add(message);
    hidden++;
  }
}

/** The same volume (by its "[part N]" or "volume N" name) with the same cause: the same warning told twice. */
function sameVolumeCause(seen: Set<string>, message: string): boolean {
  const vol = volumeOf(message);
  if (vol === undefined) return false;
  for (const m of seen) if (volumeOf(m) === vol) return true;
  return false;
}
const volumeOf = (m: string) =>
  /\[part ([^\]]+)\]|volume ([\w./-]+)/
    .exec(m)
    ?.slice(1)
    .find((x) => x !== undefined);

export function warnAll(messages: Iterable<string>): void {
  for (const m of messages) warn(m);
}

/** One line for the warnings warn() kept back (call once, at the end of a command). */
export function finishWarnings(): void {
  if (hidden > 0) process.stderr.write(`strata: warning: ${hidden} more warnings like those above not shown\n`);
  hidden = 0;
}

/** What makes two warnings one kind: the innermost cause, without numbers. */
export function warningKind(message: string): string {
  const cause = message.slice(message.lastIndexOf(': ') + 1).split('; ')[0];
  return cause.trim().replace(/\d+/g, '#');
}
/** The file counts of a diff, one line: `strata diff` and each step of `strata log` print this. */
export function filesSummaryLine(s: {
  added: number;
  removed: number;
  changed: number;
  metadata: number;
  bytesAdded: number;
  bytesRemoved: number;
  bytesChanged: number;
}): string {
  return `files: ${s.added} added (${s.bytesAdded} bytes), ${s.removed} removed (${s.bytesRemoved} bytes), ${s.changed} changed (${s.bytesChanged} bytes), ${s.metadata} metadata only`;
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
