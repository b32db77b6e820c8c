import { useState } from 'preact/hooks';
import { callAll, useApi } from '../api.js';
import { Err, fmtBytes, html, Loading, Tags, VLink } from '../parts.js';
import { href, navigate } from '../router.js';

const FIELDS = ['path', 'digest', 'package', 'os', 'user'];

/** Search across every version the caller may read: by path glob, content digest, package (NAME or NAME>=VERSION ...), OS, user. */
export function SearchPage({ query }) {
  const [form, setForm] = useState(() => Object.fromEntries(FIELDS.map((f) => [f, query[f] ?? ''])));
  const asked = FIELDS.some((f) => query[f]);
  const key = href(['search'], query);
  const st = useApi(
    async () =>
      asked ? { key, ...(await callAll('/v1/search', Object.fromEntries(FIELDS.map((f) => [f, query[f]])))) } : null,
    [key],
  );
  const set = (f) => (e) => setForm({ ...form, [f]: e.currentTarget.value });
  const hits = st.value?.key === key ? st.value.items : undefined;
  return html`<h1>Search</h1>
    <form class="filters" role="search" aria-label="Search the library" onSubmit=${(e) => {
      e.preventDefault();
      navigate(['search'], form);
    }}>
      <label>Path (glob) <input name="path" placeholder="/etc/ssl/**/*.pem" value=${form.path} onInput=${set('path')} /></label>
      <label>Content digest <input name="digest" placeholder="sha256 hex" value=${form.digest} onInput=${set('digest')} /></label>
      <label>Package <input name="package" placeholder="openssl>=3.0.11" value=${form.package} onInput=${set('package')} /></label>
      <label>OS <input name="os" placeholder="debian" value=${form.os} onInput=${set('os')} /></label>
      <label>User <input name="user" value=${form.user} onInput=${set('user')} /></label>
      <button type="submit">Search</button>
    </form>
    ${!asked && html`<p class="muted">Give at least one of path, digest, package, OS or user; several must all match.</p>`}
    ${st.loading && asked && html`<${Loading} />`}
    ${st.error && html`<${Err} error=${st.error} />`}
    ${
      hits &&
      html`<p class="muted" data-for=${key}>${hits.length} version(s)</p>
      <ol class="hits">${hits.map(
        (h) => html`<li data-hit=${h.ref}>
          <${VLink} image=${h.image} number=${h.number} /> <${Tags} tags=${h.tags} />
          ${
            h.paths?.length > 0 &&
            html`<ul>${h.paths
              .slice(0, 50)
              .map(
                (p) =>
                  html`<li><a href=${href(['f', h.image, String(h.number)], { path: p.path })}>${p.path}</a> <span class="muted">${p.type}${p.type === 'file' ? `, ${fmtBytes(p.size)}` : ''}${p.volume ? ` · ${p.volume}` : ''}</span></li>`,
              )}${h.paths.length > 50 ? html`<li class="muted">… ${h.paths.length - 50} more</li>` : ''}</ul>`
          }
          ${h.packages?.length > 0 && html`<ul>${h.packages.map((p) => html`<li data-package>${p.name} ${p.version} <span class="muted">${p.arch}${p.root ? ` · ${p.root}` : ''}</span></li>`)}</ul>`}
          ${h.users?.length > 0 && html`<ul>${h.users.map((u) => html`<li>${u.name} (${u.uid}) <span class="muted">${u.home}</span></li>`)}</ul>`}
          ${h.roots?.length > 0 && html`<ul>${h.roots.map((r) => html`<li>${r.productName ?? r.distro ?? r.osType}</li>`)}</ul>`}
        </li>`,
      )}</ol>`
    }`;
}
