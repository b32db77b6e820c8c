import { useMemo, useState } from 'preact/hooks';
import { call, useApi, vpath } from '../api.js';
import { Err, fmtBytes, html, Loading, Tags, VLink } from '../parts.js';
import { href } from '../router.js';

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
  const version = root.versionMajor != null ? `${root.versionMajor}.${root.versionMinor ?? 0}` : null;
  return html`<section>
    <h3>${[root.distro ?? root.osType, version].filter(Boolean).join(' ')}${root.root ? html` <span class="muted">(${root.root})</span>` : ''}</h3>
    <dl class="summary">
      <dt>OS</dt><dd>${root.osType} ${root.distro ?? ''}${root.productName ? ` (${root.productName})` : ''}</dd>
      <dt>Version</dt><dd>${version ?? '—'}</dd>
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

const refOf = (v) => `${v.image}@${v.number}`;

/**
 * One request per version's provenance while a page loads: the summary, the parents walk and
 * the children walk all ask for the current version's; the answer is shared, then forgotten
 * a moment after it settles (so a later visit sees new children).
 */
const provMemo = new Map();
function provenanceOf(image, number) {
  const path = `${vpath(image, number)}/provenance`;
  let p = provMemo.get(path);
  if (!p) {
    p = call(path);
    provMemo.set(path, p);
    const forget = () => setTimeout(() => provMemo.delete(path), 2000);
    p.then(forget, forget);
  }
  return p;
}

/**
 * The provenance around a version: ancestors and descendants up to `depth` generations,
 * fetched breadth first (a version the caller may not read is simply not shown: the API
 * leaves it out).
 */
async function provenanceGraph(image, number, depth = 2) {
  const nodes = new Map([[`${image}@${number}`, { image, number, gen: 0 }]]);
  const edges = new Set();
  const walk = async (dir) => {
    let frontier = [{ image, number }];
    for (let g = 1; g <= depth && frontier.length; g++) {
      const next = [];
      const provs = await Promise.all(
        frontier.map((v) => provenanceOf(v.image, v.number).catch(() => null)),
      );
      provs.forEach((p, i) => {
        if (!p) return;
        for (const o of p[dir]) {
          const from = dir === 'parents' ? refOf(o) : refOf(frontier[i]);
          const to = dir === 'parents' ? refOf(frontier[i]) : refOf(o);
          edges.add(`${from}\n${to}`);
          if (!nodes.has(refOf(o))) {
            nodes.set(refOf(o), { image: o.image, number: o.number, gen: dir === 'parents' ? -g : g });
            next.push(o);
          }
        }
      });
      frontier = next.slice(0, 40);
    }
  };
  await Promise.all([walk('parents'), walk('children')]);
  return { nodes: [...nodes.values()], edges: [...edges].map((e) => e.split('\n')) };
}

/** Generations as columns, versions as boxes, parent -> child as lines; every box a link. */
function ProvenanceGraph({ graph, current }) {
  const W = 170;
  const H = 34;
  const GAP_X = 60;
  const GAP_Y = 14;
  const gens = [...new Set(graph.nodes.map((n) => n.gen))].sort((a, b) => a - b);
  const pos = new Map();
  let rows = 1;
  for (const [col, g] of gens.entries()) {
    const inGen = graph.nodes.filter((n) => n.gen === g).sort((a, b) => refOf(a).localeCompare(refOf(b)));
    rows = Math.max(rows, inGen.length);
    for (const [row, n] of inGen.entries()) pos.set(refOf(n), { x: 8 + col * (W + GAP_X), y: 8 + row * (H + GAP_Y) });
  }
  const width = 16 + gens.length * W + (gens.length - 1) * GAP_X;
  const height = 16 + rows * H + (rows - 1) * GAP_Y;
  return html`<svg class="provenance" role="group" aria-label=${`provenance of ${current}`} width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`}>
    ${graph.edges.map(([a, b]) => {
      const p = pos.get(a);
      const q = pos.get(b);
      if (!p || !q) return null;
      return html`<line x1=${p.x + W} y1=${p.y + H / 2} x2=${q.x} y2=${q.y + H / 2} class="edge" />`;
    })}
    ${graph.nodes.map((n) => {
      const p = pos.get(refOf(n));
      const me = refOf(n) === current;
      return html`<a href=${href(['v', n.image, String(n.number)])} data-node=${refOf(n)} aria-current=${me ? 'page' : undefined}>
        <rect x=${p.x} y=${p.y} width=${W} height=${H} rx="4" class=${me ? 'node current' : 'node'} />
        <text x=${p.x + W / 2} y=${p.y + H / 2 + 5} text-anchor="middle">${refOf(n)}</text>
      </a>`;
    })}
  </svg>`;
}

