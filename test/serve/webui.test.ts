import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { inspectPair, type Pair } from '../helpers/inspect-pair.js';
import { ROOT } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';
import { addPeople, serve } from './http-helpers.js';

/**
 * The web UI in a real browser: Debian's chromium driven by playwright-core against a real
 * `strata serve` (port 0) holding the Debian pair (test/helpers/inspect-pair.ts) as
 * own/debian@1 and @2, a public image and another project's private one. Expected
 * contents come from the trees on the host and the pair's recipe, never from our output.
 * Screenshots of the main pages go to .cache/screenshots (gitignored) for a reviewer.
 */
const CHROMIUM = '/usr/bin/chromium';
const SHOTS = path.join(ROOT, '.cache', 'screenshots');

let dir: string;
let lib: Library;
let server: RunningServer;
let tokens: Record<string, string>;
let pair: Pair;
let ctx: BrowserContext;

before(async () => {
  dir = tempDir('webui');
  pair = await inspectPair();
  lib = await Library.open(path.join(dir, 'lib'));
  const people = await addPeople(lib);
  tokens = people.tokens;
  await checkin(lib, pair.a, { name: 'own/debian', tags: ['stable'] });
  await checkin(lib, pair.b, { name: 'own/debian', tags: ['next'] });
  await checkin(lib, pair.a, { name: 'own/pub' });
  await checkin(lib, pair.a, { name: 'other/secret' });
  await people.access.setImageAccess('own/debian', 'own', 'private');
  await people.access.setImageAccess('own/pub', 'own', 'public');
  await people.access.setImageAccess('other/secret', 'other', 'private');
  server = await serve(lib);
  mkdirSync(SHOTS, { recursive: true });
  ctx = await chromium.launchPersistentContext(path.join(dir, 'chromium-profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1200, height: 900 },
  });
});

after(async () => {
  await ctx?.close();
  await server?.close();
  await lib?.close();
});

/** A new tab whose console errors and uncaught exceptions are collected. */
async function tab(): Promise<{ page: Page; errors: string[] }> {
  const page = await ctx.newPage();
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  return { page, errors };
}

async function signIn(page: Page, token: string): Promise<void> {
  await page.goto(`${server.url}/#/signin`);
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/#\/images$/);
  await page.locator('main table').waitFor();
}

const imageNames = async (page: Page) => page.locator('main tbody tr td:first-child').allTextContents();

test('the server serves the UI at / with a strict content security policy', async () => {
  const r = await fetch(`${server.url}/`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^text\/html/);
  assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  assert.match(await r.text(), /<script type="module" src="\/ui\/app.js">/);
  assert.equal((await fetch(`${server.url}/ui/app.js`)).status, 200);
  assert.equal((await fetch(`${server.url}/ui/..%2fpackage.json`)).status, 404);
  assert.equal((await fetch(`${server.url}/ui/nope.js`)).status, 404);
});

