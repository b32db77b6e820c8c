import { createHash } from 'node:crypto';
import { checkin, diffVersions, Library, listDirectory, openAddress } from 'strata';

// node library.js OLD-IMAGE NEW-IMAGE LIBRARY-DIR DIRECTORY FILE
const [oldImage, newImage, libraryDir, directory, file] = process.argv.slice(2);

// Open an image (raw, qcow2, vmdk, vhd, vhdx or vdi; a path or an http(s) URL) and the file
// system on it (`{ part: '2' }` or `{ lv: 'vg0/root' }` picks one when there are several).
const opened = await openAddress(oldImage);
try {
  const { fs } = opened;
  const entries = await listDirectory(fs, await fs.lookup(directory));
  for (const e of entries) if (e.name !== '.' && e.name !== '..') console.log(`${e.type}\t${e.name}`);
  const inode = await fs.lookup(file);
  const bytes = await fs.read(inode, 0, inode.size);
  console.log(`${file}: ${bytes.length} bytes, sha256 ${createHash('sha256').update(bytes).digest('hex')}`);
} finally {
  await opened.close();
}

// Check both images into a library, then compare the two versions from their manifests.
const library = await Library.open(libraryDir);
try {
  const a = await checkin(library, oldImage, { name: 'example' });
  const b = await checkin(library, newImage, { name: 'example' });
  console.log(`checked in ${a.ref} and ${b.ref}: ${b.newBytes} new bytes for the second`);
  const diff = await diffVersions(library, a.ref, b.ref);
  for (const x of diff.files.added) console.log(`+ ${x.path}`);
  for (const x of diff.files.removed) console.log(`- ${x.path}`);
  for (const x of diff.files.changed) console.log(`M ${x.path}`);
} finally {
  await library.close();
}
