import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { checkin } from '../../src/library/checkin.js';
import { Library } from '../../src/library/library.js';
import type { RunningServer } from '../../src/serve/http/server.js';
import { inspectPair, type Pair } from '../helpers/inspect-pair.js';
import { ROOT, run } from '../helpers/tools.js';
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
const WIDE = 20_000;
/** The little of the DOM the page functions below use (they run in the browser; the tests compile without DOM types). */
interface Dom {
  document: {
    querySelector(s: string): { value?: string } | null;
    querySelectorAll(s: string): { length: number };
  };
}

let dir: string;
let lib: Library;
let server: RunningServer;
let tokens: Record<string, string>;
let people: Awaited<ReturnType<typeof addPeople>>;
let pair: Pair;
let ctx: BrowserContext;

before(async () => {
  dir = tempDir('webui');
  pair = await inspectPair();
  lib = await Library.open(path.join(dir, 'lib'));
  people = await addPeople(lib);
  tokens = people.tokens;
  await checkin(lib, pair.a, { name: 'own/debian', tags: ['stable'] });
  await checkin(lib, pair.b, { name: 'own/debian', tags: ['next'] });
  await checkin(lib, pair.a, { name: 'own/pub' });
  await checkin(lib, pair.a, { name: 'other/secret' });
  await people.access.setImageAccess('own/debian', 'own', 'private');
  await people.access.setImageAccess('own/pub', 'own', 'public');
  await people.access.setImageAccess('other/secret', 'other', 'private');
  // a 20,000-entry directory (empty files made here, an ext4 image by mkfs -d)
  const wide = path.join(dir, 'wide');
  mkdirSync(path.join(wide, 'big'), { recursive: true });
  for (let i = 0; i < WIDE; i++)
    closeSync(openSync(path.join(wide, 'big', `entry-${String(i).padStart(5, '0')}`), 'w'));
  const wideImg = path.join(dir, 'wide.img');
  await run('mkfs.ext4', ['-q', '-F', '-N', String(WIDE + 100), '-E', 'root_owner=0:0', '-d', wide, wideImg, '64M']);
  await checkin(lib, wideImg, { name: 'own/wide' });
  await people.access.setImageAccess('own/wide', 'own', 'private');
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
  assert.deepEqual((await imageNames(page)).sort(), ['own/debian', 'own/pub', 'own/wide']);
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
  // where it sits on the disk: the blocks debugfs lists for the file, and its birth time
  const onDisk = page.locator('section[data-extents]');
  await onDisk.waitFor();
  const rows = await onDisk
    .locator('tbody tr')
    .evaluateAll((trs) =>
      trs.map((tr) => [...(tr as unknown as { cells: { textContent: string }[] }).cells].map((c) => c.textContent)),
    );
  const shownBlocks: number[] = [];
  for (const [, length, , disk] of rows) {
    for (let b = 0; b * 4096 < Number(length); b++) shownBlocks.push(Number(disk) / 4096 + b);
  }
  const debugfs = (req: string) => execFileSync('debugfs', ['-R', req, pair.b], { encoding: 'utf8', stdio: 'pipe' });
  const blocks = debugfs('blocks /etc/passwd').trim().split(/\s+/).map(Number);
  assert.ok(blocks.length > 0 && blocks.every((b) => b > 0), `debugfs blocks: ${blocks}`);
  assert.deepEqual(shownBlocks, blocks);
  const crtime = /crtime: (0x[0-9a-f]+):/.exec(debugfs('stat /etc/passwd'))?.[1];
  assert.ok(crtime, 'debugfs shows a crtime');
  const birth =
    (await onDisk.locator('dt', { hasText: 'Birth' }).locator('xpath=following-sibling::dd[1]').textContent()) ?? '';
  assert.equal(Math.floor(Date.parse(birth) / 1000), Number(crtime));
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

test('search: a package across versions, a path glob, a digest; results link to the version and the file', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-reader']);
  await page.getByRole('link', { name: 'Search', exact: true }).click();
  await page.getByLabel('Package').fill('bash');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.locator('p[data-for="#/search?package=bash"]').waitFor();
  const refs = await page.locator('[data-hit]').evaluateAll((els) => els.map((e) => e.getAttribute('data-hit')));
  // bash is in both versions of own/debian and in own/pub (same image as @1); never other/secret
  assert.deepEqual(refs.sort(), ['own/debian@1', 'own/debian@2', 'own/pub@1']);
  const bash2 = await page.locator('[data-hit="own/debian@2"] [data-package]').allTextContents();
  assert.ok(
    bash2.some((t) => /^bash 9\.9-1/.test(t)),
    bash2.join('|'),
  );
  // a version range: only the derived image's bash is >= 9.9
  await page.goto(`${server.url}/#/search?package=${encodeURIComponent('bash>=9.9')}`);
  await page.locator('p[data-for]').waitFor();
  assert.deepEqual(await page.locator('[data-hit]').evaluateAll((els) => els.map((e) => e.getAttribute('data-hit'))), [
    'own/debian@2',
  ]);
  // a path glob: the file the recipe added, linked to the file page
  await page.goto(`${server.url}/#/search?path=${encodeURIComponent('/etc/added.conf')}`);
  await page.locator('p[data-for]').waitFor();
  assert.deepEqual(await page.locator('[data-hit]').evaluateAll((els) => els.map((e) => e.getAttribute('data-hit'))), [
    'own/debian@2',
  ]);
  await page.getByRole('link', { name: '/etc/added.conf' }).click();
  await page.locator('pre[data-kind=text]').waitFor();
  assert.equal(
    await page.locator('pre[data-kind=text]').textContent(),
    readFileSync(path.join(pair.derived, 'etc/added.conf'), 'utf8'),
  );
  // "where else?" on the file page: its content digest, found in @2 only (the recipe added it)
  await page.getByRole('link', { name: 'where else?' }).click();
  await page.locator('p[data-for]').waitFor();
  assert.deepEqual(await page.locator('[data-hit]').evaluateAll((els) => els.map((e) => e.getAttribute('data-hit'))), [
    'own/debian@2',
  ]);
  await page.screenshot({ path: path.join(SHOTS, 'search.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test('the diff as a tree with a text diff of a changed file; the provenance graph links versions', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-reader']);
  await page.goto(
    `${server.url}/#/diff?a=${encodeURIComponent('own/debian@1')}&b=${encodeURIComponent('own/debian@2')}`,
  );
  await page.locator('[data-tree]').waitFor();
  const tree = (await page.locator('[data-tree]').textContent()) ?? '';
  assert.match(tree, /etc\/ \(\d+\)/);
  const hostnameLeaf = page.locator('[data-tree] li[data-status=changed]', { hasText: '/etc/hostname' });
  await hostnameLeaf.getByRole('button', { name: 'text diff' }).click();
  const td = page.locator('[data-textdiff="/etc/hostname"]');
  await td.waitFor();
  const lines = ((await td.textContent()) ?? '').split('\n').filter(Boolean);
  const oldName = readFileSync(path.join(pair.base, 'etc/hostname'), 'utf8').trim();
  const newName = readFileSync(path.join(pair.derived, 'etc/hostname'), 'utf8').trim();
  assert.ok(lines.includes(`-${oldName}`), lines.join('|'));
  assert.ok(lines.includes(`+${newName}`), lines.join('|'));
  assert.equal(await page.locator('[data-tree] li[data-status=added]', { hasText: '/etc/added.conf' }).count(), 1);
  await page.screenshot({ path: path.join(SHOTS, 'diff-tree.png'), fullPage: true });
  // provenance: @2's page draws @1 (its parent) as a box that links to @1's page
  const provRequests: string[] = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/provenance')) provRequests.push(new URL(r.url()).pathname);
  });
  await page.goto(`${server.url}/#/v/own%2Fdebian/2`);
  const node = page.locator('svg.provenance a[data-node="own/debian@1"]');
  await node.waitFor();
  // one request per version the page shows (the summary and both walks share @2's)
  assert.deepEqual(
    [...provRequests].sort(),
    [...new Set(provRequests)].sort(),
    `provenance fetched more than once: ${provRequests.join(' ')}`,
  );
  assert.ok(
    provRequests.some((u) => u.includes('/2/provenance')),
    provRequests.join(' '),
  );
  assert.equal(await page.locator('svg.provenance a[aria-current=page]').getAttribute('data-node'), 'own/debian@2');
  assert.ok((await page.locator('svg.provenance line').count()) >= 1);
  await node.focus();
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'own/debian@1' }).waitFor();
  assert.equal(await page.locator('svg.provenance a[aria-current=page]').getAttribute('data-node'), 'own/debian@1');
  assert.equal(await page.locator('svg.provenance a[data-node="own/debian@2"]').count(), 1);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a 20,000-entry directory is a virtualised list that scrolls to its end', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-reader']);
  await page.goto(`${server.url}/#/f/own%2Fwide/1?path=%2Fbig`);
  const box = page.locator('[data-virtual]');
  await box.waitFor();
  assert.equal(await box.getAttribute('data-virtual'), String(WIDE));
  const rendered = await box.locator('tbody tr:not(.spacer)').count();
  assert.ok(rendered > 10 && rendered < 200, `${rendered} rows in the DOM`);
  assert.equal(await page.getByRole('link', { name: 'entry-00000', exact: true }).count(), 1);
  for (const [frac, name] of [
    [0.5, 'entry-10000'],
    [1, 'entry-19999'],
  ] as const) {
    await box.evaluate((el, f) => {
      el.scrollTop = f * (el.scrollHeight - el.clientHeight);
    }, frac);
    await page.getByRole('link', { name, exact: true }).waitFor();
  }
  assert.ok((await box.locator('tbody tr:not(.spacer)').count()) < 200);
  // the filter narrows the rows to what matches
  await page.getByLabel('Filter names').fill('entry-1234');
  await page.waitForFunction(
    () =>
      (globalThis as unknown as Dom).document.querySelectorAll('section[data-listing] tbody tr:not(.spacer)').length ===
      10,
  );
  await page.screenshot({ path: path.join(SHOTS, 'wide-dir.png') });
  assert.deepEqual(errors, []);
  await page.close();
});

