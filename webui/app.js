// The Strata web UI: a Preact + htm single page over the library service's /v1 API (the
// only thing it talks to). Routing is by the URL's hash (#/images?..., #/v/NAME/N, ...), so
// every page has a shareable URL, the back button works, and the server serves one index.html.

import htm from 'htm';
import { h, render } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';

const html = htm.bind(h);
const TOKEN_KEY = 'strata.token';

// ---- the API

/** An error from the API, readable: the problem document's title and detail. */
class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ? `${problem.title ?? 'Error'} (${status}): ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
  }
}

async function call(path, query = {}, as = 'json') {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== '') u.searchParams.set(k, String(v));
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  if (as === 'head') headers.range = 'bytes=0-65535';
  const r = await fetch(u, { headers });
  if (!r.ok) {
    let p = null;
    try {
      p = await r.json();
    } catch {
      // not a problem document
    }
    throw new ApiError(r.status, p);
  }
  if (as === 'head') return new Uint8Array(await r.arrayBuffer());
  return r.json();
}

const enc = encodeURIComponent;
const vpath = (name, v) => `/v1/images/${enc(name)}/versions/${enc(v)}`;

/** Run `load` whenever `deps` change: [value, error, loading]. */
function useApi(load, deps) {
  const [state, setState] = useState({ value: undefined, error: undefined, loading: true });
  useEffect(() => {
    let live = true;
    setState({ value: undefined, error: undefined, loading: true });
    load().then(
      (value) => live && setState({ value, error: undefined, loading: false }),
      (error) => live && setState({ value: undefined, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, deps);
  return state;
}

// ---- routing

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/images';
  const [p, q = ''] = raw.split('?');
  return {
    parts: p.split('/').filter(Boolean).map(decodeURIComponent),
    query: Object.fromEntries(new URLSearchParams(q)),
  };
}
function href(parts, query = {}) {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== '')).toString();
  return `#/${parts.map(enc).join('/')}${q ? `?${q}` : ''}`;
}
const navigate = (parts, query) => {
  location.hash = href(parts, query);
};

// ---- small parts