export function VersionPage({ name, version }) {
  const st = useApi(async () => {
    const base = vpath(name, version);
    const [v, prov, insp] = await Promise.all([
      call(base),
      provenanceOf(name, Number(version)),
      call(`${base}/inspection`).catch((e) => ({ error: e })),
    ]);
    return { v, prov, insp };
  }, [name, version]);
  // the graph walks further (a request per version it reaches): drawn when it arrives
  const g = useApi(() => provenanceGraph(name, Number(version)).catch(() => null), [name, version]);
  const graph = g.value;
  if (st.loading) return html`<${Loading} />`;
  if (st.error) return html`<h1>${name}@${version}</h1><${Err} error=${st.error} />`;
  const { v, prov, insp } = st.value;
  const shared = Math.max(0, v.usedBytes - v.newBytes);
  return html`<h1>${v.ref}</h1>
    <nav class="actions" aria-label="version actions">
      <a href=${href(['f', v.image, String(v.number)], { path: '/' })}>Browse files</a>
      ${v.parents[0] && html` · <a href=${href(['diff'], { a: `${v.parents[0].image}@${v.parents[0].number}`, b: v.ref })}>Diff with parent</a>`}
    </nav>
    <section><h2>Version</h2>
    <dl class="summary">
      <dt>Created</dt><dd>${v.created}${v.createdBy ? ` by ${v.createdBy}` : ''}</dd>
      <dt>Source</dt><dd>${v.sourceName ?? '—'} (${v.sourceFormat ?? v.layout.sourceFormat ?? '?'})</dd>
      <dt>Tags</dt><dd><${Tags} tags=${v.tags} /></dd>
      <dt>Parents</dt><dd>${prov.parents.length ? prov.parents.map((p) => html`<${VLink} ...${p} /> `) : '—'}</dd>
      <dt>Children</dt><dd>${prov.children.length ? prov.children.map((p) => html`<${VLink} ...${p} /> `) : '—'}</dd>
    </dl></section>
    <section><h2>Storage</h2>
    <dl class="summary" data-section="storage">
      <dt>Virtual size</dt><dd>${fmtBytes(v.virtualSize)}</dd>
      <dt>Used (logical)</dt><dd>${fmtBytes(v.usedBytes)}</dd>
      <dt>Stored</dt><dd>${fmtBytes(v.storedBytes)}</dd>
      <dt>New in this version</dt><dd>${fmtBytes(v.newBytes)}</dd>
      <dt>Shared with earlier versions</dt><dd>${fmtBytes(shared)}${v.usedBytes > 0 ? ` (${((100 * shared) / v.usedBytes).toFixed(1)}%)` : ''}</dd>
    </dl></section>
    ${
      graph &&
      graph.nodes.length > 1 &&
      html`<section><h2>Provenance</h2><figure class="graph" aria-label=${`provenance of ${v.ref}: parents to the left, children to the right`}>${html`<${ProvenanceGraph} graph=${graph} current=${v.ref} />`}</figure></section>`
    }
    <section><h2>Inspection</h2>
    ${insp.error ? html`<${Err} error=${insp.error} />` : insp.roots.length === 0 ? html`<p>No operating system found.</p>` : insp.roots.map((r) => html`<${OsRoot} root=${r} />`)}
    </section>`;
}
