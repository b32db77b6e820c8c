/**
 * os-release(5): KEY=VALUE lines, values optionally in single or double quotes with
 * backslash escapes. Garbled lines are skipped and counted, never fatal.
 */
export function parseOsRelease(text: string): { fields: Map<string, string>; bad: number } {
  const fields = new Map<string, string>();
  let bad = 0;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) {
      bad++;
      continue;
    }
    const v = unquote(m[2]);
    if (v === undefined) {
      bad++;
      continue;
    }
    fields.set(m[1], v);
  }
  return { fields, bad };
}

function unquote(v: string): string | undefined {
  if (v.length === 0) return '';
  const q = v[0];
  if (q !== '"' && q !== "'") return /[\s"'`$\\]/.test(v) ? undefined : v;
  if (v.length < 2 || v[v.length - 1] !== q) return undefined;
  const inner = v.slice(1, -1);
  return q === "'" ? inner : inner.replace(/\\(.)/g, '$1');
}

/** "12" -> [12, 0], "22.04" -> [22, 4], "9.3.1" -> [9, 3], junk -> [null, null]. */
export function splitVersion(v: string | undefined): [number | null, number | null] {
  const m = v === undefined ? null : /^\s*(\d+)(?:\.(\d+))?/.exec(v);
  if (!m) return [null, null];
  const major = Number(m[1]);
  const minor = m[2] === undefined ? 0 : Number(m[2]);
  return [Number.isSafeInteger(major) ? major : null, Number.isSafeInteger(minor) ? minor : null];
}
