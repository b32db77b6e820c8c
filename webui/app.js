// The Strata web UI: a Preact + htm single page over the library service's /v1 API (the
// only thing it talks to). Pages live in pages/; routing is by the URL's hash, so every page
// has a shareable URL, the back button works, and the server serves one index.html.

import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { call, TOKEN_KEY, useApi } from './api.js';
import { AdminPage } from './pages/admin.js';
import { DiffPage } from './pages/diff.js';
import { FilePage } from './pages/files.js';
import { Images } from './pages/images.js';
import { SearchPage } from './pages/search.js';
import { SignIn } from './pages/signin.js';
import { VersionPage } from './pages/version.js';
import { html } from './parts.js';
import { navigate, parseHash } from './router.js';

/** The storage dashboard and its chart library load when first visited, not with every page. */
function LazyStorage({ query }) {
  const st = useApi(() => import('./pages/storage.js'), []);
  if (st.error) return html`<h1>Storage</h1><div class="error" role="alert">${st.error.message}</div>`;
  if (!st.value) return html`<h1>Storage</h1><p class="muted" aria-busy="true">Loading…</p>`;
  const { StoragePage } = st.value;
  return html`<${StoragePage} query=${query} />`;
}

function Header({ section }) {
  const st = useApi(() => call('/v1/whoami'), [sessionStorage.getItem(TOKEN_KEY)]);
  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    dispatchEvent(new Event('strata-auth'));
    navigate(['signin']);
  };
  const link = (to, label) =>
    html`<a href=${`#/${to}`} aria-current=${section === to ? 'page' : undefined}>${label}</a>`;
  return html`<header>
    <strong>Strata</strong>
    <nav aria-label="sections">${link('images', 'Images')} · ${link('search', 'Search')} · ${link('diff', 'Diff')} · ${link('storage', 'Storage')}${st.value?.user ? html` · ${link('admin', 'Admin')}` : ''}</nav>
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
  else if (parts[0] === 'v' && parts.length === 3)
    page = html`<${VersionPage} name=${parts[1]} version=${parts[2]} key=${parts.join('/')} />`;
  else if (parts[0] === 'f' && parts.length === 3)
    page = html`<${FilePage} name=${parts[1]} version=${parts[2]} path=${query.path || '/'} key=${`${parts.join('/')}?${query.path}`} />`;
  else if (parts[0] === 'diff') page = html`<${DiffPage} a=${query.a} b=${query.b} key=${`${query.a}|${query.b}`} />`;
  else if (parts[0] === 'search') page = html`<${SearchPage} query=${query} />`;
  else if (parts[0] === 'storage') page = html`<${LazyStorage} query=${query} />`;
  else if (parts[0] === 'admin') page = html`<${AdminPage} />`;
  else if (parts[0] === 'images' || parts.length === 0) page = html`<${Images} query=${query} />`;
  else page = html`<h1>Not found</h1><p>No page ${location.hash}. <a href="#/images">Images</a></p>`;
  useEffect(() => {
    const h1 = document.querySelector('main h1');
    document.title = `${h1 ? h1.textContent : 'Strata'} · Strata`;
  });
  return html`<${Header} key=${`h${auth}`} section=${parts[0] ?? 'images'} /><main key=${`m${auth}`}>${page}</main>`;
}

render(html`<${App} />`, document.getElementById('app'));
