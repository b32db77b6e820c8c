import type { FileSystem, Inode } from '../../src/fs/types.js';
import { walkBatches, walkNameLines } from '../../src/library/listing.js';

/**
 * `ls -R` (names only) and `ls -R -l`'s paths over the same tree: walkNameLines's output (its
 * UTF-8 bytes decoded) and walkBatches's item paths (what the --json listing prints), each
 * with the warnings it gave. The two walks share no code past the reader, so equal results
 * say the byte walk keeps the order, the names and the checks of the object walk.
 */
export async function bothListings(
  fs: FileSystem,
  dirPath = '/',
  dir?: Inode,
  recursive = true,
): Promise<{ text: string; linesWarned: string[]; paths: string[]; pathsWarned: string[]; expected: string }> {
  const top = dir ?? (await fs.root());
  const linesWarned: string[] = [];
  const chunks: Uint8Array[] = [];
  for await (const c of walkNameLines(fs, dirPath, top, { recursive, onWarning: (w) => linesWarned.push(w) }))
    chunks.push(Buffer.from(c));
  const text = Buffer.concat(chunks).toString('utf8');
  const pathsWarned: string[] = [];
  const paths: string[] = [];
  for await (const batch of walkBatches(fs, dirPath, top, { recursive, onWarning: (w) => pathsWarned.push(w) }))
    for (const it of batch) paths.push(recursive ? it.path : it.name);
  // a name may hold a newline: compare the whole output, not lines
  return { text, linesWarned, paths, pathsWarned, expected: paths.map((p) => `${p}\n`).join('') };
}
