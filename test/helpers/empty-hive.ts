/**
 * An empty registry hive (regf) with only a root key, written from the published layout
 * of the format: a 4 KiB base block, then one 4 KiB hive bin holding the root key node,
 * one security cell and free space. Tests grow it with the real hivex tools
 * (`hivexregedit --merge`) and read it back with `hivexget` / `hivexregedit --export`, so
 * every byte our reader is checked on was written by hivex; this seed only gives hivex a
 * file to open (no Debian package ships an empty hive, and hivex cannot create one).
 */
export function emptyHive(rootName = 'ROOT'): Buffer {
  const BIN = 4096;
  const file = Buffer.alloc(BIN * 2);
  const hbin = file.subarray(BIN);
  hbin.write('hbin', 0, 'latin1');
  hbin.writeUInt32LE(0, 4); // offset of this bin from the first bin
  hbin.writeUInt32LE(BIN, 8); // size of this bin

  // Root key node ("nk") at bin offset 32.
  const nkAt = 32;
  const name = Buffer.from(rootName, 'latin1');
  const nkLen = align8(4 + 76 + name.length);
  // Security cell ("sk") right after it.
  const skAt = nkAt + nkLen;
  // A self-relative security descriptor with a present, null DACL (revision 1, control
  // SE_DACL_PRESENT | SE_SELF_RELATIVE, no owner, group, SACL or DACL offsets).
  const sd = Buffer.from([1, 0, 0x04, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const skLen = align8(4 + 20 + sd.length);

  const nk = hbin.subarray(nkAt, nkAt + nkLen);
  nk.writeInt32LE(-nkLen, 0); // negative size: allocated
  nk.write('nk', 4, 'latin1');
  nk.writeUInt16LE(0x2c, 6); // KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME
  nk.writeUInt32LE(0, 20); // parent
  nk.writeUInt32LE(0, 24); // subkeys
  nk.writeUInt32LE(0, 28); // volatile subkeys
  nk.writeUInt32LE(0xffffffff, 32); // subkey list
  nk.writeUInt32LE(0xffffffff, 36); // volatile subkey list
  nk.writeUInt32LE(0, 40); // values
  nk.writeUInt32LE(0xffffffff, 44); // value list
  nk.writeUInt32LE(skAt, 48); // security cell
  nk.writeUInt32LE(0xffffffff, 52); // class name
  nk.writeUInt16LE(name.length, 76);
  nk.writeUInt16LE(0, 78); // class name length
  name.copy(nk, 80);

  const sk = hbin.subarray(skAt, skAt + skLen);
  sk.writeInt32LE(-skLen, 0);
  sk.write('sk', 4, 'latin1');
  sk.writeUInt32LE(skAt, 8); // flink: the only sk cell links to itself
  sk.writeUInt32LE(skAt, 12); // blink
  sk.writeUInt32LE(1, 16); // reference count: the root key
  sk.writeUInt32LE(sd.length, 20);
  sd.copy(sk, 24);

  // The rest of the bin is one free cell (positive size).
  const freeAt = skAt + skLen;
  hbin.writeInt32LE(BIN - freeAt, freeAt);

  // Base block.
  file.write('regf', 0, 'latin1');
  file.writeUInt32LE(1, 4); // primary sequence number
  file.writeUInt32LE(1, 8); // secondary sequence number (equal: the hive is consistent)
  file.writeUInt32LE(1, 20); // major version
  file.writeUInt32LE(3, 24); // minor version
  file.writeUInt32LE(0, 28); // primary file
  file.writeUInt32LE(1, 32); // format: direct memory load
  file.writeUInt32LE(nkAt, 36); // root cell, relative to the first bin
  file.writeUInt32LE(BIN, 40); // size of the hive bins data
  file.writeUInt32LE(1, 44); // clustering factor
  let sum = 0;
  for (let o = 0; o < 508; o += 4) sum = (sum ^ file.readUInt32LE(o)) >>> 0;
  if (sum === 0xffffffff) sum = 0xfffffffe;
  if (sum === 0) sum = 1;
  file.writeUInt32LE(sum, 508);
  return file;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}
