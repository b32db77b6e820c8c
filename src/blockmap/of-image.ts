import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { OpenOptions } from '../formats/types.js';
import type { BlockMap } from './block-map.js';
import { buildBlockMap } from './build.js';

/** Open an image (path or URL, any container), build the block map of its virtual disk, close it. */
export async function blockMapOfImage(image: string, opts: OpenOptions = {}): Promise<BlockMap> {
  const img = await openImage(image, opts);
  try {
    return await buildBlockMap(img);
  } finally {
    await closeChain(img);
  }
}
