/**
 * The rebase planner on small hand-made trees: each case says by construction what the
 * merged tree must hold, the plan is applied by a tiny tree model written here (it checks
 * every operation's preconditions, so a plan that would rm a non-empty directory or put a
 * file into a missing one fails), and the result is compared with the hand-made answer.
 * A seeded random test checks the rule behind it all on many trees: a path REF changed
 * keeps REF's state unless A1 made the same change or a conflict says so.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import type { Change } from '../../src/library/edit/changes.js';
import {
  type Conflict,
  parseResolutions,
  planRebase,
  type RebasePlan,
  type Take,
} from '../../src/library/edit/rebase.js';
import type { FileEntry, FilesManifest } from '../../src/library/manifest.js';
import { StrataError } from '../../src/util/errors.js';

/** A node of a hand-made tree: file content, a link target, or a directory, with metadata. */
interface Node {
  type: 'file' | 'dir' | 'symlink' | 'fifo';
  data?: string;
  target?: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: string;
  xattrs?: Record<string, string>;
  ino?: number;
}
type Tree = Map<string, Node>;

const T0 = '2020-01-01T00:00:00.000000000Z';
const file = (data: string, more: Partial<Node> = {}): Node => ({
  type: 'file',
  data,
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtime: T0,
  ...more,
});
const dir = (more: Partial<Node> = {}): Node => ({ type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0, ...more });
const link = (target: string, more: Partial<Node> = {}): Node => ({
  type: 'symlink',
  target,
  mode: 0o777,
  uid: 0,
  gid: 0,
  mtime: T0,
  ...more,
});

const tree = (o: Record<string, Node>): Tree => new Map(Object.entries(o));
const clone = (t: Tree): Tree => new Map([...t].map(([p, n]) => [p, { ...n }]));
const sha = (s: string | Uint8Array) => createHash('sha256').update(s).digest('hex');

/** The file manifest of a hand-made tree; its contents registered by digest for `read`. */
function manifest(t: Tree, contents: Map<string, string>): FilesManifest {
  const entries: FileEntry[] = [
    { path: '/', type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, nlink: 2, ino: 2, mtime: T0 },
  ];
  let ino = 100;
  for (const [p, n] of [...t].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const e: FileEntry = {
      path: p,
      type: n.type,
      mode: n.mode,
      uid: n.uid,
      gid: n.gid,
      size: n.type === 'file' ? Buffer.byteLength(n.data ?? '') : n.type === 'symlink' ? (n.target ?? '').length : 0,
      nlink: 1,
      ino: n.ino ?? ino++,
      mtime: n.mtime,
    };
    if (n.type === 'file') {
      e.digest = sha(n.data ?? '');
      contents.set(e.digest, n.data ?? '');
    }
    if (n.target !== undefined) e.target = n.target;
    if (n.xattrs)
      e.xattrs = Object.fromEntries(Object.entries(n.xattrs).map(([k, v]) => [k, Buffer.from(v).toString('base64')]));
    entries.push(e);
  }
  const byIno = new Map<number, number>();
  for (const e of entries) if (e.type === 'file') byIno.set(e.ino, (byIno.get(e.ino) ?? 0) + 1);
  for (const e of entries) if (e.type === 'file') e.nlink = byIno.get(e.ino) ?? 1;
  return {
    kind: 'strata-files',
    version: 1,
    volume: '',
    fsKind: 'ext4',
    fileChunkSize: 1 << 20,
    entries,
  } as unknown as FilesManifest;
}

async function plan(
  base: Tree,
  theirs: Tree,
  ours: Tree,
  prefer?: 'ours' | 'theirs',
  take?: Take[],
): Promise<RebasePlan> {
  const contents = new Map<string, string>();
  const m = { base: manifest(base, contents), theirs: manifest(theirs, contents), ours: manifest(ours, contents) };
  const theirsContents = new Map(m.theirs.entries.filter((e) => e.digest).map((e) => [e.path, e.digest as string]));
  const p = await planRebase({
    ...m,
    theirsRef: 'a@2',
    ...(prefer ? { prefer } : {}),
    ...(take ? { take } : {}),
    async read(_side, e) {
      const d = contents.get(e.digest as string);
      assert.ok(d !== undefined, `read of unknown content ${e.path}`);
      return Buffer.from(d);
    },
  });
  // every 'version' content the plan names is A1's file at that path, as recorded
  for (const c of p.changeSet.changes) {
    if (c.op === 'put' && c.content.kind === 'version') {
      assert.equal(c.content.ref, 'a@2');
      assert.equal(c.content.digest, theirsContents.get(c.content.path), `${c.path}: A1's digest`);
    }
  }
  (p as RebasePlan & { contents: Map<string, string> }).contents = contents;
  return p;
}

