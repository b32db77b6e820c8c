import type { ByteSource } from '../../io/byte-source.js';
import { isQcow2 } from '../probe.js';
import type { BackingRef, DiskImage, FormatDriver, OpenContext } from '../types.js';
import { parseHeader } from './header.js';
import { loadL1, Qcow2Image } from './image.js';

export { parseHeader, type Qcow2Header } from './header.js';
export { Qcow2Image } from './image.js';

/** qemu's names for backing formats, mapped to our driver names. */
const BACKING_FORMATS: Record<string, string> = {
  raw: 'raw',
  file: 'raw',
  qcow2: 'qcow2',
  vmdk: 'vmdk',
  vpc: 'vhd',
  vhd: 'vhd',
  vhdx: 'vhdx',
  vdi: 'vdi',
};

async function open(ctx: OpenContext): Promise<DiskImage> {
  const src = ctx.source;
  const header = await parseHeader(src);
  const l1 = await loadL1(src, header);
  let backingRef: BackingRef | undefined;
  if (header.backingFile !== undefined) {
    backingRef = { path: header.backingFile };
    if (header.backingFormat !== undefined) {
      const f = BACKING_FORMATS[header.backingFormat];
      if (f) backingRef.format = f;
      else ctx.warn(`backing format '${header.backingFormat}' is unknown to Strata; detecting it by content`);
    }
  }
  let dataFile: ByteSource | undefined;
  let backing: DiskImage | undefined;
  try {
    if (header.dataFile !== undefined) dataFile = await ctx.openCompanion(header.dataFile, 'qcow2 external data file');
    if (backingRef && !ctx.options.noBacking) backing = await ctx.openBacking(backingRef);
  } catch (e) {
    await dataFile?.close?.();
    throw e;
  }
  return new Qcow2Image({ src, header, l1, dataFile, backing, backingRef, warnings: ctx.warnings });
}

/** qcow2 v2/v3: detected by the "QFI\xfb" magic. */
export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe: isQcow2,
  open,
};
