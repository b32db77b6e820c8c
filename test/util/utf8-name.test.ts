import assert from 'node:assert/strict';
import { test } from 'node:test';
import { utf8Name } from '../../src/util/utf8-name.js';

// The oracle is the platform's UTF-8 decoder (what the readers called before the fast path).
const td = new TextDecoder('utf-8');

test('utf8Name decodes like TextDecoder: ASCII, control bytes, multi-byte, malformed, long names', () => {
  const cases: number[][] = [
    [],
    [...Buffer.from('passwd')],
    [...Buffer.from('libc.so.6')],
    [1, 2, 9, 10, 27, 127], // control bytes are ASCII too
    [...Buffer.from('caf\u00e9 \u65e5\u672c \u{1f600}')],
    [0xef, 0xbb, 0xbf, 0x61], // a BOM
    [0xff, 0xfe, 0x41], // malformed
    [0x41, 0xc3], // cut short
    Array.from({ length: 64 }, (_, i) => 0x41 + (i % 26)),
    Array.from({ length: 65 }, (_, i) => 0x61 + (i % 26)),
    Array.from({ length: 255 }, () => 0x7a),
    [...Array.from({ length: 70 }, () => 0x61), 0xe2, 0x82, 0xac],
  ];
  for (const c of cases) {
    const b = Uint8Array.from(c);
    assert.equal(utf8Name(b), td.decode(b), JSON.stringify(c));
  }
  // every single byte, and a subarray of a larger buffer
  for (let x = 0; x < 256; x++) assert.equal(utf8Name(Uint8Array.of(x)), td.decode(Uint8Array.of(x)), `byte ${x}`);
  const big = Buffer.from('xx/etc/hostname/yy');
  assert.equal(utf8Name(big.subarray(3, 6)), 'etc');
});
