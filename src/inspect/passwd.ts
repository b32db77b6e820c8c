import type { Group, User } from './types.js';

const MAX_ENTRIES = 1_000_000;

/** Users from /etc/passwd: name:pw:uid:gid:gecos:home:shell. The password field is never read. */
export function parsePasswd(text: string, warn: (m: string) => void = () => {}): User[] {
  const out: User[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && out.length < MAX_ENTRIES; i++) {
    const l = lines[i];
    if (l.trim() === '' || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) continue;
    const f = l.split(':');
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (f.length < 7 || f[0] === '' || !/^\d+$/.test(f[2] ?? '') || !/^\d+$/.test(f[3] ?? '')) {
      warn(`/etc/passwd line ${i + 1}: not name:x:uid:gid:gecos:home:shell, skipped`);
      continue;
    }
    out.push({ name: f[0], uid, gid, home: f[5], shell: f.slice(6).join(':') });
  }
  return out;
}

/** Groups from /etc/group: name:pw:gid:member,member. */
export function parseGroup(text: string, warn: (m: string) => void = () => {}): Group[] {
  const out: Group[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && out.length < MAX_ENTRIES; i++) {
    const l = lines[i];
    if (l.trim() === '' || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) continue;
    const f = l.split(':');
    if (f.length < 4 || f[0] === '' || !/^\d+$/.test(f[2])) {
      warn(`/etc/group line ${i + 1}: not name:x:gid:members, skipped`);
      continue;
    }
    out.push({ name: f[0], gid: Number(f[2]), members: f[3] === '' ? [] : f[3].split(',') });
  }
  return out;
}
