import { elementScroll, observeElementOffset, observeElementRect, Virtualizer } from '@tanstack/virtual-core';
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import { apiUrl, authHeaders, call, callAll, useApi, vpath } from '../api.js';
import { asText, Err, fmtBytes, hexHead, html, Loading, modeString, resolveLink } from '../parts.js';
import { href } from '../router.js';

/** Directories up to this many entries render whole (find-in-page works); longer ones are virtualised. */
const WHOLE = 500;
const ROW = 28;

/** Fetch `url` with the token and hand it to the browser as a download named `name`. */
async function download(url, name, setState) {
  setState({ busy: true });
  try {
    const r = await fetch(url, { headers: authHeaders() });
    if (!r.ok) throw new Error(`download failed: HTTP ${r.status}`);
    const blob = await r.blob();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    setState({ busy: false, done: `${name} (${fmtBytes(blob.size)})` });
  } catch (e) {
    setState({ busy: false, error: e });
  }
}

function DownloadButton({ url, name, label }) {
  const [st, setSt] = useState({ busy: false });
  return html`<span class="download">
    <button type="button" disabled=${st.busy} onClick=${() => download(url, name, setSt)}>${st.busy ? 'Preparing…' : label}</button>
    ${st.done && html` <span class="muted" data-downloaded>${st.done}</span>`}
    ${st.error && html`<${Err} error=${st.error} />`}
  </span>`;
}

const Row = ({ e, name, version }) => {
  const base = e.path.split('/').pop();
  return html`<tr><td><a href=${href(['f', name, version], { path: e.path })}>${base}${e.type === 'dir' ? '/' : ''}</a></td>
    <td>${e.type}</td><td>${e.type === 'file' ? e.size : ''}</td><td>${modeString(e.type, e.mode)}</td><td>${e.mtime ?? ''}</td></tr>`;
};

const Head = () => html`<thead><tr><th>Name</th><th>Type</th><th>Size</th><th>Mode</th><th>mtime</th></tr></thead>`;

/**
 * A long directory as a window of rows inside a scrolling box (@tanstack/virtual-core does the
 * arithmetic: which rows are in view, the spacer heights): 20,000 entries scroll as smoothly
 * as 20. A table still, with spacer rows above and below, so it reads as one to a screen reader.
 */
function VirtualRows({ items, name, version }) {
  const box = useRef(null);
  const [, rerender] = useReducer((n) => n + 1, 0);
  const v = useRef(null);
  if (!v.current) {
    v.current = new Virtualizer({
      count: items.length,
      getScrollElement: () => box.current,
      estimateSize: () => ROW,
      overscan: 12,
      scrollToFn: elementScroll,
      observeElementRect,
      observeElementOffset,
      onChange: () => rerender(),
    });
  }
  const virt = v.current;
  virt.setOptions({ ...virt.options, count: items.length });
  useEffect(() => virt._didMount(), []);
  useLayoutEffect(() => virt._willUpdate());
  const rows = virt.getVirtualItems();
  const top = rows.length ? rows[0].start : 0;
  const bottom = rows.length ? virt.getTotalSize() - rows[rows.length - 1].end : 0;
  return html`<div class="vscroll" ref=${box} tabindex="0" role="region" aria-label=${`${items.length} entries, scrollable`} data-virtual=${items.length}>
    <table class="fixed-rows"><${Head} /><tbody>
      <tr aria-hidden="true" class="spacer" style=${{ height: `${top}px` }}></tr>
      ${rows.map((r) => html`<${Row} key=${r.index} e=${items[r.index]} name=${name} version=${version} />`)}
      <tr aria-hidden="true" class="spacer" style=${{ height: `${bottom}px` }}></tr>
    </tbody></table>
  </div>`;
}

function Listing({ ls, name, version }) {
  const [filter, setFilter] = useState('');
  const items = filter ? ls.items.filter((e) => e.path.split('/').pop().includes(filter)) : ls.items;
  return html`<section data-listing>
    <h2>Entries (${ls.total})</h2>
    ${ls.total > WHOLE && html`<label>Filter names <input type="search" value=${filter} onInput=${(e) => setFilter(e.currentTarget.value)} /></label>`}
    ${
      items.length > WHOLE
        ? html`<${VirtualRows} items=${items} name=${name} version=${version} key=${filter} />`
        : html`<table><${Head} /><tbody>${items.map((e) => html`<${Row} e=${e} name=${name} version=${version} />`)}</tbody></table>`
    }
  </section>`;
}

/**
 * Where the file sits on the disk: asked for after the page is painted (the server reads the
 * version's file system for it, the rest of the page comes from the manifest).
 */
