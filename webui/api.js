// The library service's /v1 API, as the web UI calls it: the bearer token from this tab's
// sessionStorage, problem documents turned into readable errors, and a hook that loads.

import { useEffect, useState } from 'preact/hooks';

export const TOKEN_KEY = 'strata.token';

/** An error from the API, readable: the problem document's title and detail. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ? `${problem.title ?? 'Error'} (${status}): ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
  }
}

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** A URL of the API with `query`'s non-empty values. */
export function apiUrl(path, query = {}) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== '') u.searchParams.set(k, String(v));
  return u;
}

/** GET (or `init.method`) `path`: JSON by default; 'head' the first 64 KiB as bytes; 'text' a string. */
export async function call(path, query = {}, as = 'json', init = {}) {
  const headers = { ...authHeaders(), ...(init.headers ?? {}) };
  if (as === 'head') headers.range = 'bytes=0-65535';
  const r = await fetch(apiUrl(path, query), { ...init, headers });
  if (!r.ok) {
    let p = null;
    try {
      p = await r.json();
    } catch {
      // not a problem document
    }
    throw new ApiError(r.status, p);
  }
  if (as === 'head') return new Uint8Array(await r.arrayBuffer());
  if (as === 'text') return r.text();
  if (r.status === 204) return null;
  return r.json();
}

/** Every item of a paged list route, `limit` at a time, pages fetched `parallel` at once. */
export async function callAll(path, query = {}, limit = 1000, parallel = 4) {
  const first = await call(path, { ...query, limit, offset: 0 });
  const items = [...first.items];
  const offsets = [];
  for (let o = first.items.length; o < first.total; o += limit) offsets.push(o);
  for (let i = 0; i < offsets.length; i += parallel) {
    const pages = await Promise.all(
      offsets.slice(i, i + parallel).map((offset) => call(path, { ...query, limit, offset })),
    );
    for (const p of pages) items.push(...p.items);
  }
  return { items, total: first.total };
}

export const enc = encodeURIComponent;
export const vpath = (name, v) => `/v1/images/${enc(name)}/versions/${enc(v)}`;

/**
 * Run `load` whenever `deps` change: { value, error, loading }. With `keep`, the last value
 * stays while the next one loads (a page refreshed after an action keeps its forms, and
 * what the user is typing in them, instead of going blank and coming back empty).
 */
export function useApi(load, deps, { keep = false } = {}) {
  const [state, setState] = useState({ value: undefined, error: undefined, loading: true });
  useEffect(() => {
    let live = true;
    setState((s) =>
      keep && s.value !== undefined ? { ...s, loading: true } : { value: undefined, error: undefined, loading: true },
    );
    load().then(
      (value) => live && setState({ value, error: undefined, loading: false }),
      (error) => live && setState({ value: undefined, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, deps);
  return state;
}
