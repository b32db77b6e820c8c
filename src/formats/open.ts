import { realpathSync } from 'node:fs';
import * as path from 'node:path';
import type { ByteSource } from '../io/byte-source.js';
import { CachedSource } from '../io/cached-source.js';
import { FileSource } from '../io/file-source.js';
import { StrataError } from '../util/errors.js';
import { LIMITS } from '../util/limits.js';
import { isQcow2, isVdi, isVhd, isVhdx, isVmdk } from './probe.js';
import { rawDriver } from './raw/index.js';
import type { BackingRef, DiskImage, FormatDriver, OpenContext, OpenOptions } from './types.js';

/** A driver whose reader module is imported on first open: detection only needs the probe. */
function lazyDriver(name: string, probe: FormatDriver['probe'], load: () => Promise<FormatDriver>): FormatDriver {
  return { name, probe, open: async (ctx) => (await load()).open(ctx) };
}

/** Detection order: formats with a magic at offset 0 first, VHD (footer at the end) last, raw as fallback. */
export const DRIVERS: readonly FormatDriver[] = [
  lazyDriver('qcow2', isQcow2, async () => (await import('./qcow2/index.js')).qcow2Driver),
  lazyDriver('vhdx', isVhdx, async () => (await import('./vhdx/index.js')).vhdxDriver),
  lazyDriver('vdi', isVdi, async () => (await import('./vdi/index.js')).vdiDriver),
  lazyDriver('vmdk', isVmdk, async () => (await import('./vmdk/index.js')).vmdkDriver),
  lazyDriver('vhd', isVhd, async () => (await import('./vhd/index.js')).vhdDriver),
  rawDriver,
];

export function driverByName(name: string): FormatDriver {
  const d = DRIVERS.find((x) => x.name === name);
  if (!d)
    throw new StrataError('USAGE', `unknown image format '${name}' (known: ${DRIVERS.map((x) => x.name).join(', ')})`);
  return d;
}

const isUrl = (s: string) => /^https?:\/\//i.test(s);

/** Open a source as plain bytes: a local file, or an http(s) URL read by ranges through a cache. */
export async function openByteSource(location: string, options: OpenOptions = {}): Promise<ByteSource> {
  if (isUrl(location)) {
    const { HttpSource } = await import('../io/http-source.js');
    const h = await HttpSource.open(location, { ...options.http, headers: options.httpHeaders });
    return new CachedSource(h, { blockSize: 1 << 20, capacity: 64 << 20 });
  }
  return FileSource.open(location);
}

/** Find the driver whose probe claims this source. */
export async function detectFormat(src: ByteSource): Promise<FormatDriver> {
  const head = await src.read(0, Math.min(src.size, 65536));
  const tail = await src.read(Math.max(0, src.size - 512), Math.min(src.size, 512));
  for (const d of DRIVERS) if (d.probe(head, tail, src.size)) return d;
  return rawDriver;
}

/**
 * Open an image by path or URL: detect the container by content, open its backing chain
 * (confined to the image's folder unless allowed otherwise, loops refused, depth bounded).
 */
export async function openImage(location: string, options: OpenOptions = {}): Promise<DiskImage> {
  return openLayer(location, options, options.format, [], 0);
}

/** Open a container that is already a ByteSource (memory, slice, ...). */
export async function openImageSource(src: ByteSource, options: OpenOptions = {}): Promise<DiskImage> {
  const driver = options.format ? driverByName(options.format) : await detectFormat(src);
  return driver.open(makeContext(src, src.name, options, [], 0));
}

async function openLayer(
  location: string,
  options: OpenOptions,
  format: string | undefined,
  seen: string[],
  depth: number,
): Promise<DiskImage> {
  if (depth > LIMITS.maxChainDepth) {
    throw new StrataError('LIMIT', `backing chain deeper than ${LIMITS.maxChainDepth}`, { file: location });
  }
  const key = canonical(location);
  if (seen.includes(key)) {
    throw new StrataError('LOOP', `backing chain loops back to ${key} (${[...seen, key].join(' -> ')})`, {
      file: location,
      structure: 'backing chain',
    });
  }
  const src = await openByteSource(location, options);
  try {
    if (src.size === 0) throw new StrataError('CORRUPT', 'empty file: no image header', { file: location, offset: 0 });
    const driver = format ? driverByName(format) : await detectFormat(src);
    return await driver.open(makeContext(src, location, options, [...seen, key], depth));
  } catch (e) {
    await src.close?.();
    throw e;
  }
}

function makeContext(
  src: ByteSource,
  location: string,
  options: OpenOptions,
  seen: string[],
  depth: number,
): OpenContext {
  const warnings: string[] = [];
  return {
    source: src,
    location,
    options,
    warnings,
    warn: (m) => warnings.push(m),
    openBacking: async (ref: BackingRef) => {
      const resolved = await options.resolveBacking?.(ref, location);
      if (resolved) return resolved;
      const target = resolveReference(location, ref.path, options, 'backing file');
      return openLayer(target, options, ref.format, seen, depth + 1);
    },
    openCompanion: async (ref: string, structure: string) => {
      const target = resolveReference(location, ref, options, structure);
      if (seen.includes(canonical(target))) {
        throw new StrataError('LOOP', `${structure} refers back to an image in its own chain`, {
          file: location,
          structure,
        });
      }
      return openByteSource(target, options);
    },
  };
}

function canonical(location: string): string {
  if (isUrl(location)) return new URL(location).href;
  try {
    return realpathSync(location);
  } catch {
    return path.resolve(location);
  }
}

/**
 * Resolve a reference written inside an image relative to the image, and refuse it when
 * it leaves the image's folder (or the allowed roots), following symlinks: a hostile image
 * must not make us read /etc/shadow or a device.
 */
export function resolveReference(imageLocation: string, ref: string, options: OpenOptions, structure: string): string {
  if (ref.length === 0 || ref.includes('\0')) {
    throw new StrataError('CORRUPT', `empty or invalid ${structure} name`, { file: imageLocation, structure });
  }
  if (isUrl(imageLocation)) {
    const base = new URL(imageLocation);
    const u = new URL(ref, base);
    const dir = base.href.slice(0, base.href.lastIndexOf('/') + 1);
    if (!options.allowAnyPath && (u.origin !== base.origin || !u.href.startsWith(dir))) {
      throw new StrataError('DENIED', `${structure} ${ref} lies outside ${dir}; pass allowAnyPath to follow it`, {
        file: imageLocation,
        structure,
      });
    }
    return u.href;
  }
  if (/^[a-z][a-z0-9+.-]*:/i.test(ref) && !/^[a-zA-Z]:[\\/]/.test(ref)) {
    throw new StrataError('UNSUPPORTED', `${structure} uses a protocol we do not follow: ${ref}`, {
      file: imageLocation,
      structure,
    });
  }
  const imageDir = path.dirname(canonical(imageLocation));
  const target = path.resolve(imageDir, ref);
  if (options.allowAnyPath) return target;
  const real = canonical(target);
  const roots = [imageDir, ...(options.allowRoots ?? []).map((r) => canonical(r))];
  const inside = roots.some((r) => real === r || real.startsWith(r.endsWith(path.sep) ? r : r + path.sep));
  if (!inside) {
    throw new StrataError(
      'DENIED',
      `${structure} ${ref} resolves to ${real}, outside the image's folder ${imageDir}; allow it with --allow-root DIR or --allow-any-path`,
      { file: imageLocation, structure },
    );
  }
  return real;
}
