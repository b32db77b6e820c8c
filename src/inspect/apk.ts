import type { Package } from './types.js';

/** Split an apk version "1.36.1-r2" into version 1.36.1 and release r2 (apk has no epoch). */
export function splitApkVersion(v: string): { epoch: number; version: string; release: string } {
  const m = /^(.*)-(r\d+)$/.exec(v.trim());
  return m ? { epoch: 0, version: m[1], release: m[2] } : { epoch: 0, version: v.trim(), release: '' };
}

/**
 * apk's installed database (/lib/apk/db/installed): one record per package, blank-line
 * separated, each line "X:value" (P name, V version, A arch, ...). Records without P or V
 * are skipped with a warning.
 */
export function parseApkInstalled(text: string, warn: (m: string) => void = () => {}): Package[] {
  const out: Package[] = [];
  let n = 0;
  for (const rec of text.split(/\n\s*\n/)) {
    if (rec.trim() === '') continue;
    n++;
    let name: string | undefined;
    let version: string | undefined;
    let arch = '';
    for (const l of rec.split('\n')) {
      if (l.length < 2 || l[1] !== ':') continue;
      const v = l.slice(2).trim();
      if (l[0] === 'P') name = v;
      else if (l[0] === 'V') version = v;
      else if (l[0] === 'A') arch = v;
    }
    if (!name || !version) {
      warn(`apk installed: record ${n} has no P: or V: line, skipped`);
      continue;
    }
    out.push({ name, ...splitApkVersion(version), arch });
  }
  return out;
}