function Extents({ name, version, path }) {
  const st = useApi(() => call(`${vpath(name, version)}/files/extents`, { path }), [name, version, path]);
  const head = html`<h2>On disk</h2>`;
  if (st.loading) return html`<section>${head}<${Loading} /></section>`;
  if (st.error) return html`<section>${head}<${Err} error=${st.error} /></section>`;
  const x = st.value;
  const where = (n) => (n === null ? '—' : `${n} (${fmtBytes(n)})`);
  return html`<section data-extents>${head}<dl class="summary">
    <dt>Birth</dt><dd>${x.crtime ?? '—'}</dd>
    <dt>Volume</dt><dd>${x.volume || '(whole disk)'}, at disk offset ${where(x.volumeDiskOffset)}</dd>
    ${x.allocatedBytes !== undefined && html`<dt>Allocated</dt><dd>${x.allocatedBytes} B</dd>`}
  </dl>
  ${
    x.extents.length === 0
      ? html`<p class="muted">No extents: the data is inline in the inode, or the file is empty or all holes.</p>`
      : html`<table class="extents"><caption>${x.extents.length} extent${x.extents.length === 1 ? '' : 's'}</caption>
    <thead><tr><th>File offset</th><th>Length</th><th>Volume offset</th><th>Disk offset</th><th>Flags</th></tr></thead>
    <tbody>${x.extents.map(
      (e) =>
        html`<tr><td>${e.fileOffset}</td><td>${e.length}</td><td>${e.volumeOffset}</td><td>${e.diskOffset ?? '—'}</td><td>${e.flags.join(', ')}</td></tr>`,
    )}</tbody></table>`
  }</section>`;
}

export function FilePage({ name, version, path }) {
  const st = useApi(async () => {
    const base = vpath(name, version);
    // both at once (one round trip, not two): listing a file or a symlink answers with itself
    const [stat, ls] = await Promise.all([call(`${base}/files/stat`, { path }), callAll(`${base}/files`, { path })]);
    if (stat.type === 'dir') {
      ls.items.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      return { stat, ls };
    }
    if (stat.type !== 'file') return { stat };
    const bytes = await call(`${base}/files/content`, { path }, 'head');
    return { stat, bytes, text: asText(bytes) };
  }, [name, version, path]);
  const parts = path.split('/').filter(Boolean);
  const crumbs = html`<nav class="crumbs" aria-label="path">
    <a href=${href(['f', name, version], { path: '/' })}>/</a>
    ${parts.map((p, i) => html`<a href=${href(['f', name, version], { path: `/${parts.slice(0, i + 1).join('/')}` })}>${p}</a>/`)}
  </nav>`;
  const title = html`<h1><a href=${href(['v', name, version])}>${name}@${version}</a>: ${path}</h1>${crumbs}`;
  if (st.loading) return html`${title}<${Loading} />`;
  if (st.error) return html`${title}<${Err} error=${st.error} />`;
  const { stat, ls, bytes, text } = st.value;
  const base = vpath(name, version);
  const leaf = parts[parts.length - 1] ?? `${name.replace(/\//g, '_')}-${version}`;
  const actions = html`<nav class="actions" aria-label="downloads">
    ${stat.type === 'file' && html`<${DownloadButton} url=${apiUrl(`${base}/files/content`, { path })} name=${leaf} label="Download file" />`}
    ${stat.type === 'dir' && html`<${DownloadButton} url=${apiUrl(`${base}/files/tar`, { path })} name=${`${leaf}.tar`} label="Download folder (tar)" />`}
  </nav>`;
  const statView = html`<section><h2>Stat</h2><dl class="summary">
    <dt>Type</dt><dd>${stat.type}</dd>
    <dt>Mode</dt><dd>${modeString(stat.type, stat.mode)} (${(stat.mode & 0o7777).toString(8)})</dd>
    <dt>Owner</dt><dd>${stat.uid}:${stat.gid}</dd>
    <dt>Size</dt><dd>${stat.size} B</dd>
    <dt>Links / inode</dt><dd>${stat.nlink} / ${stat.ino}</dd>
    <dt>mtime</dt><dd>${stat.mtime ?? '—'}</dd>
    <dt>atime</dt><dd>${stat.atime ?? '—'}</dd>
    <dt>ctime</dt><dd>${stat.ctime ?? '—'}</dd>
    ${stat.rdev && html`<dt>Device</dt><dd>${stat.rdev.major}, ${stat.rdev.minor}</dd>`}
    ${stat.target !== undefined && html`<dt>Target</dt><dd><a href=${href(['f', name, version], { path: resolveLink(path, stat.target) })} data-target>${stat.target}</a></dd>`}
    <dt>xattrs</dt><dd>${stat.xattrs.join(', ') || '—'}</dd>
    ${stat.digest && html`<dt>Digest</dt><dd><code>${stat.digest}</code> <a href=${href(['search'], { digest: stat.digest })}>where else?</a></dd>`}
  </dl></section>`;
  return html`${title}${actions}
    ${ls && html`<${Listing} ls=${ls} name=${name} version=${version} key=${path} />`}
    ${
      bytes &&
      html`<section><h2>${text !== null ? 'Text' : 'Hex head'}${bytes.length < stat.size ? ` (first ${bytes.length} of ${stat.size} B)` : ''}</h2>
      <pre class="file" tabindex="0" data-kind=${text !== null ? 'text' : 'hex'}>${text ?? hexHead(bytes)}</pre></section>`
    }
    ${statView}
    ${(stat.type === 'file' || stat.type === 'dir' || stat.type === 'symlink') && html`<${Extents} name=${name} version=${version} path=${path} key=${path} />`}`;
}