test('download a folder as tar and a file from the browser; the storage dashboard; admin shares and publishes', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-admin']);
  await page.goto(`${server.url}/#/f/own%2Fdebian/2?path=%2Fetc%2Fapt`);
  const [dl] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download folder (tar)' }).click(),
  ]);
  assert.equal(dl.suggestedFilename(), 'apt.tar');
  const tarFile = path.join(dir, 'apt.tar');
  await dl.saveAs(tarFile);
  const names = execFileSync('tar', ['-tf', tarFile], { encoding: 'utf8' }).trim().split('\n').sort();
  const want = execFileSync('find', ['apt'], { cwd: path.join(pair.derived, 'etc'), encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((p) =>
      execFileSync('stat', ['-c', '%F', path.join(pair.derived, 'etc', p)], { encoding: 'utf8' }).startsWith(
        'directory',
      )
        ? `${p}/`
        : p,
    )
    .sort();
  assert.deepEqual(names, want);
  await page.goto(`${server.url}/#/f/own%2Fdebian/2?path=%2Fetc%2Fpasswd`);
  const [dl2] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download file' }).click(),
  ]);
  const f = path.join(dir, 'passwd.dl');
  await dl2.saveAs(f);
  assert.equal(readFileSync(f, 'utf8'), readFileSync(path.join(pair.derived, 'etc/passwd'), 'utf8'));

  // storage: the images this token may read, a canvas chart each for projects and images
  await page.getByRole('link', { name: 'Storage', exact: true }).click();
  await page.locator('[data-total]').waitFor();
  assert.equal(await page.locator('canvas').count(), 2);
  const imgs = await page.locator('table[data-usage=image] tbody tr td:first-child').allTextContents();
  assert.deepEqual(imgs.sort(), ['own/debian', 'own/pub', 'own/wide']);
  await page.screenshot({ path: path.join(SHOTS, 'storage.png'), fullPage: true });

  // admin: publish own/wide (anonymous then sees it), invite project other to own/debian
  await page.getByRole('link', { name: 'Admin', exact: true }).click();
  const row = page.locator('tr[data-admin-image="own/wide"]');
  await row.waitFor();
  await page.getByLabel('Visibility of own/wide').selectOption('public');
  await page.waitForFunction(
    (t) =>
      fetch('/v1/images/own%2Fwide', { headers: { authorization: `Bearer ${t}` } })
        .then((r) => r.json() as Promise<{ visibility?: string }>)
        .then((j) => j.visibility === 'public'),
    tokens['own-admin'],
  );
  const anon = await fetch(`${server.url}/v1/images/own%2Fwide`);
  assert.equal(anon.status, 200, 'anonymous reads a public image');
  await page.getByLabel('Visibility of own/wide').selectOption('private');
  // (polled from here: a 404 inside the page would be logged on its console)
  for (let i = 0; (await fetch(`${server.url}/v1/images/own%2Fwide`)).status !== 404; i++) {
    assert.ok(i < 100, 'own/wide is private again');
    await new Promise((r) => setTimeout(r, 100));
  }
  // members count when the image is shared (as in Glance)
  await page.getByLabel('Visibility of own/debian').selectOption('shared');
  const deb = page.locator('tr[data-admin-image="own/debian"]');
  await page.waitForFunction(() => {
    const sel = (globalThis as unknown as Dom).document.querySelector('#vis-own\\/debian');
    return sel?.value === 'shared';
  });
  await deb.getByLabel('Share with project').fill('other');
  await deb.getByRole('button', { name: 'Invite' }).click();
  await page.locator('tr[data-admin-image="own/debian"] ul.members li', { hasText: 'other' }).waitFor();
  await page.screenshot({ path: path.join(SHOTS, 'admin.png'), fullPage: true });
  // the invited project accepts in its own admin page; then it reads own/debian
  const other = await tab();
  await signIn(other.page, tokens['other-admin']);
  await other.page.getByRole('link', { name: 'Admin', exact: true }).click();
  await other.page.getByRole('button', { name: 'Accept' }).click();
  await other.page.locator('td', { hasText: 'accepted' }).waitFor();
  await other.page.goto(`${server.url}/#/images`);
  await other.page.locator('main table').waitFor();
  assert.ok((await imageNames(other.page)).includes('own/debian'));
  await other.page.close();
  // and the owner removes the share again
  await page.reload();
  await page.getByRole('button', { name: 'Remove other from own/debian' }).click();
  await page.waitForFunction(
    () => !(globalThis as unknown as Dom).document.querySelector('tr[data-admin-image="own/debian"] ul.members li'),
  );
  await page.getByLabel('Visibility of own/debian').selectOption('private');
  await page.waitForFunction(
    () => (globalThis as unknown as Dom).document.querySelector('#vis-own\\/debian')?.value === 'private',
  );
  assert.deepEqual(errors, []);
  await page.close();
});

