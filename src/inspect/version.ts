/**
 * Version ordering of the three package ecosystems, each by its own rules:
 * - dpkg (deb-version(7)): epoch, then upstream and revision compared as alternating
 *   non-digit runs (letters before non-letters, '~' before everything, even the end) and
 *   digit runs (numerically);
 * - rpm (rpmvercmp of rpm >= 4.15): epoch, version, release; each compared as alphanumeric
 *   segments (separators ignored, numbers beat letters, '~' sorts before and '^' after the end);
 * - apk (Gentoo-style {digits}{.digits}...{letter}{_suffix{N}}...{-rN}): pre-release suffixes
 *   (_alpha _beta _pre _rc) before the bare version, post-release (_cvs _svn _git _hg _p)
 *   after; like apk 2.x, a version that does not parse is compared token by token up to
 *   the first token that does not parse.
 * Each returns <0, 0 or >0. Inputs are bounded by the callers (package fields); every loop
 * advances at least one character.
 */

export type PackageFormat = 'deb' | 'rpm' | 'apk';

// ---------------------------------------------------------------------------- dpkg

const isDigit = (c: number) => c >= 48 && c <= 57;
const isAlpha = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);

/** dpkg's weight of one character of a non-digit run (0 = end of string or a digit). */
function dpkgOrder(s: string, i: number): number {
  if (i >= s.length) return 0;
  const c = s.charCodeAt(i);
  if (isDigit(c)) return 0;
  if (isAlpha(c)) return c;
  if (c === 126) return -1; // '~'
  return c + 256;
}

function dpkgPart(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    while ((i < a.length && !isDigit(a.charCodeAt(i))) || (j < b.length && !isDigit(b.charCodeAt(j)))) {
      const d = dpkgOrder(a, i) - dpkgOrder(b, j);
      if (d !== 0) return d;
      i++;
      j++;
    }
    while (i < a.length && a[i] === '0') i++;
    while (j < b.length && b[j] === '0') j++;
    let first = 0;
    while (i < a.length && j < b.length && isDigit(a.charCodeAt(i)) && isDigit(b.charCodeAt(j))) {
      if (first === 0) first = a.charCodeAt(i) - b.charCodeAt(j);
      i++;
      j++;
    }
    if (i < a.length && isDigit(a.charCodeAt(i))) return 1;
    if (j < b.length && isDigit(b.charCodeAt(j))) return -1;
    if (first !== 0) return first;
  }
  return 0;
}

function dpkgSplit(v: string): [bigint, string, string] {
  let s = v.trim();
  let epoch = 0n;
  const c = s.indexOf(':');
  if (c >= 0 && /^\d+$/.test(s.slice(0, c))) {
    epoch = BigInt(s.slice(0, c));
    s = s.slice(c + 1);
  }
  const d = s.lastIndexOf('-');
  return d >= 0 ? [epoch, s.slice(0, d), s.slice(d + 1)] : [epoch, s, ''];
}

/** dpkg --compare-versions a ? b, as a number. */
export function compareDpkg(a: string, b: string): number {
  const [ea, ua, ra] = dpkgSplit(a);
  const [eb, ub, rb] = dpkgSplit(b);
  if (ea !== eb) return ea < eb ? -1 : 1;
  return Math.sign(dpkgPart(ua, ub)) || Math.sign(dpkgPart(ra, rb));
}

// ---------------------------------------------------------------------------- rpm

const isAlnum = (c: number) => isDigit(c) || isAlpha(c);