const fmtBytes = (n) => {
  if (n == null) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < u.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? x : x.toFixed(1)} ${u[i]}`;
};
const Err = ({ error }) => html`<div class="error" role="alert">${error.message}</div>`;
const Loading = () => html`<p class="muted" aria-busy="true">Loading…</p>`;
const VLink = ({ image, number }) => html`<a href=${href(['v', image, String(number)])}>${image}@${number}</a>`;
const Tags = ({ tags }) => tags.map((t) => html`<span class="tag">${t}</span>`);

// ---- pages

function SignIn() {
  const [token, setToken] = useState('');
  const [error, setError] = useState();
  const submit = async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    try {
      await call('/v1/whoami');
      dispatchEvent(new Event('strata-auth'));
      navigate(['images']);
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      setError(err);
    }
  };
  return html`<h1>Sign in</h1>
    <p>Paste an API token (<code>strata token create</code>). It is kept in this tab only (sessionStorage).</p>
    ${error && html`<${Err} error=${error} />`}
    <form onSubmit=${submit}>
      <label>Token <input type="password" name="token" autocomplete="off" value=${token} onInput=${(e) => setToken(e.currentTarget.value)} required /></label>
      <button type="submit">Sign in</button>
    </form>`;
}

function Images({ query }) {
  const { project = '', visibility = '', tag = '', os = '' } = query;
  const key = href(['images'], query);
  const st = useApi(async () => {
    const page = await call('/v1/images', { project, visibility, limit: 1000 });
    let items = page.items;
    if (tag) {
      // a tag names a version: keep the images with a version tagged so
      const has = await Promise.all(
        items.map((i) => call(`/v1/images/${enc(i.name)}/versions`, { tag, limit: 1 }).then((p) => p.total > 0)),
      );
      items = items.filter((_, k) => has[k]);
    }
    if (os) {
      const hits = await call('/v1/search', { os, limit: 1000 });
      const names = new Set(hits.items.map((x) => x.image));
      items = items.filter((i) => names.has(i.name));
    }
    return { items, key };
  }, [project, visibility, tag, os]);
  // the first render after a change of query still holds the previous answer: only an
  // answer to this query is shown (its marker, data-for, is what the tests wait for)
  const items = st.value?.key === key ? st.value.items : undefined;
  const set = (k) => (e) => navigate(['images'], { ...query, [k]: e.currentTarget.value });
  return html`<h1>Images</h1>
    <form class="filters" role="search" onSubmit=${(e) => e.preventDefault()}>
      <label>Project <input name="project" value=${project} onChange=${set('project')} /></label>
      <label>OS <input name="os" value=${os} onChange=${set('os')} /></label>
      <label>Tag <input name="tag" value=${tag} onChange=${set('tag')} /></label>
      <label>Visibility
        <select name="visibility" value=${visibility} onChange=${set('visibility')}>
          <option value="">any</option><option>private</option><option>shared</option><option>public</option>
        </select>
      </label>
    </form>
    ${st.loading && html`<${Loading} />`}
    ${st.error && html`<${Err} error=${st.error} />`}
    ${
      items &&
      html`<table>
      <thead><tr><th>Image</th><th>Project</th><th>Visibility</th><th>Versions</th><th>Latest</th><th>Tags</th></tr></thead>
      <tbody>
        ${items.map(
          (i) => html`<tr>
            <td>${i.latest !== null ? html`<a href=${href(['v', i.name, String(i.latest)])}>${i.name}</a>` : i.name}</td>
            <td>${i.project}</td><td>${i.visibility}</td><td>${i.versions}</td>
            <td>${i.latest !== null ? html`<${VLink} image=${i.name} number=${i.latest} />` : '—'}</td>
            <td><${Tags} tags=${i.tags} /></td>
          </tr>`,
        )}
      </tbody>
    </table>
    <p class="muted" data-for=${key}>${items.length} image(s)</p>`
    }`;
}

function Packages({ packages }) {
  const [q, setQ] = useState('');
  const [sort, setSort] = useState({ key: 'name', dir: 1 });
  const rows = useMemo(() => {
    const f = q.toLowerCase();
    return packages
      .filter((p) => !f || p.name.toLowerCase().includes(f) || p.version.toLowerCase().includes(f))
      .sort((a, b) => String(a[sort.key]).localeCompare(String(b[sort.key]), undefined, { numeric: true }) * sort.dir);
  }, [packages, q, sort]);
  const th = (
    key,
    label,
  ) => html`<th aria-sort=${sort.key === key ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none'}>
    <button type="button" onClick=${() => setSort({ key, dir: sort.key === key ? -sort.dir : 1 })}>${label}</button></th>`;
  return html`<label>Search packages <input type="search" value=${q} onInput=${(e) => setQ(e.currentTarget.value)} /></label>
    <p class="muted">${rows.length} of ${packages.length}</p>
    <table><thead><tr>${th('name', 'Name')}${th('version', 'Version')}${th('arch', 'Arch')}</tr></thead>
    <tbody>${rows.slice(0, 2000).map((p) => html`<tr><td>${p.name}</td><td>${p.epoch ? `${p.epoch}:` : ''}${p.version}${p.release ? `-${p.release}` : ''}</td><td>${p.arch}</td></tr>`)}</tbody></table>`;
}

function OsRoot({ root }) {
  const os = [
    root.productName ?? root.distro,
    root.versionMajor != null ? `${root.versionMajor}.${root.versionMinor ?? 0}` : null,
  ];
  return html`<section>
    <h3>${[root.distro ?? root.osType, os[1]].filter(Boolean).join(' ')}${root.root ? html` <span class="muted">(${root.root})</span>` : ''}</h3>
    <dl class="summary">
      <dt>OS</dt><dd>${root.osType} ${root.distro ?? ''}</dd>
      <dt>Version</dt><dd>${os[1] ?? '—'}</dd>
      <dt>Arch</dt><dd>${root.arch ?? '—'}</dd>
      <dt>Hostname</dt><dd>${root.hostname ?? '—'}</dd>
      <dt>Kernels</dt><dd>${root.kernels.map((k) => k.version).join(', ') || '—'}</dd>
      <dt>Users</dt><dd>${root.users.map((u) => `${u.name} (${u.uid})`).join(', ') || '—'}</dd>
      <dt>Mounts</dt><dd>${
        Object.entries(root.mountpoints ?? {})
          .map(([m, d]) => `${m} ← ${d.device}`)
          .join(', ') || '—'
      }</dd>
    </dl>
    <h4>Packages</h4>
    <${Packages} packages=${root.packages} />
  </section>`;
}

function VersionPage({ name, version }) {
  const st = useApi(async () => {
    const base = vpath(name, version);
    const [v, prov, insp] = await Promise.all([
      call(base),
      call(`${base}/provenance`),
      call(`${base}/inspection`).catch((e) => ({ error: e })),
    ]);
    return { v, prov, insp };
  }, [name, version]);
  if (st.loading) return html`<${Loading} />`;
  if (st.error) return html`<h1>${name}@${version}</h1><${Err} error=${st.error} />`;
  const { v, prov, insp } = st.value;
  return html`<h1>${v.ref}</h1>
    <nav class="actions">
      <a href=${href(['f', v.image, String(v.number)], { path: '/' })}>Browse files</a>
      ${' · '}
      ${v.parents[0] && html`<a href=${href(['diff'], { a: `${v.parents[0].image}@${v.parents[0].number}`, b: v.ref })}>Diff with parent</a>`}
    </nav>
    <section><h2>Version</h2>
    <dl class="summary">
      <dt>Created</dt><dd>${v.created}${v.createdBy ? ` by ${v.createdBy}` : ''}</dd>
      <dt>Source</dt><dd>${v.sourceName ?? '—'} (${v.sourceFormat ?? v.layout.sourceFormat ?? '?'})</dd>
      <dt>Virtual size</dt><dd>${fmtBytes(v.virtualSize)}</dd>
      <dt>Used / stored / new</dt><dd>${fmtBytes(v.usedBytes)} / ${fmtBytes(v.storedBytes)} / ${fmtBytes(v.newBytes)}</dd>
      <dt>Tags</dt><dd><${Tags} tags=${v.tags} /></dd>
      <dt>Parents</dt><dd>${prov.parents.length ? prov.parents.map((p) => html`<${VLink} ...${p} /> `) : '—'}</dd>
      <dt>Children</dt><dd>${prov.children.length ? prov.children.map((p) => html`<${VLink} ...${p} /> `) : '—'}</dd>
    </dl></section>
    <section><h2>Inspection</h2>
    ${insp.error ? html`<${Err} error=${insp.error} />` : insp.roots.length === 0 ? html`<p>No operating system found.</p>` : insp.roots.map((r) => html`<${OsRoot} root=${r} />`)}
    </section>`;
}

const MODE_TYPES = { dir: 'd', file: '-', symlink: 'l' };
const perm = (m) => [256, 128, 64, 32, 16, 8, 4, 2, 1].map((b, i) => (m & b ? 'rwx'[i % 3] : '-')).join('');

function hexHead(bytes) {
  const lines = [];
  for (let o = 0; o < Math.min(bytes.length, 4096); o += 16) {
    const row = bytes.subarray(o, o + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const asc = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${o.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join('\n');
}

/** Where the symlink at `at` with `target` points, as an absolute path. */
function resolveLink(at, target) {
  const out = target.startsWith('/') ? [] : at.split('/').filter(Boolean).slice(0, -1);
  for (const c of target.split('/')) {
    if (c === '..') out.pop();
    else if (c && c !== '.') out.push(c);
  }
  return `/${out.join('/')}`;
}

function FilePage({ name, version, path, offset = 0 }) {
  const st = useApi(async () => {
    const base = vpath(name, version);
    const stat = await call(`${base}/files/stat`, { path });
    if (stat.type === 'dir') {
      const ls = await call(`${base}/files`, { path, limit: 1000, offset });
      return { stat, ls };
    }
    if (stat.type !== 'file') return { stat };
    const bytes = await call(`${base}/files/content`, { path }, 'head');
    const text = bytes.includes(0) ? null : new TextDecoder('utf-8', { fatal: false }).decode(bytes);
    return { stat, bytes, text };
  }, [name, version, path, offset]);
  const parts = path.split('/').filter(Boolean);
  const crumbs = html`<nav class="crumbs" aria-label="path">
    <a href=${href(['f', name, version], { path: '/' })}>/</a>
    ${parts.map((p, i) => html`<a href=${href(['f', name, version], { path: `/${parts.slice(0, i + 1).join('/')}` })}>${p}</a>/`)}
  </nav>`;
  const title = html`<h1><a href=${href(['v', name, version])}>${name}@${version}</a>: ${path}</h1>${crumbs}`;
  if (st.loading) return html`${title}<${Loading} />`;
  if (st.error) return html`${title}<${Err} error=${st.error} />`;
  const { stat, ls, bytes, text } = st.value;
  const statView = html`<section><h2>Stat</h2><dl class="summary">
    <dt>Type</dt><dd>${stat.type}</dd>
    <dt>Mode</dt><dd>${(MODE_TYPES[stat.type] ?? '?') + perm(stat.mode)} (${(stat.mode & 0o7777).toString(8)})</dd>
    <dt>Owner</dt><dd>${stat.uid}:${stat.gid}</dd>
    <dt>Size</dt><dd>${stat.size} B</dd>
    <dt>Links / inode</dt><dd>${stat.nlink} / ${stat.ino}</dd>
    <dt>mtime</dt><dd>${stat.mtime ?? '—'}</dd>
    <dt>ctime</dt><dd>${stat.ctime ?? '—'}</dd>
    ${stat.target !== undefined && html`<dt>Target</dt><dd><a href=${href(['f', name, version], { path: resolveLink(path, stat.target) })} data-target>${stat.target}</a></dd>`}
    <dt>xattrs</dt><dd>${stat.xattrs.join(', ') || '—'}</dd>
    ${stat.digest && html`<dt>Digest</dt><dd><code>${stat.digest}</code></dd>`}
  </dl></section>`;
  return html`${title}
    ${
      ls &&
      html`<table><thead><tr><th>Name</th><th>Type</th><th>Size</th><th>Mode</th><th>mtime</th></tr></thead><tbody>
      ${ls.items.map((e) => {
        const base = e.path.split('/').pop();
        return html`<tr><td><a href=${href(['f', name, version], { path: e.path })}>${base}${e.type === 'dir' ? '/' : ''}</a></td>
          <td>${e.type}</td><td>${e.size}</td><td>${(MODE_TYPES[e.type] ?? '?') + perm(e.mode)}</td><td>${e.mtime ?? ''}</td></tr>`;
      })}
    </tbody></table>
    ${
      ls.total > ls.items.length &&
      html`<p class="muted">entries ${offset + 1}–${offset + ls.items.length} of ${ls.total}
        ${offset > 0 && html` <a href=${href(['f', name, version], { path, offset: offset > 1000 ? offset - 1000 : undefined })}>previous</a>`}
        ${offset + ls.items.length < ls.total && html` <a href=${href(['f', name, version], { path, offset: offset + 1000 })}>next</a>`}</p>`
    }`
    }
    ${
      bytes &&
      html`<section><h2>${text !== null ? 'Text' : 'Hex head'}${bytes.length < stat.size ? ` (first ${bytes.length} of ${stat.size} B)` : ''}</h2>
      <pre class="file" tabindex="0" data-kind=${text !== null ? 'text' : 'hex'}>${text ?? hexHead(bytes)}</pre></section>`
    }
    ${statView}`;
}

function DiffPage({ a = '', b = '' }) {
  const [fa, setA] = useState(a);
  const [fb, setB] = useState(b);
  const st = useApi(async () => (a && b ? call('/v1/diff', { a, b, packages: true }) : null), [a, b]);
  const list = (title, items, key, show) =>
    html`<section><h2>${title} (${items.length})</h2>${items.length === 0 ? html`<p class="muted">none</p>` : html`<ul data-list=${key}>${items.slice(0, 2000).map((x) => html`<li>${show(x)}</li>`)}</ul>`}</section>`;
  const [ia, na] = a.split('@');
  const [ib, nb] = b.split('@');
  const fileLink = (img, n, p) => (n ? html`<a href=${href(['f', img, n], { path: p })}>${p}</a>` : p);
  return html`<h1>Diff</h1>
    <form class="filters" onSubmit=${(e) => {
      e.preventDefault();
      navigate(['diff'], { a: fa, b: fb });
    }}>
      <label>From (IMAGE@N) <input name="a" value=${fa} onInput=${(e) => setA(e.currentTarget.value)} required /></label>
      <label>To (IMAGE@N) <input name="b" value=${fb} onInput=${(e) => setB(e.currentTarget.value)} required /></label>
      <button type="submit">Compare</button>
    </form>
    ${st.loading && a && html`<${Loading} />`}
    ${st.error && html`<${Err} error=${st.error} />`}
    ${
      st.value &&
      html`<p>${st.value.a} → ${st.value.b}: ${st.value.files.summary.added} added, ${st.value.files.summary.removed} removed, ${st.value.files.summary.changed} changed, ${st.value.files.summary.metadata} metadata only</p>
      ${list('Added', st.value.files.added, 'added', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${x.type}, ${fmtBytes(x.size)}</span>`)}
      ${list('Removed', st.value.files.removed, 'removed', (x) => html`${fileLink(ia, na, x.path)} <span class="muted">${x.type}, ${fmtBytes(x.size)}</span>`)}
      ${list('Changed', st.value.files.changed, 'changed', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${fmtBytes(x.sizeA)} → ${fmtBytes(x.sizeB)}</span>`)}
      ${list('Metadata only', st.value.files.metadata, 'metadata', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${x.fields.join(', ')}</span>`)}
      ${
        st.value.packages &&
        html`${list('Packages upgraded', st.value.packages.upgraded, 'upgraded', (x) => `${x.name} ${x.from ?? ''} → ${x.to ?? ''}`)}
        ${list('Packages added', st.value.packages.added, 'pkg-added', (x) => `${x.name} ${x.version}`)}
        ${list('Packages removed', st.value.packages.removed, 'pkg-removed', (x) => `${x.name} ${x.version}`)}`
      }`
    }`;
}