test('accessibility: axe-core finds no serious or critical violation on the main pages', async () => {
  const axe = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
  const { page, errors } = await tab();
  await signIn(page, tokens['own-admin']);
  const pages: Array<[string, string]> = [
    ['#/images', 'main table'],
    ['#/v/own%2Fdebian/2', 'svg.provenance'],
    ['#/f/own%2Fdebian/2?path=%2Fetc', 'main table'],
    ['#/f/own%2Fdebian/2?path=%2Fetc%2Fpasswd', 'pre[data-kind=text]'],
    ['#/f/own%2Fwide/1?path=%2Fbig', '[data-virtual]'],
    [`#/diff?a=${encodeURIComponent('own/debian@1')}&b=${encodeURIComponent('own/debian@2')}`, '[data-tree]'],
    ['#/search?package=bash', '[data-hit]'],
    ['#/storage', '[data-total]'],
    ['#/admin', 'tr[data-admin-image]'],
    ['#/signin', 'form'],
  ];
  const found: string[] = [];
  for (const [hash, ready] of pages) {
    await page.goto(`${server.url}/${hash}`);
    await page.locator(ready).first().waitFor();
    // axe's source through the DevTools protocol: the page's CSP (script-src 'self') stays on
    await page.evaluate(axe);
    const v = (await page.evaluate(
      `axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'best-practice'] }).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, target: String(v.nodes[0]?.target ?? '') + ' ' + String(v.nodes[0]?.html ?? '').slice(0, 300) + ' ' + String(v.nodes[0]?.failureSummary ?? '') })))`,
    )) as Array<{ id: string; impact: string; nodes: number; target: string }>;
    for (const x of v)
      if (x.impact === 'serious' || x.impact === 'critical')
        found.push(`${hash}: ${x.id} (${x.impact}, ${x.nodes} nodes, e.g. ${x.target})`);
  }
  assert.deepEqual(found, []);
  assert.deepEqual(errors, []);
  await page.close();
});