test('anonymous: the list shows public images only', async () => {
  const { page, errors } = await tab();
  await page.goto(`${server.url}/`);
  await page.locator('main table').waitFor();
  assert.deepEqual(await imageNames(page), ['own/pub']);
  assert.match((await page.locator('header').textContent()) ?? '', /anonymous/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a bad token is refused with a readable message', async () => {
  const { page } = await tab();
  await page.goto(`${server.url}/#/signin`);
  await page.getByLabel('Token').fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match((await alert.textContent()) ?? '', /401.*bearer token is unknown/);
  await page.close();
});

test('a project reader: sign in, images, version, files, diff, back button', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-reader']);
  assert.deepEqual((await imageNames(page)).sort(), ['own/debian', 'own/pub']);
  assert.match((await page.locator('header').textContent()) ?? '', /own-reader \(own\)/);
  await page.screenshot({ path: path.join(SHOTS, 'images.png'), fullPage: true });

  // filters: by tag (own/debian's versions carry stable and next), by visibility
  await page.getByLabel('Tag').fill('next');
  await page.getByLabel('Tag').press('Enter');
  await page.waitForURL(/tag=next/);
  await page.locator('p[data-for="#/images?tag=next"]').waitFor();
  assert.deepEqual(await imageNames(page), ['own/debian']);
  await page.goto(`${server.url}/#/images?visibility=public`);
  await page.locator('p[data-for="#/images?visibility=public"]').waitFor();
  assert.deepEqual(await imageNames(page), ['own/pub']);
  await page.goto(`${server.url}/#/images`);
  await page.locator('main table').waitFor();

  // the version page, reached by its link (keyboard: focus the link, press Enter)
  await page.getByRole('link', { name: 'own/debian@2' }).focus();
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'own/debian@2' }).waitFor();
  await page.getByRole('heading', { name: 'Packages' }).waitFor();
  const summary = (await page.locator('main').textContent()) ?? '';
  const hostname = readFileSync(path.join(pair.derived, 'etc/hostname'), 'utf8').trim();
  assert.ok(summary.includes(hostname), `hostname ${hostname} shown`);
  assert.ok(summary.includes('probe (3000)'), 'the user the recipe added is listed');
  assert.ok(summary.includes('own/debian@1'), 'parent linked');
  assert.ok(summary.includes('next'), 'tag shown');
  // packages: searchable and sortable; bash is 9.9-1 in the derived image (the recipe's edit)
  await page.getByLabel('Search packages').fill('bash');
  const bashRow = page.locator('main tbody tr', { has: page.locator('td', { hasText: /^bash$/ }) });
  assert.match((await bashRow.textContent()) ?? '', /9\.9-1/);
  await page.getByLabel('Search packages').fill('');
  await page.getByRole('button', { name: 'Name' }).click(); // already ascending: now descending
  const th = page.locator('th', { has: page.getByRole('button', { name: 'Name' }) });
  assert.equal(await th.getAttribute('aria-sort'), 'descending');
  const names = (await page.locator('main tbody tr td:first-child').allTextContents()).slice(0, 3);
  const ls = readFileSync(path.join(pair.derived, 'var/lib/dpkg/status'), 'utf8');
  const all = [...ls.matchAll(/^Package: (.+)$/gm)].map((m) => m[1]);
  assert.equal(
    names[0],
    all.reduce((a, b) => (a.localeCompare(b, undefined, { numeric: true }) >= 0 ? a : b)),
  );
  await page.screenshot({ path: path.join(SHOTS, 'version.png'), fullPage: false });

  // the file browser: / -> etc -> passwd, read, compared with the file on the host
  await page.getByRole('link', { name: 'Browse files' }).click();
  await page.getByRole('link', { name: 'etc/', exact: true }).click();
  await page.getByRole('link', { name: 'passwd', exact: true }).click();
  await page.locator('pre[data-kind=text]').waitFor();
  assert.equal(
    await page.locator('pre[data-kind=text]').textContent(),
    readFileSync(path.join(pair.derived, 'etc/passwd'), 'utf8'),
  );
  await page.screenshot({ path: path.join(SHOTS, 'file.png'), fullPage: true });
  // /etc/os-release is a symlink: its target is shown as a link
  await page.goto(`${server.url}/#/f/own%2Fdebian/2?path=%2Fetc%2Fos-release`);
  await page.locator('[data-target]').waitFor();
  assert.equal(
    await page.locator('[data-target]').textContent(),
    readlinkSync(path.join(pair.derived, 'etc/os-release')),
  );
  // a binary: hex head starting with the ELF magic
  await page.goto(`${server.url}/#/f/own%2Fdebian/2?path=%2Fusr%2Fbin%2Fdash`);
  await page.locator('pre[data-kind=hex]').waitFor();
  assert.match((await page.locator('pre[data-kind=hex]').textContent()) ?? '', /^00000000 {2}7f 45 4c 46/);
  await page.goBack();
  await page.locator('[data-target]').waitFor();

  // diff with the parent: what the recipe changed
  await page.goto(`${server.url}/#/v/own%2Fdebian/2`);
  await page.getByRole('link', { name: 'Diff with parent' }).click();
  await page.locator('[data-list=added]').waitFor();
  const text = async (k: string) => (await page.locator(`[data-list=${k}]`).textContent()) ?? '';
  assert.match(await text('added'), /etc\/added\.conf/);
  assert.match(await text('removed'), /etc\/issue(?!\.)/);
  assert.match(await text('changed'), /etc\/hostname/);
  assert.match(await text('metadata'), /etc\/debian_version/);
  assert.match(await text('upgraded'), /bash .*→ 9\.9-1/);
  assert.match(await text('pkg-added'), /strata-probe/);
  await page.screenshot({ path: path.join(SHOTS, 'diff.png'), fullPage: true });
  await page.goBack();
  await page.getByRole('heading', { name: 'own/debian@2' }).waitFor();

  assert.deepEqual(errors, []);
  await page.close();
});

test("a reader of project own does not see project other's private image (list, filter, direct URL)", async () => {
  const { page } = await tab();
  await signIn(page, tokens['own-reader']);
  assert.ok(!(await imageNames(page)).includes('other/secret'));
  await page.goto(`${server.url}/#/images?project=other`);
  await page.locator('p[data-for="#/images?project=other"]').waitFor();
  assert.equal(await page.locator('p[data-for="#/images?project=other"]').textContent(), '0 image(s)');
  await page.goto(`${server.url}/#/v/other%2Fsecret/1`);
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match((await alert.textContent()) ?? '', /404/);
  assert.doesNotMatch((await page.locator('main').textContent()) ?? '', /Inspection|Packages/);
  await page.goto(`${server.url}/#/f/other%2Fsecret/1?path=%2Fetc%2Fpasswd`);
  await page.getByRole('alert').waitFor();
  assert.equal(await page.locator('pre').count(), 0);
  await page.goto(`${server.url}/#/diff?a=other%2Fsecret%401&b=own%2Fdebian%402`);
  await page.getByRole('alert').waitFor();
  await page.close();

  // control: the server admin sees it, so the checks above can fail
  const admin = await tab();
  await signIn(admin.page, tokens.root);
  assert.ok((await imageNames(admin.page)).includes('other/secret'));
  await admin.page.close();
});
