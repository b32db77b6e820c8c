// Small shared pieces of the UI: the html tag, formatting, errors, links.

import htm from 'htm';
import { h } from 'preact';
import { href } from './router.js';

export const html = htm.bind(h);

export const fmtBytes = (n) => {
  if (n == null) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < u.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? x : x.toFixed(1)} ${u[i]}`;
};

export const Err = ({ error }) => html`<div class="error" role="alert">${error.message}</div>`;
export const Loading = () => html`<p class="muted" aria-busy="true">Loading…</p>`;
export const VLink = ({ image, number }) => html`<a href=${href(['v', image, String(number)])}>${image}@${number}</a>`;
export const Tags = ({ tags }) => tags.map((t) => html`<span class="tag">${t}</span>`);

export const MODE_TYPES = { dir: 'd', file: '-', symlink: 'l', fifo: 'p', socket: 's', char: 'c', block: 'b' };
export const perm = (m) => [256, 128, 64, 32, 16, 8, 4, 2, 1].map((b, i) => (m & b ? 'rwx'[i % 3] : '-')).join('');
export const modeString = (type, mode) => (MODE_TYPES[type] ?? '?') + perm(mode);

export function hexHead(bytes) {
  const lines = [];
  for (let o = 0; o < Math.min(bytes.length, 4096); o += 16) {
    const row = bytes.subarray(o, o + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const asc = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${o.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join('\n');
}

/** Text when the bytes hold no NUL and decode as UTF-8; else null. */
export function asText(bytes) {
  if (bytes.includes(0)) return null;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    // a cut in the middle of a character at the end of a 64 KiB head is still text
    return bytes.length >= 65536 ? new TextDecoder('utf-8').decode(bytes) : null;
  }
}

/** Where the symlink at `at` with `target` points, as an absolute path. */
export function resolveLink(at, target) {
  const out = target.startsWith('/') ? [] : at.split('/').filter(Boolean).slice(0, -1);
  for (const c of target.split('/')) {
    if (c === '..') out.pop();
    else if (c && c !== '.') out.push(c);
  }
  return `/${out.join('/')}`;
}
