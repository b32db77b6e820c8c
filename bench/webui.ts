/**
 * bench:webui — cold load of the web UI (issue 20). JSON on stdout.
 *
 * A `strata serve` (in this process, a real port) holds a debootstrapped Debian bookworm
 * minbase (the tests' tree, test/helpers/debian-tree.ts, in an ext4 image by mkfs -d) as
 * own/debian@1 and @2.
 * Debian's chromium (headless, driven by playwright-core) opens, in a fresh browser context
 * each run (empty cache, like a first visit), the version page of @2 and the file browser at
 * /usr/share/doc; the figure is the time from navigation start until the page's content is
 * painted (the element that needs the API's answer is visible), read from the page's own
 * clock (performance.now() at that moment). Target (the issue): < 1000 ms each. There is no
 * peer that shows an image's contents in a browser; the ratio printed is to the target.
 * Options: --runs N (5).
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

const pages = {
  versionPage: {
    hash: '#/v/own%2Fdebian/2',
    ready: 'main h2:has-text("Inspection") ~ *, main h4:has-text("Packages")',
  },
  fileBrowser: { hash: '#/f/own%2Fdebian/2?path=%2Fusr%2Fshare%2Fdoc', ready: 'main tbody tr:not(.spacer)' },
};
const out: Record<string, unknown> = { runs: RUNS, targetMs: 1000 };
try {
  for (const [name, p] of Object.entries(pages)) {
    const times: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
      await ctx.addInitScript({ content: `sessionStorage.setItem('strata.token', ${JSON.stringify(token)})` });
      const page = await ctx.newPage();
      await page.goto(`${server.url}/${p.hash}`, { waitUntil: 'commit' });
      await page.locator(p.ready).first().waitFor({ state: 'visible' });
      // the page's clock: ms since its navigation started, at the moment the content is there
      const ms = (await page.evaluate(
        'new Promise((r) => requestAnimationFrame(() => r(performance.now())))',
      )) as number;
      times.push(Math.round(ms));
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