const parent = (p: string) => p.slice(0, Math.max(1, p.lastIndexOf('/')));
const secs = (m: string) => Date.parse(`${m.slice(0, 19)}Z`) / 1000;
const iso = (s: number) => `${new Date(Math.floor(s) * 1000).toISOString().slice(0, 19)}.000000000Z`;

/** Applies a change set to a tree like a file system would, refusing what one would refuse. */
function apply(start: Tree, changes: Change[], contents: Map<string, string>): Tree {
  const t = clone(start);
  const isDir = (p: string) => p === '/' || t.get(p)?.type === 'dir';
  const children = (p: string) => [...t.keys()].filter((q) => q.startsWith(`${p}/`));
  for (const c of changes) {
    const where = `${c.op} ${c.path}`;
    if (c.op !== 'setattr' && c.op !== 'xattr' && c.op !== 'rm')
      assert.ok(isDir(parent(c.path)), `${where}: no directory ${parent(c.path)}`);
    const attrs = (n: Node) => {
      const a = c as { mode?: number; uid?: number; gid?: number; mtime?: number };
      if (a.mode !== undefined) n.mode = (n.mode & ~0o7777) | a.mode;
      if (a.uid !== undefined) n.uid = a.uid;
      if (a.gid !== undefined) n.gid = a.gid;
      if (a.mtime !== undefined) n.mtime = iso(a.mtime);
      return n;
    };
    switch (c.op) {
      case 'rm': {
        const n = t.get(c.path);
        assert.ok(n, `${where}: nothing there`);
        const kids = children(c.path);
        if (n.type === 'dir') assert.ok(c.recursive || kids.length === 0, `${where}: directory not empty`);
        for (const k of kids) t.delete(k);
        t.delete(c.path);
        break;
      }
      case 'put': {
        const old = t.get(c.path);
        assert.ok(!old || old.type === 'file', `${where}: a ${old?.type} is there`);
        let data: string;
        if (c.content.kind === 'bytes') data = Buffer.from(c.content.data).toString();
        else if (c.content.kind === 'version') data = contents.get(c.content.digest as string) as string;
        else throw new Error('file content in a plan');
        t.set(c.path, attrs(file(data, { mtime: T0 })));
        break;
      }
      case 'mkdir':
        assert.ok(!t.has(c.path), `${where}: exists`);
        t.set(c.path, attrs(dir()));
        break;
      case 'symlink':
        assert.ok(!t.has(c.path), `${where}: exists`);
        t.set(c.path, attrs(link(c.target)));
        break;
      case 'link': {
        assert.ok(!t.has(c.path), `${where}: exists`);
        const n = t.get(c.target);
        assert.ok(n?.type === 'file', `${where}: no file ${c.target}`);
        t.set(c.path, { ...n });
        break;
      }
      case 'setattr': {
        const n = t.get(c.path);
        assert.ok(n, `${where}: nothing there`);
        attrs(n);
        break;
      }
      case 'xattr': {
        const n = t.get(c.path);
        assert.ok(n, `${where}: nothing there`);
        n.xattrs = { ...(n.xattrs ?? {}) };
        if (c.value === null) {
          assert.ok(c.name in n.xattrs, `${where}: no xattr ${c.name}`);
          delete n.xattrs[c.name];
        } else n.xattrs[c.name] = Buffer.from(c.value).toString();
        if (Object.keys(n.xattrs).length === 0) delete n.xattrs;
        break;
      }
      default:
        throw new Error(`unexpected ${c.op}`);
    }
  }
  return t;
}