/** rpmvercmp: one version or release string against another. */
export function rpmvercmp(a: string, b: string): number {
  if (a === b) return 0;
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    while (i < a.length && !isAlnum(a.charCodeAt(i)) && a[i] !== '~' && a[i] !== '^') i++;
    while (j < b.length && !isAlnum(b.charCodeAt(j)) && b[j] !== '~' && b[j] !== '^') j++;
    if (a[i] === '~' || b[j] === '~') {
      if (a[i] !== '~') return 1;
      if (b[j] !== '~') return -1;
      i++;
      j++;
      continue;
    }
    if (a[i] === '^' || b[j] === '^') {
      if (i >= a.length) return -1;
      if (j >= b.length) return 1;
      if (a[i] !== '^') return 1;
      if (b[j] !== '^') return -1;
      i++;
      j++;
      continue;
    }
    if (i >= a.length || j >= b.length) break;
    const numeric = isDigit(a.charCodeAt(i));
    const same = numeric ? isDigit : isAlpha;
    let ie = i;
    let je = j;
    while (ie < a.length && same(a.charCodeAt(ie))) ie++;
    while (je < b.length && same(b.charCodeAt(je))) je++;
    if (je === j) return numeric ? 1 : -1; // numbers beat letters
    let sa = a.slice(i, ie);
    let sb = b.slice(j, je);
    if (numeric) {
      sa = sa.replace(/^0+/, '');
      sb = sb.replace(/^0+/, '');
      if (sa.length !== sb.length) return sa.length > sb.length ? 1 : -1;
    }
    if (sa !== sb) return sa < sb ? -1 : 1;
    i = ie;
    j = je;
  }
  if (i >= a.length && j >= b.length) return 0;
  return i < a.length ? 1 : -1;
}

/** Split "[E:]V[-R]" as rpm's EVR parser does (release after the last '-'; undefined when there is no '-'). */
export function rpmSplit(evr: string): { epoch: bigint; version: string; release: string | undefined } {
  let s = evr.trim();
  let epoch = 0n;
  const c = s.indexOf(':');
  if (c >= 0 && /^\d+$/.test(s.slice(0, c))) {
    epoch = BigInt(s.slice(0, c));
    s = s.slice(c + 1);
  }
  const d = s.lastIndexOf('-');
  return d >= 0
    ? { epoch, version: s.slice(0, d), release: s.slice(d + 1) }
    : { epoch, version: s, release: undefined };
}

/** rpm's EVR order ("1:2.0-3" style strings): epoch, version, then release (having one beats having none). */
export function compareRpm(a: string, b: string): number {
  const x = rpmSplit(a);
  const y = rpmSplit(b);
  if (x.epoch !== y.epoch) return x.epoch < y.epoch ? -1 : 1;
  const v = rpmvercmp(x.version, y.version);
  if (v !== 0) return v;
  if (x.release !== undefined && y.release !== undefined) return rpmvercmp(x.release, y.release);
  return x.release !== undefined ? 1 : y.release !== undefined ? -1 : 0;
}

// ---------------------------------------------------------------------------- apk

enum T {
  Invalid = -1,
  DigitOrZero = 0,
  Digit = 1,
  Letter = 2,
  Suffix = 3,
  SuffixNo = 4,
  RevisionNo = 5,
  End = 6,
}

const PRE_SUFFIXES = ['alpha', 'beta', 'pre', 'rc'];
const POST_SUFFIXES = ['cvs', 'svn', 'git', 'hg', 'p'];
const isLower = (c: number) => c >= 97 && c <= 122;

/** A cursor over an apk version: the kind of the next token and where it starts. */
interface ApkCursor {
  s: string;
  i: number;
  t: T;
}

/** Decide the kind of the token at the cursor from the separator before it (and consume the separator). */
function apkNextKind(c: ApkCursor): void {
  let n: T = T.Invalid;
  if (c.i >= c.s.length) n = T.End;
  else {
    const ch = c.s.charCodeAt(c.i);
    if ((c.t === T.Digit || c.t === T.DigitOrZero) && isLower(ch)) n = T.Letter;
    else if (c.t === T.Letter && isDigit(ch)) n = T.Digit;
    else if (c.t === T.Suffix && isDigit(ch)) n = T.SuffixNo;
    else {
      if (ch === 46) n = T.DigitOrZero;
      else if (ch === 95) n = T.Suffix;
      else if (ch === 45 && c.s[c.i + 1] === 'r') {
        n = T.RevisionNo;
        c.i++;
      }
      c.i++;
    }
  }
  // Tokens only move forward (digits, letter, suffixes, revision), with three allowed steps back.
  if (
    n < c.t &&
    !(
      (n === T.DigitOrZero && c.t === T.Digit) ||
      (n === T.Suffix && c.t === T.SuffixNo) ||
      (n === T.Digit && c.t === T.Letter)
    )
  ) {
    n = T.Invalid;
  }
  c.t = n;
}

