import { looksLikeDescriptor } from './vmdk/descriptor.js';

/**
 * Content probes of every container, apart from their readers: detection needs only these,
 * so a command loads just the reader of the format it found (start-up is a large part of
 * a short run). Each takes the first up-to-64-KiB of the file (`head`), its last
 * up-to-512 bytes (`tail`) and its size.
 */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const VDI_SIGNATURE = 0xbeda107f;
export const VHD_COOKIE = [0x63, 0x6f, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x78]; // "conectix"
export const VHD_FOOTER = 512;
export const VHDX_SIG_FILE = 'vhdxfile';
export const VMDK_SPARSE_MAGIC = 0x564d444b; // "KDMV" little-endian
export const VMDK_COWD_MAGIC = 0x44574f43; // "COWD": ESX sparse (VMFSSPARSE), not read

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Do the bytes at `at` equal `magic`? */
export const hasMagic = (b: Uint8Array, at: number, magic: readonly number[]): boolean =>
  at >= 0 && b.length >= at + magic.length && magic.every((c, i) => b[at + i] === c);

/** Do the bytes at `at` spell the ASCII string `s`? */
export function hasSignature(b: Uint8Array, at: number, s: string): boolean {
  if (b.length < at + s.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
}

export const isQcow2 = (head: Uint8Array): boolean => head.length >= 8 && view(head).getUint32(0) === QCOW2_MAGIC;

export const isVhdx = (head: Uint8Array): boolean => hasSignature(head, 0, VHDX_SIG_FILE);

export const isVdi = (head: Uint8Array): boolean =>
  head.length >= 0x44 && view(head).getUint32(0x40, true) === VDI_SIGNATURE;

/** A sparse extent (KDMV or COWD) or a text descriptor. */
export function isVmdk(head: Uint8Array, _tail: Uint8Array, size: number): boolean {
  if (head.length >= 4) {
    const m = view(head).getUint32(0, true);
    if (m === VMDK_SPARSE_MAGIC || m === VMDK_COWD_MAGIC) return true;
  }
  return looksLikeDescriptor(head, size);
}

/** The footer cookie at the end (or its copy at the start of a dynamic disk). */
export const isVhd = (head: Uint8Array, tail: Uint8Array): boolean =>
  hasMagic(tail, tail.length - VHD_FOOTER, VHD_COOKIE) || hasMagic(head, 0, VHD_COOKIE);
