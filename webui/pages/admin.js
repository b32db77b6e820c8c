import { useState } from 'preact/hooks';
import { call, enc, useApi } from '../api.js';
import { Err, html, Loading } from '../parts.js';

const json = (method, body) => ({
  method,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});

/** Visibility and members of one image, for an admin of its project (or a server admin). */
function ImageAccess({ image, onChange }) {
  const st = useApi(() => call(`/v1/images/${enc(image.name)}/members`), [image.name, image.visibility]);
  const [invite, setInvite] = useState('');
  const [error, setError] = useState();
  const act = (fn) => async (e) => {
    e?.preventDefault?.();
    setError(undefined);
    try {
      await fn();
      onChange();
    } catch (err) {
      setError(err);
    }
  };
  const setVisibility = (v) =>
    act(() => call(`/v1/images/${enc(image.name)}`, {}, 'json', json('PATCH', { visibility: v })))();
  return html`<tr data-admin-image=${image.name}>
    <td>${image.name}</td>
    <td>${image.project}</td>
    <td><label class="sr-only" for=${`vis-${image.name}`}>Visibility of ${image.name}</label>
      <select id=${`vis-${image.name}`} value=${image.visibility} onChange=${(e) => setVisibility(e.currentTarget.value)}>
        <option>private</option><option>shared</option><option>public</option>
      </select></td>
    <td>
      ${st.loading && html`<${Loading} />`}
      ${st.error && html`<${Err} error=${st.error} />`}
      ${
        st.value &&
        html`<ul class="members">${st.value.items.map(
          (m) => html`<li>${m.project} <span class="muted">${m.status}</span>
            <button type="button" aria-label=${`Remove ${m.project} from ${image.name}`} onClick=${act(() => call(`/v1/images/${enc(image.name)}/members/${enc(m.project)}`, {}, 'json', { method: 'DELETE' }))}>remove</button></li>`,
        )}</ul>`
      }
      <form class="inline" onSubmit=${act(async () => {
        await call(`/v1/images/${enc(image.name)}/members`, {}, 'json', json('POST', { project: invite.trim() }));
        setInvite('');
      })}>
        <label>Share with project <input value=${invite} onInput=${(e) => setInvite(e.currentTarget.value)} required /></label>
        <button type="submit">Invite</button>
      </form>
      ${error && html`<${Err} error=${error} />`}
    </td>
  </tr>`;
}

/** Invitations to the caller's project: accept or reject, as in Glance. */
function Invitations({ onChange }) {
  const st = useApi(() => call('/v1/shared'), []);
  const [error, setError] = useState();
  const answer = (m, status) => async () => {
    try {
      await call(`/v1/images/${enc(m.image)}/members/${enc(m.project)}`, {}, 'json', json('PUT', { status }));
      onChange();
    } catch (e) {
      setError(e);
    }
  };
  if (st.loading) return html`<${Loading} />`;
  if (st.error) return html`<${Err} error=${st.error} />`;
  const items = st.value.items;
  return html`<section><h2>Shared with your project</h2>
    ${error && html`<${Err} error=${error} />`}
    ${
      items.length === 0
        ? html`<p class="muted">No invitations.</p>`
        : html`<table><thead><tr><th>Image</th><th>Status</th><th></th></tr></thead><tbody>
      ${items.map(
        (m) => html`<tr><td>${m.image}</td><td>${m.status}</td><td>
          <button type="button" onClick=${answer(m, 'accepted')} disabled=${m.status === 'accepted'}>Accept</button>
          <button type="button" onClick=${answer(m, 'rejected')} disabled=${m.status === 'rejected'}>Reject</button></td></tr>`,
      )}</tbody></table>`
    }
  </section>`;
}

export function AdminPage() {
  const [round, setRound] = useState(0);
  const bump = () => setRound((n) => n + 1);
  const st = useApi(async () => {
    const me = await call('/v1/whoami');
    const images = await call('/v1/images', { limit: 1000 });
    const mine = images.items.filter((i) => me.admin || (me.role === 'admin' && i.project === me.project));
    return { me, mine };
  }, [round]);
  if (st.loading) return html`<h1>Administration</h1><${Loading} />`;
  if (st.error) return html`<h1>Administration</h1><${Err} error=${st.error} />`;
  const { me, mine } = st.value;
  if (!me.user) return html`<h1>Administration</h1><p>Sign in first.</p>`;
  return html`<h1>Administration</h1>
    <p>${me.user}${me.admin ? ', server admin' : ''}${me.project ? `, ${me.role ?? 'no role'} of ${me.project}` : ''}; token scope ${me.scope}.</p>
    <section><h2>Images you manage</h2>
    ${
      mine.length === 0
        ? html`<p class="muted">None: managing an image needs the admin role in its project.</p>`
        : html`<table><thead><tr><th>Image</th><th>Project</th><th>Visibility</th><th>Members</th></tr></thead>
      <tbody>${mine.map((i) => html`<${ImageAccess} key=${`${i.name}:${round}`} image=${i} onChange=${bump} />`)}</tbody></table>`
    }
    </section>
    ${me.project && html`<${Invitations} key=${round} onChange=${bump} />`}`;
}
