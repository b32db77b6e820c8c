import type { Package } from './types.js';

/** Split a dpkg version "[epoch:]upstream[-revision]" as virt-inspector does: 1:2.36-9+deb12u4 -> 1, 2.36, 9+deb12u4. */
export function splitDpkgVersion(v: string): { epoch: number; version: string; release: string } {
  let epoch = 0;
  let rest = v.trim();
  const colon = rest.indexOf(':');
  if (colon > 0 && /^\d+$/.test(rest.slice(0, colon))) {
    epoch = Number(rest.slice(0, colon));
    rest = rest.slice(colon + 1);
  }
  const dash = rest.lastIndexOf('-');
  if (dash > 0) return { epoch, version: rest.slice(0, dash), release: rest.slice(dash + 1) };
  return { epoch, version: rest, release: '' };
}

/**
 * Installed packages from a dpkg status file (/var/lib/dpkg/status): RFC 822-like stanzas
 * separated by blank lines. A package counts when its Status ends in "installed" (the state
 * `dpkg-query -W` shows as ii). A stanza without Package or Version is skipped with a warning.
 */
export function parseDpkgStatus(text: string, warn: (m: string) => void = () => {}): Package[] {
  const out: Package[] = [];
  let bad = 0;
  let line = 1;
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const start = line;
    line += stanza.split('\n').length + 1;
    if (stanza.trim() === '') continue;
    const f = new Map<string, string>();
    for (const l of stanza.split('\n')) {
      if (l === '' || l[0] === ' ' || l[0] === '\t') continue; // continuation lines (Description, Conffiles ...)
      const c = l.indexOf(':');
      if (c <= 0) {
        bad++;
        continue;
      }
      f.set(l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim());
    }
    const name = f.get('package');
    const version = f.get('version');
    const status = f.get('status') ?? '';
    if (!name || !/^[a-z0-9][a-z0-9+.-]*$/.test(name)) {
      if (bad < 1000) warn(`dpkg status: stanza at line ${start} has no valid Package field, skipped`);
      bad++;
      continue;
    }
    const state = status.split(/\s+/);
    if (state[state.length - 1] !== 'installed') continue;
    if (!version) {
      warn(`dpkg status: package ${name} (line ${start}) has no Version, skipped`);
      continue;
    }
    out.push({ name, ...splitDpkgVersion(version), arch: f.get('architecture') ?? '' });
  }
  return out;
}
