import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { MapFile } from '../blockmap/map-file.js';
import { BlockMapWriter } from '../blockmap/save-stream.js';
import type { OpenOptions } from '../formats/types.js';
import type { Target, TargetOptions } from './target.js';
import { streamBlockMapOfTarget } from './target-map.js';

/**
 * The block map of a target (image file, URL or library version) in a scratch file,
 * read on demand (MapFile): the map streamed as `blockmap --save` writes it (memory
 * bounded by the budget while it is built), then opened without holding its records or
 * names (issue 22: `trace resolve` of a tree of millions of files). Closing the MapFile
 * removes the scratch file.
 */
export async function mapFileOfTarget(
  arg: string,
  openOptions: OpenOptions = {},
  opts: TargetOptions & { onTarget?: (t: Target) => void } = {},
): Promise<MapFile> {
  const dir = mkdtempSync(path.join(tmpdir(), 'strata-map-'));
  const remove = () => rmSync(dir, { recursive: true, force: true });
  const file = path.join(dir, 'map');
  try {
    const writer = new BlockMapWriter(file);
    try {
      await streamBlockMapOfTarget(
        arg,
        openOptions,
        opts,
        () => {},
        (s, _e, k, v, ino, nm, off) => writer.add(s, k, v, ino, nm, off),
        undefined,
        (m) => writer.finish(m),
      );
    } finally {
      writer.dispose();
    }
  } catch (e) {
    remove();
    throw e;
  }
  return MapFile.open(file, { trusted: true, onClose: remove });
}
