import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { CLI } from './cli.js';

/**
 * How long one measured command may run (STRATA_TEST_COMMAND_SECONDS, default 420 s: the
 * slowest of the bounded-memory tests' commands, a 200,000-entry check-in, takes ~85 s on a
 * loaded 2-core machine). Past it, the command's JavaScript stack is asked for and the
 * command killed, so a stuck command fails its test with where it was, not the whole test
 * file with Node's file timeout (900 s) and nothing to go on (large-version-map, CI of 532c9eb).
 */
const LIMIT_MS = Number(process.env.STRATA_TEST_COMMAND_SECONDS ?? 420) * 1000;

export interface Measured {
  code: number;
  /** Peak RSS in bytes (GNU time's %M, the kernel's maxrss). */
  maxRss: number;
  stderr: string;
}

/**
 * Run the CLI under GNU time with stdout into `outFile`: exit status, peak RSS, stderr. The
 * bounded-memory tests' one way to measure a command (it was copied into each of them).
 */
export function measured(args: string[], outFile: string, limitMs = LIMIT_MS): Promise<Measured> {
  const rssFile = `${outFile}.rss`;
  const reports = mkdtempSync(`${outFile}.report-`);
  const fd = openSync(outFile, 'w');
  return new Promise((resolve, reject) => {
    const c = spawn(
      '/usr/bin/time',
      [
        '-f',
        '%M',
        '-o',
        rssFile,
        process.execPath,
        '--report-on-signal',
        '--report-signal=SIGUSR2',
        `--report-directory=${reports}`,
        CLI,
        ...args,
      ],
      { stdio: ['ignore', fd, 'pipe'] },
    );
    let stderr = '';
    c.stderr?.on('data', (b: Buffer) => {
      stderr += b;
    });
    let stuck: string | undefined;
    const timer = setTimeout(() => {
      stuck = stackOf(c.pid, reports);
    }, limitMs);
    c.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    c.on('close', (code) => {
      clearTimeout(timer);
      closeSync(fd);
      rmSync(reports, { recursive: true, force: true });
      if (stuck !== undefined) {
        rmSync(rssFile, { force: true });
        reject(
          new Error(
            `strata ${args.join(' ')} ran past ${limitMs / 1000} s and was killed; where it was:\n${stuck}\nstderr: ${stderr.slice(-2000)}`,
          ),
        );
        return;
      }
      const kb = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
      rmSync(rssFile, { force: true });
      resolve({ code: code ?? -1, maxRss: kb * 1024, stderr });
    });
  });
}

/** The JavaScript stack (and the event loop's handles) of the node process under GNU time `timePid`, then kill it. */
function stackOf(timePid: number | undefined, reports: string): string {
  const pid = Number(
    spawnSync('pgrep', ['-P', String(timePid)], { encoding: 'utf8' })
      .stdout.trim()
      .split('\n')[0],
  );
  if (!(pid > 0)) return '(the command had ended)';
  let out = '(no diagnostic report was written)';
  try {
    process.kill(pid, 'SIGUSR2');
    for (let i = 0; i < 50; i++) {
      const f = readdirSync(reports).find((n) => n.endsWith('.json'));
      if (f) {
        // written whole once renamed? not promised: retry a moment on a partial file
        try {
          // an async command is mostly waiting on the loop, where the report has no JS stack:
          // its CPU time (spinning or waiting), heap and the loop's handles (what it waits on)
          const r = JSON.parse(readFileSync(path.join(reports, f), 'utf8')) as {
            javascriptStack?: { message?: string; stack?: string[] };
            libuv?: Array<{ type: string; is_active: boolean; filename?: string; remoteEndpoint?: unknown }>;
            resourceUsage?: { userCpuSeconds?: number; kernelCpuSeconds?: number; maxRss?: number };
            javascriptHeap?: { usedMemory?: number };
          };
          const handles = (r.libuv ?? [])
            .filter((h) => h.is_active)
            .map((h) => h.type + (h.filename ? ` ${h.filename}` : ''))
            .join(', ');
          const u = r.resourceUsage ?? {};
          out = [
            `CPU ${u.userCpuSeconds} s user, ${u.kernelCpuSeconds} s system; heap ${((r.javascriptHeap?.usedMemory ?? 0) / 2 ** 20).toFixed(1)} MiB used`,
            `JS stack: ${r.javascriptStack?.message ?? ''} ${(r.javascriptStack?.stack ?? []).join('\n') || '(none: waiting on the loop)'}`,
            `active handles: ${handles}`,
          ].join('\n');
          break;
        } catch {}
      }
      spawnSync('sleep', ['0.2']);
    }
  } finally {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  return out;
}
