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
  // asked again after each change made here (an invitation or a removal changes the members, not the image row)
  const [rev, setRev] = useState(0);
  const st = useApi(() => call(`/v1/images/${enc(image.name)}/members`), [image.name, image.visibility, rev]);
  const [invite, setInvite] = useState('');
  const [error, setError] = useState();
  const act = (fn) => async (e) => {
    e?.preventDefault?.();
    setError(undefined);
    try {
      await fn();
      setRev((n) => n + 1);
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

/** The caller's tokens (a server admin sees everybody's): make one (its secret shown once), revoke. */
function Tokens({ me }) {
  const [round, setRound] = useState(0);
  const st = useApi(() => call('/v1/tokens'), [round]);
  const [scope, setScope] = useState('read');
  const [expires, setExpires] = useState('30d');
  const [made, setMade] = useState();
  const [error, setError] = useState();
  const create = async (e) => {
    e.preventDefault();
    setError(undefined);
    try {
      const body = { scope, ...(expires ? { expires } : {}) };
      setMade(await call('/v1/tokens', {}, 'json', json('POST', body)));
      setRound((n) => n + 1);
    } catch (err) {
      setError(err);
    }
  };
  const revoke = (id) => async () => {
    try {
      await call(`/v1/tokens/${enc(id)}`, {}, 'json', { method: 'DELETE' });
      setRound((n) => n + 1);
    } catch (err) {
      setError(err);
    }
  };
  return html`<section><h2>Tokens</h2>
    ${
      me.scope === 'write' &&
      html`<form class="inline" aria-label="New token" onSubmit=${create}>
      <label>Scope <select value=${scope} onChange=${(e) => setScope(e.currentTarget.value)}><option>read</option><option>write</option></select></label>
      <label>Expires in <input value=${expires} size="6" placeholder="30d" onInput=${(e) => setExpires(e.currentTarget.value)} /></label>
      <button type="submit">Create token</button>
    </form>`
    }
    ${made && html`<p role="status">New token for ${made.user}${made.project ? ` (${made.project})` : ''}, ${made.scope}: <code data-new-token>${made.token}</code> — copy it now, it is not shown again.</p>`}
    ${error && html`<${Err} error=${error} />`}
    ${st.loading && html`<${Loading} />`}
    ${st.error && html`<${Err} error=${st.error} />`}
    ${
      st.value &&
      html`<table data-tokens><thead><tr><th>Id</th><th>User</th><th>Project</th><th>Scope</th><th>Created</th><th>Expires</th><th>State</th><th></th></tr></thead><tbody>
      ${st.value.items.map(
        (
          t,
        ) => html`<tr data-token=${t.id}><td><code>${t.id}</code></td><td>${t.user}</td><td>${t.project ?? '—'}</td><td>${t.scope}</td><td>${t.created}</td><td>${t.expires ?? 'never'}</td>
          <td>${t.revoked ? `revoked ${t.revoked}` : 'live'}</td>
          <td>${!t.revoked && me.scope === 'write' ? html`<button type="button" aria-label=${`Revoke token ${t.id}`} onClick=${revoke(t.id)}>Revoke</button>` : ''}</td></tr>`,
      )}</tbody></table>`
    }
  </section>`;
}

/** Server admins: users and their roles, new users and projects; a project admin: roles in the project. */
function Accounts({ me }) {
  const [round, setRound] = useState(0);
  const st = useApi(
    async () => ({
      users: me.admin ? (await call('/v1/users')).items : null,
      projects: (await call('/v1/projects')).items,
    }),
    [round],
  );
  const [user, setUser] = useState('');
  const [project, setProject] = useState('');
  const [grant, setGrant] = useState({ user: '', project: me.project ?? '', role: 'reader' });
  const [error, setError] = useState();
  const act = (fn) => async (e) => {
    e?.preventDefault?.();
    setError(undefined);
    try {
      await fn();
      setRound((n) => n + 1);
    } catch (err) {
      setError(err);
    }
  };
  if (st.loading) return html`<${Loading} />`;
  if (st.error) return html`<${Err} error=${st.error} />`;
  const { users, projects } = st.value;
  return html`<section><h2>Users and projects</h2>
    ${error && html`<${Err} error=${error} />`}
    ${
      users &&
      html`<table data-users><thead><tr><th>User</th><th>Server admin</th><th>Roles</th></tr></thead><tbody>
      ${users.map((u) => html`<tr data-user=${u.name}><td>${u.name}</td><td>${u.admin ? 'yes' : ''}</td><td>${u.projects.map((r) => `${r.role} of ${r.project}`).join(', ') || '—'}</td></tr>`)}
      </tbody></table>
      <form class="inline" aria-label="New user" onSubmit=${act(async () => {
        await call('/v1/users', {}, 'json', json('POST', { name: user.trim() }));
        setUser('');
      })}><label>New user <input value=${user} onInput=${(e) => setUser(e.currentTarget.value)} required /></label><button type="submit">Add user</button></form>
      <form class="inline" aria-label="New project" onSubmit=${act(async () => {
        await call('/v1/projects', {}, 'json', json('POST', { name: project.trim() }));
        setProject('');
      })}><label>New project <input value=${project} onInput=${(e) => setProject(e.currentTarget.value)} required /></label><button type="submit">Add project</button></form>`
    }
    <form class="inline" aria-label="Give a role" onSubmit=${act(() =>
      call(
        `/v1/projects/${enc(grant.project)}/users/${enc(grant.user.trim())}`,
        {},
        'json',
        json('PUT', { role: grant.role }),
      ),
    )}>
      <label>User <input value=${grant.user} onInput=${(e) => setGrant({ ...grant, user: e.currentTarget.value })} required /></label>
      <label>Project <select value=${grant.project} onChange=${(e) => setGrant({ ...grant, project: e.currentTarget.value })}>${projects.map((p) => html`<option>${p}</option>`)}</select></label>
      <label>Role <select value=${grant.role} onChange=${(e) => setGrant({ ...grant, role: e.currentTarget.value })}><option>reader</option><option>member</option><option>admin</option></select></label>
      <button type="submit">Give role</button>
    </form>
  </section>`;
}

export function AdminPage() {
  const [round, setRound] = useState(0);
  const bump = () => setRound((n) => n + 1);
  const st = useApi(
    async () => {
      const me = await call('/v1/whoami');
      const images = await call('/v1/images', { limit: 1000 });
      const mine = images.items.filter((i) => me.admin || (me.role === 'admin' && i.project === me.project));
      return { me, mine };
    },
    [round],
    { keep: true },
  );
  // refreshed after each change with the old rows in place: an image's row keeps its state
  // (the project being typed into "Share with project") across the refresh
  if (st.loading && st.value === undefined) return html`<h1>Administration</h1><${Loading} />`;
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
      <tbody>${mine.map((i) => html`<${ImageAccess} key=${i.name} image=${i} onChange=${bump} />`)}</tbody></table>`
    }
    </section>
    ${me.project && html`<${Invitations} key=${round} onChange=${bump} />`}
    ${(me.admin || me.role === 'admin') && html`<${Accounts} me=${me} />`}
    <${Tokens} me=${me} />`;
}
