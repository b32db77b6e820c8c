import type { OpenOptions } from '../../formats/types.js';
import type { Address } from '../../library/address.js';
import type { TargetOptions } from '../../library/target.js';

/**
 * How a mount opens its TARGET (openMountTree, and the reader thread that opens a read-only
 * image itself): its own module so that session.ts need not import the fuse index.
 */
export interface OpenMountOptions {
  address?: Address;
  open?: OpenOptions;
  target?: TargetOptions;
}