/** A tree as comparable text: path, type, content, mode, owner, mtime (seconds), xattrs. */
function show(t: Tree): string[] {
  return [...t]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(
      ([p, n]) =>
        `${p} ${n.type} ${n.type === 'file' ? JSON.stringify(n.data) : (n.target ?? '')} ${(n.mode & 0o7777).toString(8)} ${n.uid}:${n.gid} ${secs(n.mtime)} ${JSON.stringify(n.xattrs ?? {})}`,
    );
}

async function merged(base: Tree, theirs: Tree, ours: Tree, prefer?: 'ours' | 'theirs', take?: Take[]) {
  const p = await plan(base, theirs, ours, prefer, take);
  const contents = (p as RebasePlan & { contents: Map<string, string> }).contents;
  return { plan: p, result: p.summary.unresolved === 0 ? apply(ours, p.changeSet.changes, contents) : undefined };
}

const kinds = (cs: Conflict[]) => cs.map((c) => `${c.path} ${c.kind}${c.package ? ` ${c.package}` : ''}`);

/** A small base: a few directories, files, a link. */
function base(): Tree {
  return tree({
    '/etc': dir(),
    '/etc/a.conf': file('a=1\n'),
    '/etc/b.conf': file('b=1\n'),
    '/etc/m.conf': file('m\n'),
    '/etc/link': link('a.conf'),
    '/usr': dir(),
    '/usr/bin': dir(),
    '/usr/bin/tool': file('tool v1', { mode: 0o755 }),
    '/old': dir(),
    '/old/x': file('x'),
    '/old/sub': dir(),
    '/old/sub/y': file('y'),
  });
}

describe('rebase plan: no conflicts', () => {
  test('A1 changes land, REF changes stay, untouched paths untouched', async () => {
    const b = base();
    const theirs = clone(b);
    theirs.set('/etc/a.conf', file('a=2\n', { mtime: '2021-01-01T00:00:00.000000000Z' }));
    theirs.set('/usr/bin/new', file('new tool', { mode: 0o750, uid: 5, gid: 6 }));
    theirs.set('/usr/lib', dir({ mode: 0o700 }));
    theirs.set('/usr/lib/libz.so', file('libz', { xattrs: { 'user.k': 'v' } }));
    theirs.set('/usr/lib/libz.so.1', link('libz.so'));
    for (const p of ['/old', '/old/x', '/old/sub', '/old/sub/y']) theirs.delete(p);
    theirs.set('/etc/m.conf', file('m\n', { mode: 0o600 }));
    theirs.set('/etc/link', link('b.conf'));
    const ours = clone(b);
    ours.set('/opt', dir());
    ours.set('/opt/app', file('app'));
    ours.set('/etc/b.conf', file('b=ours\n'));
    ours.set('/etc/m.conf', file('m\n', { uid: 1000 })); // A1 changed the mode, REF the owner: both kept
    const want = clone(theirs);
    want.set('/opt', dir());
    want.set('/opt/app', file('app'));
    want.set('/etc/b.conf', file('b=ours\n'));
    want.set('/etc/m.conf', file('m\n', { mode: 0o600, uid: 1000 }));
    const { plan: p, result } = await merged(b, theirs, ours);
    assert.deepEqual(p.conflicts, []);
    assert.ok(result);
    assert.deepEqual(show(result), show(want));
    // the old directory goes entry by entry, no recursive rm needed
    assert.ok(!p.changeSet.changes.some((c) => c.op === 'rm' && c.recursive));
  });

  test('the same change on both sides is no conflict and no operation', async () => {
    const b = base();
    const theirs = clone(b);
    theirs.set('/etc/a.conf', file('same\n'));
    theirs.delete('/etc/b.conf');
    theirs.set('/etc/new', file('new'));
    const ours = clone(theirs);
    ours.set('/etc/new', file('new', { mtime: '2022-02-02T00:00:00.000000000Z' })); // only the time differs
    const { plan: p, result } = await merged(b, theirs, ours);
    assert.deepEqual(p.conflicts, []);
    assert.deepEqual(p.changeSet.changes, []);
    assert.deepEqual(show(result as Tree), show(ours));
  });

  test('hard links of A1 are carried as links', async () => {
    const b = base();
    const theirs = clone(b);
    theirs.set('/usr/bin/x1', file('linked', { ino: 7 }));
    theirs.set('/usr/bin/x2', file('linked', { ino: 7 }));
    const { plan: p, result } = await merged(b, theirs, clone(b));
    assert.deepEqual(p.conflicts, []);
    assert.deepEqual(
      p.changeSet.changes.filter((c) => c.path.startsWith('/usr/bin/x')).map((c) => c.op),
      ['put', 'link'],
    );
    assert.equal(result?.get('/usr/bin/x2')?.data, 'linked');
  });
});

