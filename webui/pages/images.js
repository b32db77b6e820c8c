import { call, enc, useApi } from '../api.js';
import { Err, html, Loading, Tags, VLink } from '../parts.js';
import { href, navigate } from '../router.js';

export function Images({ query }) {
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
    <form class="filters" role="search" aria-label="Filter images" onSubmit=${(e) => e.preventDefault()}>
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
