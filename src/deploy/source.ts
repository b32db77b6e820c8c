import { existsSync } from 'node:fs';
import { closeChain } from '../formats/layer.js';
import { openImage } from '../formats/open.js';
import type { OpenOptions } from '../formats/types.js';
import { Library, libraryLocation } from '../library/library.js';
import { VersionSource } from '../library/version-source.js';
import { chainSource } from '../serve/nbd/export.js';
import { StrataError } from '../util/errors.js';
import type { DeploySource } from './deployer.js';

/** A library version as a deploy source: chunks read from the store, each checked against its digest. */
export async function libraryDeploySource(lib: Library, ref: string, closeLibrary = false): Promise<DeploySource> {
  const v = await lib.catalog.resolve(ref);
  const manifest = await lib.layout(v.manifest);
  const version = new VersionSource(lib.store, manifest, `${lib.dir}#${v.image}@${v.number}`);
  return {
    name: version.name,
    size: version.size,
    readInto: (o, out) => version.readInto(o, out),
    status: (o, l) => version.status(o, l),
    manifest,
    manifestDigest: v.manifest,
    layoutOf: (d) => lib.layout(d),
    close: async () => {
      await version.close();
      if (closeLibrary) await lib.close();
    },
  };
}

/** An image file or URL (any format Strata reads, backing chain resolved) as a deploy source. */
export async function imageDeploySource(image: string, open: OpenOptions = {}): Promise<DeploySource> {
  const img = await openImage(image, open);
  const src = chainSource(img);
  return {
    name: img.name,
    size: img.size,
    readInto: async (o, out) => {
      if (src.readInto) return src.readInto(o, out);
      const b = await src.read(o, out.length);
      out.set(b);
      return b.length;
    },
    status: (o, l) => src.status!(o, l),
    close: async () => closeChain(img),
  };
}

/** SOURCE as the CLI takes it: an existing file or a URL is an image, anything else a library REF. */
export async function openDeploySource(
  source: string,
  opts: { library?: string; open?: OpenOptions } = {},
): Promise<DeploySource> {
  if (existsSync(source) || /^https?:\/\//i.test(source)) return imageDeploySource(source, opts.open);
  let lib: Library;
  try {
    lib = await Library.open(opts.library, { create: false });
  } catch (e) {
    throw new StrataError(
      'NOT_FOUND',
      `not a file, and no library at ${libraryLocation(opts.library)} to look it up in as a REF`,
      { file: source },
      { cause: e },
    );
  }
  try {
    return await libraryDeploySource(lib, source, true);
  } catch (e) {
    await lib.close();
    throw e;
  }
}
