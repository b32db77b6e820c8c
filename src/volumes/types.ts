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

/** What a partition-table driver is handed: the disk and what discovery already knows of it. */
export interface DiskContext {
  readonly disk: ByteSource;
  /** The disk's first 512 bytes. */
  readonly sector0: Uint8Array;
  /** Sector 0 is a DOS partition table: signature 0x55AA, status bytes 0x00/0x80, a used entry. */
  readonly mbrLike: boolean;
  /** Sector 0 is a DOS partition table with a protective (0xEE) entry. */
  readonly protective: boolean;
  /** Logical sector size: the caller's, else where a GPT header sits (512 or 4096), else 512. */
  readonly sectorSize: number;
  /** What the whole disk holds by magic (probeContent: 'ext4', 'LVM2_member', 'mbr' ...), read once. */
  content(): Promise<string | undefined>;
  /** The discovery's warnings; drivers add theirs (a probe may too, e.g. for a table it passes over). */
  readonly warnings: string[];
}

/** A table driver's reading of a disk: its volumes (cut with cutVolume, in the table's order) and id. */
export interface TableRead {
  volumes: Volume[];
  /** GPT disk GUID or MBR disk signature ("0x1234abcd"). */
  diskId?: string;
}

/**
 * A partition table (GPT, MBR; a BSD disklabel or an Apple map would be one too), or the
 * whole disk holding one file system. Table drivers are tried on the disk in order
 * (VOLUME_DRIVERS); the first whose probe says yes reads it, and its kind is the disk's scheme.
 */
export interface TableDriver {
  readonly level: 'table';
  /** The scheme it names: 'gpt' | 'mbr' | 'whole' ... */
  readonly kind: string;
  /** Is this the disk's table? It may read the disk (signatures at sector-size offsets, the last sector). */
  probe(ctx: DiskContext): Promise<boolean>;
  open(ctx: DiskContext): Promise<TableRead>;
}

/**
 * A volume manager or container (LVM; LUKS, md RAID would be ones): assembles volumes out of
 * volumes already found whose content it claims. Stack drivers run in order after the table,
 * each over every volume found so far; their volumes name the member they start on as parent.
 */
export interface StackDriver {
  readonly level: 'stack';
  /** The scheme of the volumes it adds: 'lvm' ... */
  readonly kind: string;
  /** Does this volume (its probed content) belong to the driver? */
  probe(volume: Volume): boolean;
  /** The volumes the members make up; problems are warnings (members stay listed). */
  open(members: Volume[], ctx: { disk: ByteSource; warnings: string[] }): Promise<Volume[]>;
}

/** A volume driver: probe, then open, like the format and file-system drivers. */
export type VolumeDriver = TableDriver | StackDriver;
