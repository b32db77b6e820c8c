/**
 * bench:webui — cold load of the web UI (issue 20). JSON on stdout.
 *
 * A `strata serve` (in this process, a real port) holds a debootstrapped Debian bookworm
 * minbase (the tests' tree, test/helpers/debian-tree.ts, in an ext4 image by mkfs -d) as
 * own/debian@1 and @2.
 * Debian's chromium (headless, driven by playwright-core) opens, in a fresh browser context
 * each run (empty cache, like a first visit), the version page of @2 and the file browser at
 * /usr/share/doc; the figure is the time from navigation start until the page's content is
 * painted (the element that needs the API's answer is in the DOM, at the next animation
 * frame), read from the page's own clock by an observer in the page. Target (the issue): < 1000 ms each. There is no
 * peer that shows an image's contents in a browser; the ratio printed is to the target.
 * Options: --runs N (5), --verbose.
 */
import * as path from 'node:path';
import { chromium } from 'playwright-core';
import { Access } from '../src/catalog/access.js';
import { checkin } from '../src/library/checkin.js';
import { Library } from '../src/library/library.js';
import { startServer } from '../src/serve/http/server.js';
import { debootstrapTree } from '../test/helpers/debian-tree.js';
import { fixture, run } from '../test/helpers/tools.js';
import { tempDir } from '../test/library/images.js';
import { opt } from './common.js';

const RUNS = Number(opt('--runs') ?? 5);
/** --verbose: each run's resource timings (what the page fetched, when, how long) on stderr. */
const VERBOSE = process.argv.includes('--verbose');
const log = (m: string) => process.stderr.write(`bench:webui: ${m}\n`);

// the untrimmed debootstrap tree (it has /usr/share/doc) as an ext4 image, made once
const tree = await debootstrapTree();
const image = await fixture('bench-webui-minbase-v1.img', async (out) => {
  await run('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', tree, out, '512M']);
});
const lib = await Library.open(path.join(tempDir('bench-webui'), 'lib'));
const access = await Access.open(lib.catalog.db);
await access.addProject('own');
await access.addUser('reader');
await access.setRole('own', 'reader', 'reader');
const { token } = await access.createToken({ user: 'reader', project: 'own', scope: 'read' });
await checkin(lib, image, { name: 'own/debian' });
await checkin(lib, image, { name: 'own/debian' });
await access.setImageAccess('own/debian', 'own', 'private');
const server = await startServer(lib, '127.0.0.1:0', { defaultProject: 'own', rateLimit: 0 });
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});

/**
 * Each page's content: a test run in the page itself (a MutationObserver installed before the
 * app's script), so the figure is the page's own moment of paint, not when a poll from this
 * process happened to look.
 */
const pages = {
  versionPage: {
    hash: '#/v/own%2Fdebian/2',
    ready: `[...document.querySelectorAll('main h4')].some((h) => h.textContent === 'Packages')`,
  },
  fileBrowser: {
    hash: '#/f/own%2Fdebian/2?path=%2Fusr%2Fshare%2Fdoc',
    ready: `document.querySelector('main tbody tr:not(.spacer)') !== null`,
  },
};
/** Resolves window.__painted with performance.now() at the first frame after `ready` holds. */
const observer = (ready: string) => `
window.__painted = new Promise((resolve) => {
  const ready = () => ${ready};
  const obs = new MutationObserver(() => {
    if (!ready()) return;
    obs.disconnect();
    requestAnimationFrame(() => resolve(performance.now()));
  });
  obs.observe(document, { childList: true, subtree: true, characterData: true });
});`;
const out: Record<string, unknown> = { runs: RUNS, targetMs: 1000 };
try {
  for (const [name, p] of Object.entries(pages)) {
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
      await ctx.addInitScript({ content: `sessionStorage.setItem('strata.token', ${JSON.stringify(token)})` });
      await ctx.addInitScript({ content: observer(p.ready) });
      const page = await ctx.newPage();
      await page.goto(`${server.url}/${p.hash}`, { waitUntil: 'commit' });
      // the page's clock: ms since its navigation started, at the first frame with the content
      const ms = (await page.evaluate('window.__painted')) as number;
      times.push(Math.round(ms));
      if (VERBOSE) {
        const res = (await page.evaluate(
          `performance.getEntriesByType('resource').map((e) => [e.name.replace(location.origin, ''), Math.round(e.startTime), Math.round(e.duration)])`,
        )) as Array<[string, number, number]>;
        log(
          `${name} run ${i + 1}: ${Math.round(ms)} ms; ${res.map(([u, t, d]) => `${u.slice(0, 60)} @${t}+${d}`).join('; ')}`,
        );
      }
      await ctx.close();
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    out[name] = { ms: times, medianMs: median, ratioToTarget: Number((median / 1000).toFixed(3)) };
    log(`${name}: ${times.join(', ')} ms`);
  }
} finally {
  await browser.close();
  await server.close();
  await lib.close();
}
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