/** The value of the token at the cursor (numbers as bigint), advancing past it. */
function apkToken(c: ApkCursor): bigint {
  if (c.i >= c.s.length) {
    c.t = T.End;
    return 0n;
  }
  let v = 0n;
  let next: T | undefined;
  const start = c.i;
  const invalid = () => {
    c.t = T.Invalid;
    return -1n;
  };
  const digits = () => {
    while (c.i < c.s.length && isDigit(c.s.charCodeAt(c.i))) c.i++;
    return c.i > start ? BigInt(c.s.slice(start, c.i)) : 0n;
  };
  switch (c.t) {
    case T.DigitOrZero:
      if (c.s[c.i] === '0') {
        // Leading zeros after a dot: each zero but the last counts -1 ("1.002" < "1.02" < "1.1"),
        // then the digits from the last zero on are the next token.
        while (c.i + 1 < c.s.length && c.s[c.i + 1] === '0') c.i++;
        v = BigInt(start - c.i);
        next = T.Digit;
        break;
      }
      v = digits();
      if (c.i - start >= 18) return invalid();
      break;
    case T.Digit:
    case T.SuffixNo:
    case T.RevisionNo:
      v = digits();
      if (c.i - start >= 18) return invalid();
      break;
    case T.Letter:
      v = BigInt(c.s.charCodeAt(c.i++));
      break;
    case T.Suffix: {
      const rest = c.s.slice(c.i);
      const pre = PRE_SUFFIXES.findIndex((x) => rest.startsWith(x));
      if (pre >= 0) {
        c.i += PRE_SUFFIXES[pre].length;
        v = BigInt(pre - PRE_SUFFIXES.length);
        break;
      }
      const post = POST_SUFFIXES.findIndex((x) => rest.startsWith(x));
      if (post >= 0) {
        c.i += POST_SUFFIXES[post].length;
        v = BigInt(post);
        break;
      }
      return invalid();
    }
    default:
      return invalid();
  }
  if (c.i >= c.s.length) c.t = T.End;
  else if (next !== undefined) c.t = next;
  else apkNextKind(c);
  return v;
}

/** Does `v` parse as an apk version? */
export function apkVersionValid(v: string): boolean {
  const c: ApkCursor = { s: v, i: 0, t: T.Digit };
  if (v === '' || !isDigit(v.charCodeAt(0))) return false;
  for (let guard = 0; c.t !== T.End && c.t !== T.Invalid && guard <= v.length + 1; guard++) apkToken(c);
  return c.t === T.End;
}

/** apk's version order. */
export function compareApk(a: string, b: string): number {
  const x: ApkCursor = { s: a, i: 0, t: T.Digit };
  const y: ApkCursor = { s: b, i: 0, t: T.Digit };
  let av = 0n;
  let bv = 0n;
  while (x.t === y.t && x.t !== T.End && x.t !== T.Invalid && av === bv) {
    av = apkToken(x);
    bv = apkToken(y);
  }
  if (av !== bv) return av < bv ? -1 : 1;
  if (x.t === y.t) return 0;
  // Equal so far: the longer one is newer, unless what it has more of is a pre-release suffix.
  if (x.t === T.Suffix && apkToken({ ...x }) < 0n) return -1;
  if (y.t === T.Suffix && apkToken({ ...y }) < 0n) return 1;
  return x.t > y.t ? -1 : 1;
}

/** Order two full version strings of a package format. */
export function compareVersions(format: PackageFormat, a: string, b: string): number {
  if (format === 'deb') return compareDpkg(a, b);
  if (format === 'rpm') return compareRpm(a, b);
  return compareApk(a, b);
}

/** A package's full version string in its ecosystem's spelling. */
export function fullVersion(format: PackageFormat, p: { epoch: number; version: string; release: string }): string {
  const e = p.epoch ? `${p.epoch}:` : '';
  if (format === 'apk') return `${p.version}${p.release ? `-${p.release}` : ''}`;
  return `${e}${p.version}${p.release ? `-${p.release}` : ''}`;
}
