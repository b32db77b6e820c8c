import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { SingleBar } from 'cli-progress';

/**
 * The progress bar of long commands (checkin, checkout, convert), on a terminal only.
 * Done and total are shown in MiB and never as "done > total" (a total that grows as work is
 * found is raised to what is done); the estimate is our own: "--" until a second of work
 * and some progress give a rate, then minutes and seconds (cli-progress printed its
 * "NULL"/"INF" placeholders through its time formatter as "NFs" and "LLs").
 */
export interface Progress {
  /** Bytes done of bytes total (the total may grow). */
  update(done: number, total: number): void;
  stop(): void;
}

const MiB = 2 ** 20;

export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * Whether fd 2 is a terminal, cheaply: process.stderr.isTTY makes the stream (2-4 ms of CPU)
 * and node:tty takes ~3 ms to load, a large part of a short convert (issue 26); a terminal is a
 * character device, so anything else is answered by one fstat.
 */
function stderrIsTerminal(): boolean {
  try {
    if (!fstatSync(2).isCharacterDevice()) return false;
  } catch {
    return false;
  }
  const { isatty } = createRequire(import.meta.url)('node:tty') as typeof import('node:tty');
  return isatty(2);
}

/** A bar on stderr when it is a terminal (STRATA_PROGRESS=0 turns it off), else undefined. */
export async function progressBar(label: string): Promise<Progress | undefined> {
  if (process.env.STRATA_PROGRESS === '0' || !stderrIsTerminal()) return undefined;
  const { default: cliProgress } = await import('cli-progress');
  const bar: SingleBar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | ETA {etaText}`,
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const started = Date.now();
  let stopped = false;
  bar.start(1, 0, { doneMiB: 0, totalMiB: 0, etaText: '--' });
  return {
    update(done: number, total: number) {
      if (stopped) return;
      const t = Math.max(total, done, 1);
      const elapsed = (Date.now() - started) / 1000;
      const eta = elapsed >= 1 && done > 0 ? ((t - done) * elapsed) / done : Number.NaN;
      bar.setTotal(t);
      bar.update(done, {
        doneMiB: Math.floor(done / MiB),
        totalMiB: Math.ceil(t / MiB),
        etaText: formatEta(eta),
      });
    },
    stop() {
      if (stopped) return;
      stopped = true;
      bar.stop();
    },
  };
}
