import { diffLines } from 'diff';
import { useState } from 'preact/hooks';
import { call, useApi, vpath } from '../api.js';
import { asText, Err, fmtBytes, html, Loading } from '../parts.js';
import { href, navigate } from '../router.js';

const STATUS_MARK = { added: '+', removed: '−', changed: '~', metadata: 'm' };

/** Every changed path as a tree of folders, each folder with how many changes it holds. */
function buildTree(files) {
  const root = { name: '/', path: '/', dirs: new Map(), leaves: [], count: 0 };
  const add = (status, x) => {
    const names = x.path.split('/').filter(Boolean);
    let node = root;
    node.count++;
    for (const n of names.slice(0, -1)) {
      let next = node.dirs.get(n);
      if (!next)
        node.dirs.set(
          n,
          (next = {
            name: n,
            path: `${node.path === '/' ? '' : node.path}/${n}`,
            dirs: new Map(),
            leaves: [],
            count: 0,
          }),
        );
      node = next;
      node.count++;
    }
    node.leaves.push({ status, name: names[names.length - 1] ?? '/', x });
  };
  for (const k of ['added', 'removed', 'changed', 'metadata']) for (const x of files[k]) add(k, x);
  return root;
}

function TreeNode({ node, depth, leafView }) {
  const dirs = [...node.dirs.values()].sort((a, b) => a.name.localeCompare(b.name));
  const leaves = node.leaves.sort((a, b) => a.name.localeCompare(b.name));
  const body = html`<ul class="tree">
    ${dirs.map((d) => html`<li><${TreeNode} node=${d} depth=${depth + 1} leafView=${leafView} /></li>`)}
    ${leaves.map((l) => html`<li class=${`st-${l.status}`} data-status=${l.status}><span class="mark" aria-label=${l.status}>${STATUS_MARK[l.status]}</span> ${leafView(l)}</li>`)}
  </ul>`;
  if (depth === 0) return body;
  return html`<details open=${depth < 3}><summary>${node.name}/ <span class="muted">(${node.count})</span></summary>${body}</details>`;
}

/** A changed file's text diff, fetched when asked for (both sides' first 64 KiB). */
function TextDiff({ a, b, path }) {
  const [st, setSt] = useState(null);
  const load = async () => {
    setSt({ loading: true });
    try {
      const [ia, na] = a.split('@');
      const [ib, nb] = b.split('@');
      const [x, y] = await Promise.all([
        call(`${vpath(ia, na)}/files/content`, { path }, 'head'),
        call(`${vpath(ib, nb)}/files/content`, { path }, 'head'),
      ]);
      const [tx, ty] = [asText(x), asText(y)];
      if (tx === null || ty === null) return setSt({ binary: true });
      setSt({ parts: diffLines(tx, ty), cut: x.length >= 65536 || y.length >= 65536 });
    } catch (e) {
      setSt({ error: e });
    }
  };
  if (!st) return html`<button type="button" class="link" onClick=${load}>text diff</button>`;
  if (st.loading) return html`<${Loading} />`;
  if (st.error) return html`<${Err} error=${st.error} />`;
  if (st.binary) return html`<span class="muted">binary: no text diff</span>`;
  return html`<pre class="textdiff" tabindex="0" data-textdiff=${path}>${st.parts.map((p) =>
    p.value
      .replace(/\n$/, '')
      .split('\n')
      .map(
        (line) =>
          html`<span class=${p.added ? 'add' : p.removed ? 'del' : 'ctx'}>${p.added ? '+' : p.removed ? '-' : ' '}${line}${'\n'}</span>`,
      ),
  )}${st.cut ? html`<span class="muted">… (first 64 KiB of each side)</span>` : ''}</pre>`;
}

export function DiffPage({ a = '', b = '' }) {
  const [fa, setA] = useState(a);
  const [fb, setB] = useState(b);
  const st = useApi(async () => (a && b ? call('/v1/diff', { a, b, packages: true }) : null), [a, b]);
  const list = (title, items, key, show) =>
    html`<section><h3>${title} (${items.length})</h3>${items.length === 0 ? html`<p class="muted">none</p>` : html`<ul data-list=${key}>${items.slice(0, 2000).map((x) => html`<li>${show(x)}</li>`)}</ul>`}</section>`;
  const [ia, na] = a.split('@');
  const [ib, nb] = b.split('@');
  const fileLink = (img, n, p) => (n ? html`<a href=${href(['f', img, n], { path: p })}>${p}</a>` : p);
  const leafView = (l) => {
    const x = l.x;
    const link = l.status === 'removed' ? fileLink(ia, na, x.path) : fileLink(ib, nb, x.path);
    if (l.status === 'changed')
      return html`${link} <span class="muted">${fmtBytes(x.sizeA)} → ${fmtBytes(x.sizeB)}</span> <${TextDiff} a=${a} b=${b} path=${x.path} />`;
    if (l.status === 'metadata') return html`${link} <span class="muted">${x.fields.join(', ')}</span>`;
    return html`${link} <span class="muted">${x.type}, ${fmtBytes(x.size)}</span>`;
  };
  return html`<h1>Diff</h1>
    <form class="filters" aria-label="Versions to compare" onSubmit=${(e) => {
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
      <section><h2>Files as a tree</h2><div data-tree>${html`<${TreeNode} node=${buildTree(st.value.files)} depth=${0} leafView=${leafView} />`}</div></section>
      <section><h2>Files by change</h2>
      ${list('Added', st.value.files.added, 'added', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${x.type}, ${fmtBytes(x.size)}</span>`)}
      ${list('Removed', st.value.files.removed, 'removed', (x) => html`${fileLink(ia, na, x.path)} <span class="muted">${x.type}, ${fmtBytes(x.size)}</span>`)}
      ${list('Changed', st.value.files.changed, 'changed', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${fmtBytes(x.sizeA)} → ${fmtBytes(x.sizeB)}</span>`)}
      ${list('Metadata only', st.value.files.metadata, 'metadata', (x) => html`${fileLink(ib, nb, x.path)} <span class="muted">${x.fields.join(', ')}</span>`)}
      </section>
      ${
        st.value.packages &&
        html`<section><h2>Packages</h2>
        ${list('Upgraded', st.value.packages.upgraded, 'upgraded', (x) => `${x.name} ${x.from ?? ''} → ${x.to ?? ''}`)}
        ${list('Downgraded', st.value.packages.downgraded ?? [], 'downgraded', (x) => `${x.name} ${x.from ?? ''} → ${x.to ?? ''}`)}
        ${list('Added', st.value.packages.added, 'pkg-added', (x) => `${x.name} ${x.version}`)}
        ${list('Removed', st.value.packages.removed, 'pkg-removed', (x) => `${x.name} ${x.version}`)}</section>`
      }`
    }`;
}