describe('rebase plan: conflicts are found, never overwritten', () => {
  const cases: Array<{ name: string; theirs: (t: Tree) => void; ours: (t: Tree) => void; expect: string[] }> = [
    {
      name: 'content vs content',
      theirs: (t) => t.set('/etc/a.conf', file('a=theirs\n')),
      ours: (t) => t.set('/etc/a.conf', file('a=ours\n')),
      expect: ['/etc/a.conf content'],
    },
    {
      name: 'content vs delete',
      theirs: (t) => t.set('/etc/a.conf', file('a=theirs\n')),
      ours: (t) => t.delete('/etc/a.conf'),
      expect: ['/etc/a.conf delete'],
    },
    {
      name: 'delete vs content',
      theirs: (t) => t.delete('/etc/a.conf'),
      ours: (t) => t.set('/etc/a.conf', file('a=ours\n')),
      expect: ['/etc/a.conf delete'],
    },
    {
      name: 'type change vs content',
      theirs: (t) => t.set('/etc/a.conf', link('b.conf')),
      ours: (t) => t.set('/etc/a.conf', file('a=ours\n')),
      expect: ['/etc/a.conf type'],
    },
    {
      name: 'link target vs link target',
      theirs: (t) => t.set('/etc/link', link('b.conf')),
      ours: (t) => t.set('/etc/link', link('m.conf')),
      expect: ['/etc/link content'],
    },
    {
      name: 'the same field, different values',
      theirs: (t) => t.set('/etc/m.conf', file('m\n', { mode: 0o600 })),
      ours: (t) => t.set('/etc/m.conf', file('m\n', { mode: 0o640 })),
      expect: ['/etc/m.conf metadata'],
    },
    {
      name: 'an xattr set differently',
      theirs: (t) => t.set('/etc/m.conf', file('m\n', { xattrs: { 'user.a': '1' } })),
      ours: (t) => t.set('/etc/m.conf', file('m\n', { xattrs: { 'user.a': '2' } })),
      expect: ['/etc/m.conf metadata'],
    },
    {
      name: 'both add a path differently',
      theirs: (t) => t.set('/etc/new', file('theirs')),
      ours: (t) => t.set('/etc/new', file('ours')),
      expect: ['/etc/new add'],
    },
    {
      name: 'A1 removes a directory REF put a file in',
      theirs: (t) => {
        for (const p of ['/old', '/old/x', '/old/sub', '/old/sub/y']) t.delete(p);
      },
      ours: (t) => t.set('/old/sub/mine', file('mine')),
      expect: ['/old delete'],
    },
    {
      name: 'A1 adds into a directory REF removed',
      theirs: (t) => t.set('/old/sub/z', file('z')),
      ours: (t) => {
        for (const p of ['/old', '/old/x', '/old/sub', '/old/sub/y']) t.delete(p);
      },
      expect: ['/old delete'],
    },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const b = base();
      const theirs = clone(b);
      c.theirs(theirs);
      const ours = clone(b);
      c.ours(ours);
      const stop = await merged(b, theirs, ours);
      assert.deepEqual(kinds(stop.plan.conflicts), c.expect);
      assert.equal(stop.plan.summary.unresolved, c.expect.length);
      for (const x of stop.plan.conflicts) assert.equal(x.resolution, undefined);
      // --ours: REF's state at the conflicting paths, A1's elsewhere
      const o = await merged(b, theirs, ours, 'ours');
      assert.equal(o.plan.summary.unresolved, 0);
      const r = o.result as Tree;
      for (const x of o.plan.conflicts) {
        assert.equal(x.resolution, 'ours');
        for (const [p, n] of ours)
          if (p === x.path || p.startsWith(`${x.path}/`))
            assert.deepEqual(show(tree({ [p]: r.get(p) as Node })), show(tree({ [p]: n })), p);
        if (!ours.has(x.path)) assert.ok(!r.has(x.path), `${x.path} stays absent`);
      }
      // --theirs: A1's state at the conflicting paths
      const t = await merged(b, theirs, ours, 'theirs');
      assert.equal(t.plan.summary.unresolved, 0);
      const rt = t.result as Tree;
      for (const x of t.plan.conflicts) {
        if (theirs.has(x.path))
          assert.deepEqual(
            show(tree({ [x.path]: rt.get(x.path) as Node })),
            show(tree({ [x.path]: theirs.get(x.path) as Node })),
          );
        else assert.ok(!rt.has(x.path), `${x.path} removed as A1 did`);
      }
    });
  }
});

