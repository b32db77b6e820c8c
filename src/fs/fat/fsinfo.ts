import { u32 } from './boot.js';

/** The FAT32 FSInfo sector: hints (free cluster count, next free cluster) kept by the driver that last wrote. */
export interface FsInfoSector {
  valid: boolean;
  /** 0xffffffff: unknown. */
  freeCount: number;
  nextFree: number;
}

export function parseFsInfo(b: Uint8Array): FsInfoSector {
  const valid = b.length >= 512 && u32(b, 0) === 0x41615252 && u32(b, 484) === 0x61417272 && u32(b, 508) === 0xaa550000;
  return { valid, freeCount: valid ? u32(b, 488) : 0xffffffff, nextFree: valid ? u32(b, 492) : 0xffffffff };
}
