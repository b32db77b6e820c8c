import { open } from 'node:fs/promises';
import { StrataError } from '../../util/errors.js';
import type { Library } from '../library.js';
import { fileContent, findEntry, versionFiles } from '../library-verbs.js';
import type { ContentSource } from './changes.js';

const CHUNK = 1024 * 1024;

/**
 * The bytes of a change's content, chunk by chunk, whatever its source: a local file, bytes
 * in memory, blobs of the store (chunks a client uploaded first; their total checked against
 * the size the change names), or a regular file of a stored version (checked against the
 * size the change set recorded, so a version that is not what the planner saw is an error,
 * not a quiet mismatch).
 */
export async function* contentChunks(lib: Library, src: ContentSource): AsyncGenerator<Uint8Array> {
  if (src.kind === 'bytes') {
    yield src.data;
    return;
  }
  if (src.kind === 'file') {
    const fh = await open(src.path, 'r');
    try {
      const buf = new Uint8Array(CHUNK);
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
        if (bytesRead === 0) break;
        yield buf.slice(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
    return;
  }
  if (src.kind === 'chunks') {
    let n = 0;
    for (const d of src.chunks) {
      const b = await lib.store.get(d); // checked against its digest
      n += b.length;
      if (n > src.size) break;
      yield b;
    }
    if (n !== src.size) {
      throw new StrataError(
        'CORRUPT',
        `the chunks of a new file hold ${n > src.size ? 'more' : n} bytes, not ${src.size}`,
        {
          file: lib.store.name,
          structure: 'content chunks',
        },
      );
    }
    return;
  }
  const files = await versionFiles(lib, src.ref, src.part);
  const e = findEntry(files, src.path);
  if (e.type !== 'file' || e.size !== src.size || (src.digest !== undefined && e.digest !== src.digest)) {
    throw new StrataError('CORRUPT', `${src.ref}:${src.path} is not the file the change set names`, {
      file: src.ref,
      structure: 'file manifest',
    });
  }
  yield* fileContent(lib, files, e);
}
