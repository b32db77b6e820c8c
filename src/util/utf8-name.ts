const td = new TextDecoder('utf-8');

/**
 * A file name's bytes as a string, decoded as UTF-8 (malformed bytes become U+FFFD, as
 * TextDecoder does). Short ASCII names, nearly every name of an OS tree, are built with
 * String.fromCharCode: one TextDecoder call per directory entry cost more than parsing the
 * entry, when a walk is still running cold code.
 */
export function utf8Name(b: Uint8Array): string {
  const n = b.length;
  if (n > 64) return td.decode(b);
  let s = '';
  for (let i = 0; i < n; i++) {
    const c = b[i];
    if (c >= 0x80) return td.decode(b);
    s += String.fromCharCode(c);
  }
  return s;
}
