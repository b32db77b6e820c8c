import type { Package } from './types.js';
import { compareVersions, fullVersion, type PackageFormat } from './version.js';

export interface PackageChange {
  name: string;
  arch: string;
  from: string;
  to: string;
}

export interface PackageDiff {
  added: Array<{ name: string; arch: string; version: string }>;
  removed: Array<{ name: string; arch: string; version: string }>;
  upgraded: PackageChange[];
  downgraded: PackageChange[];
}

/**
 * Packages of B against A, keyed by name and architecture; versions ordered by the
 * ecosystem's own rules (dpkg, rpm or apk). A version that differs only in spelling but
 * compares equal (1.0 vs 1.00 for rpm) is neither upgraded nor downgraded.
 */
export function diffPackages(format: PackageFormat, a: Package[], b: Package[]): PackageDiff {
  const key = (p: Package) => `${p.name}\u0000${p.arch}`;
  const inA = new Map(a.map((p) => [key(p), p]));
  const out: PackageDiff = { added: [], removed: [], upgraded: [], downgraded: [] };
  for (const pb of b) {
    const pa = inA.get(key(pb));
    const vb = fullVersion(format, pb);
    if (!pa) {
      out.added.push({ name: pb.name, arch: pb.arch, version: vb });
      continue;
    }
    inA.delete(key(pb));
    const va = fullVersion(format, pa);
    const c = compareVersions(format, va, vb);
    if (c < 0) out.upgraded.push({ name: pb.name, arch: pb.arch, from: va, to: vb });
    else if (c > 0) out.downgraded.push({ name: pb.name, arch: pb.arch, from: va, to: vb });
  }
  for (const pa of inA.values()) out.removed.push({ name: pa.name, arch: pa.arch, version: fullVersion(format, pa) });
  const byName = (x: { name: string; arch: string }, y: { name: string; arch: string }) =>
    x.name < y.name ? -1 : x.name > y.name ? 1 : x.arch < y.arch ? -1 : x.arch > y.arch ? 1 : 0;
  for (const l of [out.added, out.removed, out.upgraded, out.downgraded]) l.sort(byName);
  return out;
}