/** A dpkg status stanza. */
const stanza = (name: string, version: string, extra = '') =>
  `Package: ${name}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: ${version}\nDescription: ${name}\n multi-line ${version}${extra}`;
const status = (...s: string[]) => `${s.join('\n\n')}\n`;

function debBase(): Tree {
  return tree({
    '/var': dir(),
    '/var/lib': dir(),
    '/var/lib/dpkg': dir(),
    '/var/lib/dpkg/info': dir(),
    '/var/lib/dpkg/status': file(status(stanza('base-files', '12'), stanza('libfoo', '1.0-1'), stanza('tool', '2.0'))),
    '/var/lib/dpkg/status-old': file('old\n'),
    '/var/lib/dpkg/info/libfoo.list': file('/usr/lib/libfoo.so.1\n'),
    '/var/lib/dpkg/info/libfoo.md5sums': file('aaa  usr/lib/libfoo.so.1\n'),
    '/var/lib/dpkg/info/tool.list': file('/usr/bin/tool\n'),
    '/var/log': dir(),
    '/var/log/dpkg.log': file('install base-files\n'),
    '/usr': dir(),
    '/usr/lib': dir(),
    '/usr/lib/libfoo.so.1': file('libfoo 1.0'),
  });
}

describe('rebase plan: package databases', () => {
  test('dpkg status merged per package, info files follow, logs get both appends', async () => {
    const b = debBase();
    const theirs = clone(b);
    theirs.set(
      '/var/lib/dpkg/status',
      file(status(stanza('base-files', '12'), stanza('libfoo', '1.1-1'), stanza('tool', '2.0'), stanza('newlib', '3'))),
    );
    theirs.set('/var/lib/dpkg/status-old', file('theirs old\n'));
    theirs.set('/var/lib/dpkg/info/libfoo.md5sums', file('bbb  usr/lib/libfoo.so.1\n'));
    theirs.set('/var/lib/dpkg/info/newlib.list', file('/usr/lib/newlib\n'));
    theirs.set('/usr/lib/libfoo.so.1', file('libfoo 1.1'));
    theirs.set('/var/log/dpkg.log', file('install base-files\nupgrade libfoo\n'));
    const ours = clone(b);
    ours.set(
      '/var/lib/dpkg/status',
      file(status(stanza('base-files', '12'), stanza('libfoo', '1.0-1'), stanza('tool', '2.0'), stanza('app', '0.1'))),
    );
    ours.set('/var/lib/dpkg/status-old', file('ours old\n'));
    ours.set('/var/lib/dpkg/info/app.list', file('/opt/app\n'));
    ours.set('/var/log/dpkg.log', file('install base-files\ninstall app\n'));
    const { plan: p, result } = await merged(b, theirs, ours);
    assert.deepEqual(p.conflicts, []);
    const r = result as Tree;
    assert.equal(
      r.get('/var/lib/dpkg/status')?.data,
      status(
        stanza('base-files', '12'),
        stanza('libfoo', '1.1-1'),
        stanza('tool', '2.0'),
        stanza('app', '0.1'),
        stanza('newlib', '3'),
      ),
    );
    assert.equal(r.get('/var/lib/dpkg/info/libfoo.md5sums')?.data, 'bbb  usr/lib/libfoo.so.1\n');
    assert.equal(r.get('/var/lib/dpkg/info/newlib.list')?.data, '/usr/lib/newlib\n');
    assert.equal(r.get('/var/lib/dpkg/info/app.list')?.data, '/opt/app\n');
    assert.equal(r.get('/var/lib/dpkg/status-old')?.data, 'ours old\n');
    assert.equal(r.get('/var/log/dpkg.log')?.data, 'install base-files\ninstall app\nupgrade libfoo\n');
    assert.equal(r.get('/usr/lib/libfoo.so.1')?.data, 'libfoo 1.1');
    assert.deepEqual(
      p.merged.map((m) => `${m.path} ${m.how} ${(m.fromTheirs ?? []).join(',')}`),
      ['/var/lib/dpkg/status package-stanzas libfoo:amd64,newlib:amd64', '/var/log/dpkg.log append '],
    );
  });

  test('a package both sides changed differently is a conflict naming it; its info files go with it', async () => {
    const b = debBase();
    const theirs = clone(b);
    theirs.set(
      '/var/lib/dpkg/status',
      file(status(stanza('base-files', '12'), stanza('libfoo', '1.1-1'), stanza('tool', '2.0'))),
    );
    theirs.set('/var/lib/dpkg/info/libfoo.md5sums', file('bbb  usr/lib/libfoo.so.1\n'));
    theirs.set('/var/lib/dpkg/info/tool.list', file('/usr/bin/tool\n/usr/bin/tool2\n')); // a changed info file, its package not
    const ours = clone(b);
    ours.set(
      '/var/lib/dpkg/status',
      file(status(stanza('base-files', '12'), stanza('libfoo', '1.2-1'), stanza('tool', '2.0'))),
    );
    ours.set('/var/lib/dpkg/info/libfoo.md5sums', file('ccc  usr/lib/libfoo.so.1\n'));
    ours.set('/var/lib/dpkg/info/tool.list', file('/usr/bin/tool\n/usr/bin/tool3\n'));
    const stop = await merged(b, theirs, ours);
    assert.deepEqual(kinds(stop.plan.conflicts), [
      '/var/lib/dpkg/info/tool.list content',
      '/var/lib/dpkg/status package libfoo:amd64',
    ]);
    assert.match(stop.plan.conflicts[1].detail ?? '', /1\.0-1.*ours 1\.2-1.*theirs 1\.1-1/);
    const t = await merged(b, theirs, ours, 'theirs');
    assert.equal(t.result?.get('/var/lib/dpkg/status')?.data, theirs.get('/var/lib/dpkg/status')?.data);
    assert.equal(t.result?.get('/var/lib/dpkg/info/libfoo.md5sums')?.data, 'bbb  usr/lib/libfoo.so.1\n');
    const o = await merged(b, theirs, ours, 'ours');
    assert.equal(o.result?.get('/var/lib/dpkg/status')?.data, ours.get('/var/lib/dpkg/status')?.data);
    assert.equal(o.result?.get('/var/lib/dpkg/info/libfoo.md5sums')?.data, 'ccc  usr/lib/libfoo.so.1\n');
    // decided one by one: the package from A1 (its info files follow), the info file of tool from REF
    const take = parseResolutions(
      '# from a dry run\ntheirs package:libfoo:amd64\nours /var/lib/dpkg/info/tool.list  # keep\n',
    );
    const each = await merged(b, theirs, ours, undefined, take);
    assert.equal(each.plan.summary.unresolved, 0, JSON.stringify(each.plan.conflicts));
    // libfoo's md5sums (both changed it) is listed and follows its package's decision
    assert.deepEqual(
      each.plan.conflicts.map((c) => `${c.path} ${c.resolution}`),
      ['/var/lib/dpkg/info/libfoo.md5sums theirs', '/var/lib/dpkg/info/tool.list ours', '/var/lib/dpkg/status theirs'],
    );
    assert.equal(each.result?.get('/var/lib/dpkg/status')?.data, theirs.get('/var/lib/dpkg/status')?.data);
    assert.equal(each.result?.get('/var/lib/dpkg/info/libfoo.md5sums')?.data, 'bbb  usr/lib/libfoo.so.1\n');
    assert.equal(each.result?.get('/var/lib/dpkg/info/tool.list')?.data, '/usr/bin/tool\n/usr/bin/tool3\n');
    // half decided: the other conflict still stops it
    const half = await merged(b, theirs, ours, undefined, [{ side: 'theirs', path: 'package:libfoo:amd64' }]);
    assert.equal(half.plan.summary.unresolved, 1);
    assert.equal(half.result, undefined);
    // a decision naming no conflict is an error, never silently ignored
    await assert.rejects(
      merged(b, theirs, ours, undefined, [{ side: 'theirs', path: '/etc/nothing-here' }]),
      (e: unknown) => e instanceof StrataError && e.code === 'USAGE' && /names no conflict/.test(e.message),
    );
    assert.throws(() => parseResolutions('theirs etc/relative\n', 'r.txt'), /r\.txt:1/);
    assert.throws(() => parseResolutions('mine /etc/x\n', 'r.txt'), /r\.txt:1/);
  });

  test('a status file that does not parse is a whole-file conflict', async () => {
    const b = debBase();
    const theirs = clone(b);
    theirs.set('/var/lib/dpkg/status', file('Status: no package field\n'));
    const ours = clone(b);
    ours.set('/var/lib/dpkg/status', file(status(stanza('base-files', '13'))));
    const stop = await merged(b, theirs, ours);
    assert.deepEqual(kinds(stop.plan.conflicts), ['/var/lib/dpkg/status content']);
    assert.match(stop.plan.conflicts[0].detail ?? '', /Package field/);
  });
});

