// Routing by the URL's hash (#/images?..., #/v/NAME/N, ...): every page has a shareable URL,
// the back button works, and the server serves one index.html.

const enc = encodeURIComponent;

export function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/images';
  const [p, q = ''] = raw.split('?');
  return {
    parts: p.split('/').filter(Boolean).map(decodeURIComponent),
    query: Object.fromEntries(new URLSearchParams(q)),
  };
}

export function href(parts, query = {}) {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== '')).toString();
  return `#/${parts.map(enc).join('/')}${q ? `?${q}` : ''}`;
}

export const navigate = (parts, query) => {
  location.hash = href(parts, query);
};
