import type { ByteSource } from '../io/byte-source.js';

/** One volume found on a disk: a partition, a logical volume, or the whole disk. */
export interface Volume {
  /** Address used by the CLI: "1", "2", "5" (MBR logical), "vg0/root" (LVM), "" (whole disk). */
  id: string;
  /** The scheme it came from: 'mbr' | 'gpt' | 'lvm' | 'whole'. */
  scheme: string;
  /** Human type: 'Linux filesystem', 'EFI System', 'Linux LVM', 'extended', ... */
  type: string;
  /** Raw type code: MBR type byte as hex ('0x83') or GPT type GUID, or LVM segment type. */
  typeCode?: string;
  /** Byte offset within the containing source (for LVM LVs: within the PV of the first segment, informational). */
  start: number;
  size: number;
  name?: string;
  uuid?: string;
  /** Flags: 'bootable', 'logical', 'extended', 'protective', ... */
  flags?: string[];
  /** The volume's bytes. */
  source: ByteSource;
  /** The parent volume's id when nested (an LV inside GPT partition 2 has parent "2"). */
  parent?: string;
  /** Detected content: 'ext4', 'xfs', 'lvm2-pv', 'swap', ... (filled by probing). */
  content?: string;
  /** Scheme-specific facts (GPT LBAs and attribute bits, MBR sectors, LVM segments ...), for --json. */
  details?: Record<string, unknown>;
}

export interface PartitionTable {
  scheme: string; // 'mbr' | 'gpt' | 'lvm'
  warnings: string[];
  volumes: Volume[];
}