/** xorshift32: the same trees on every run. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

/** One random edit of a tree: rewrite, chmod, chown, delete (with its subtree), add, retarget. */
function mutate(t: Tree, r: (n: number) => number, tag: string, k: number) {
  const paths = [...t.keys()];
  // half the edits on a few hot paths, so both sides often meet on one
  const hot = ['/etc/a.conf', '/etc/link', '/usr/bin/tool'].filter((x) => t.has(x));
  const p = hot.length > 0 && r(2) === 0 ? hot[r(hot.length)] : paths[r(paths.length)];
  const n = t.get(p) as Node;
  switch (r(6)) {
    case 0:
      if (n.type === 'file') t.set(p, { ...n, data: `${tag}${k % 3}` });
      break;
    case 1:
      t.set(p, { ...n, mode: [0o600, 0o640, 0o700][r(3)] });
      break;
    case 2:
      t.set(p, { ...n, uid: r(3) });
      break;
    case 3:
      for (const q of paths) if (q === p || q.startsWith(`${p}/`)) t.delete(q);
      break;
    case 4: {
      const d = n.type === 'dir' ? p : parent(p);
      t.set(`${d === '/' ? '' : d}/n${r(3)}`, r(2) ? file(`${tag}${r(2)}`) : dir());
      break;
    }
    default:
      if (n.type === 'symlink') t.set(p, { ...n, target: `t${r(3)}` });
  }
}