function Header() {
  const st = useApi(() => call('/v1/whoami'), [sessionStorage.getItem(TOKEN_KEY)]);
  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    dispatchEvent(new Event('strata-auth'));
    navigate(['signin']);
  };
  return html`<header>
    <strong>Strata</strong>
    <nav><a href="#/images">Images</a> · <a href="#/diff">Diff</a></nav>
    <span class="who">
      ${st.value && (st.value.user ? html`${st.value.user}${st.value.project ? ` (${st.value.project})` : ''} <button type="button" onClick=${signOut}>Sign out</button>` : html`anonymous · <a href="#/signin">Sign in</a>`)}
      ${st.error && html`<a href="#/signin">Sign in</a>`}
    </span>
  </header>`;
}

function App() {
  const [route, setRoute] = useState(parseHash());
  const [auth, setAuth] = useState(0);
  useEffect(() => {
    const onHash = () => setRoute(parseHash());
    const onAuth = () => setAuth((n) => n + 1);
    addEventListener('hashchange', onHash);
    addEventListener('strata-auth', onAuth);
    return () => {
      removeEventListener('hashchange', onHash);
      removeEventListener('strata-auth', onAuth);
    };
  }, []);
  const { parts, query } = route;
  let page;
  if (parts[0] === 'signin') page = html`<${SignIn} />`;
  else if (parts[0] === 'v' && parts.length === 3) page = html`<${VersionPage} name=${parts[1]} version=${parts[2]} />`;
  else if (parts[0] === 'f' && parts.length === 3)
    page = html`<${FilePage} name=${parts[1]} version=${parts[2]} path=${query.path || '/'} offset=${Number(query.offset) || 0} />`;
  else if (parts[0] === 'diff') page = html`<${DiffPage} a=${query.a} b=${query.b} key=${`${query.a}|${query.b}`} />`;
  else if (parts[0] === 'images' || parts.length === 0) page = html`<${Images} query=${query} />`;
  else page = html`<h1>Not found</h1><p>No page ${location.hash}. <a href="#/images">Images</a></p>`;
  useEffect(() => {
    const h1 = document.querySelector('main h1');
    document.title = `${h1 ? h1.textContent : 'Strata'} · Strata`;
  });
  return html`<${Header} key=${`h${auth}`} /><main key=${`m${auth}`}>${page}</main>`;
}

render(html`<${App} />`, document.getElementById('app'));