test('admin accounts: a token made in the page works once shown and not after revoking; a server admin adds a user and a role', async () => {
  const { page, errors } = await tab();
  await signIn(page, tokens['own-admin']);
  await page.getByRole('link', { name: 'Admin', exact: true }).click();
  const before = new Set((await people.access.tokens('own-admin')).map((t) => t.id));
  await page.getByRole('button', { name: 'Create token' }).click();
  const secret = (await page.locator('[data-new-token]').textContent()) ?? '';
  const who = (t: string) => fetch(`${server.url}/v1/whoami`, { headers: { authorization: `Bearer ${t}` } });
  const r = await who(secret);
  assert.equal(r.status, 200);
  assert.equal(((await r.json()) as { user: string }).user, 'own-admin');
  const fresh = (await people.access.tokens('own-admin')).filter((t) => !before.has(t.id));
  assert.equal(fresh.length, 1, 'one new token in the catalog');
  assert.equal(fresh[0].scope, 'read');
  const id = fresh[0].id;
  await page.getByRole('button', { name: `Revoke token ${id}` }).click();
  await page.locator(`tr[data-token="${id}"]`, { hasText: 'revoked' }).waitFor();
  assert.equal((await who(secret)).status, 401);
  // the project admin gives a role in own to an existing user
  await page.getByRole('form', { name: 'Give a role' }).getByLabel('User').fill('other-member');
  await page.getByRole('form', { name: 'Give a role' }).getByLabel('Role').selectOption('reader');
  await page.getByRole('button', { name: 'Give role' }).click();
  for (let i = 0; (await people.access.role('own', 'other-member')) !== 'reader'; i++) {
    assert.ok(i < 100, 'other-member became a reader of own');
    await new Promise((res) => setTimeout(res, 100));
  }
  await page.screenshot({ path: path.join(SHOTS, 'admin-accounts.png'), fullPage: true });
  await page.close();
  // a server admin adds a user; the users table lists it
  const root = await tab();
  await signIn(root.page, tokens.root);
  await root.page.getByRole('link', { name: 'Admin', exact: true }).click();
  await root.page.getByRole('textbox', { name: 'New user' }).fill('newbie');
  await root.page.getByRole('button', { name: 'Add user' }).click();
  await root.page.locator('tr[data-user="newbie"]').waitFor();
  assert.ok(await people.access.user('newbie'));
  assert.deepEqual(errors, []);
  assert.deepEqual(root.errors, []);
  await root.page.close();
});
