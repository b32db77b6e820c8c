import { useState } from 'preact/hooks';
import { call, TOKEN_KEY } from '../api.js';
import { Err, html } from '../parts.js';
import { navigate } from '../router.js';

export function SignIn() {
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