describe('rebase plan: the rule on random trees', () => {
  test('REF changes kept, A1 changes taken, every overlap listed', async () => {
    const key = (n: Node | undefined) => (n ? show(tree({ '/x': n }))[0] : 'absent');
    let conflicted = 0;
    let clean = 0;
    let bothChanged = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed);
      const b = base();
      const theirs = clone(b);
      const ours = clone(b);
      for (let k = 0; k < 1 + r(4); k++) mutate(theirs, r, 'T', k);
      for (let k = 0; k < 1 + r(4); k++) mutate(ours, r, 'O', k);
      for (const prefer of [undefined, 'ours', 'theirs'] as const) {
        const { plan: p, result } = await merged(b, theirs, ours, prefer);
        if (!prefer && p.summary.unresolved > 0) {
          conflicted++;
          continue;
        }
        if (!prefer) clean++;
        assert.ok(result, `seed ${seed}: applied`);
        const at = (x: string) => p.conflicts.some((c) => x === c.path);
        const under = (x: string) => p.conflicts.some((c) => x.startsWith(`${c.path}/`));
        for (const x of new Set([...b.keys(), ...theirs.keys(), ...ours.keys()])) {
          const got = result as Tree;
          const [kb, kt, ko, kr] = [key(b.get(x)), key(theirs.get(x)), key(ours.get(x)), key(got.get(x))];
          const why = `seed ${seed} prefer ${prefer} ${x}: base ${kb} theirs ${kt} ours ${ko} got ${kr}`;
          if (at(x)) {
            assert.equal(kr, prefer === 'theirs' ? kt : ko, why);
            continue;
          }
          if (under(x)) {
            // inside a conflicting directory: one side's state, never a third
            assert.ok(kr === kt || kr === ko, why);
            continue;
          }
          if (kt !== kb && ko !== kb && kt !== ko) bothChanged++;
          if (kt === kb) assert.equal(kr, ko, why);
          else if (ko === kb) assert.equal(kr, kt, why);
          else if (kt !== ko) {
            // both changed, no conflict listed: different fields of one entry, merged
            const [nb, nt, no, nr] = [b.get(x), theirs.get(x), ours.get(x), got.get(x)];
            assert.ok(nb && nt && no && nr && nb.type === nt.type && nt.type === no.type, why);
            for (const f of ['data', 'target', 'mode', 'uid'] as const) {
              // a field both changed differently must have been listed
              assert.ok(nt[f] === nb[f] || no[f] === nb[f] || nt[f] === no[f], `${why}: ${f} changed on both sides`);
              assert.equal(nr[f], nt[f] !== nb[f] ? nt[f] : no[f], `${why}: ${f}`);
            }
          } else assert.equal(kr, ko, why);
        }
      }
    }
    // the trees must exercise both outcomes
    assert.ok(conflicted > 30 && clean > 30, `conflicted ${conflicted}, clean ${clean}`);
    assert.ok(bothChanged > 30, `paths both sides changed differently: ${bothChanged}`);
  });

  test('--take decides each conflict on its own: each listed path gets the side named for it', async () => {
    const key = (n: Node | undefined) => (n ? show(tree({ '/x': n }))[0] : 'absent');
    let decided = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed);
      const b = base();
      const theirs = clone(b);
      const ours = clone(b);
      for (let k = 0; k < 1 + r(4); k++) mutate(theirs, r, 'T', k);
      for (let k = 0; k < 1 + r(4); k++) mutate(ours, r, 'O', k);
      const first = await plan(b, theirs, ours);
      if (first.conflicts.length === 0) continue;
      const take: Take[] = first.conflicts.map((c) => ({ side: r(2) ? 'theirs' : 'ours', path: c.path }));
      let m = await merged(b, theirs, ours, undefined, take);
      // a decision can raise a structural conflict of its own (taking A1's file into a
      // directory REF removed): decided in a next round, as a user would after a dry run
      for (let round = 0; round < 4 && m.plan.summary.unresolved > 0; round++) {
        for (const c of m.plan.conflicts)
          if (!c.resolution) take.push({ side: r(2) ? 'theirs' : 'ours', path: c.path });
        m = await merged(b, theirs, ours, undefined, take);
      }
      const { plan: p, result } = m;
      assert.equal(p.summary.unresolved, 0, `seed ${seed}`);
      assert.ok(result, `seed ${seed}: applied`);
      for (const t of take) {
        // a structural conflict (a directory's) can go away once a path inside it is decided
        const c = p.conflicts.find((x) => x.path === t.path);
        if (!c) continue;
        assert.equal(c.resolution, t.side, `seed ${seed} ${t.path}`);
        // a conflict inside another's directory follows the outer decision
        if (take.some((o) => t.path.startsWith(`${o.path}/`))) continue;
        const want = key((t.side === 'theirs' ? theirs : ours).get(t.path));
        assert.equal(key(result.get(t.path)), want, `seed ${seed} ${t.side} ${t.path}`);
        decided++;
      }
    }
    assert.ok(decided > 50, `decisions checked: ${decided}`);
  });
});
