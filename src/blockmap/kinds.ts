/**
 * The block map's vocabulary: what owns a byte of the virtual disk. Small on purpose, so
 * a cache, a chunker or a person can act on it; file systems name their structures in
 * their own words (`OwnedRange.kind`) and `kindOfRegion` folds them into these.
 *
 * | kind | what | fields |
 * | --- | --- | --- |
 * | `partition-table` | MBR / EBR sectors, GPT headers and entry arrays (primary and backup) | detail |
 * | `lvm-metadata` | LVM2 PV label sector and metadata areas | volume (the PV), detail |
 * | `unpartitioned` | disk bytes in no volume (gaps, alignment, extended-container slack, PV extents in no LV) | |
 * | `volume` | inside a volume whose content is not a file system we read (swap, unknown, past the fs end) | volume, detail |
 * | `boot` | a file system's boot/reserved area before its superblock | volume, fs |
 * | `superblock` | superblock and its backups | volume, fs, detail |
 * | `group-desc` | group descriptor blocks (and reserved GDT growth blocks) | volume, fs, detail |
 * | `bitmap` | block and inode allocation bitmaps | volume, fs, detail |
 * | `inode-table` | inode records; `inode` is the first inode the range holds | volume, fs, inode |
 * | `journal` | the file-system journal; fileOffset is the offset inside it | volume, fs, inode, fileOffset |
 * | `extent-tree` | extent-tree nodes and indirect blocks that map a file | volume, fs, inode, detail |
 * | `directory` | directory blocks | volume, fs, inode, path, fileOffset |
 * | `file` | the data of a non-directory (regular file, symlink target) | volume, fs, inode, path, fileOffset |
 * | `xattr` | extended-attribute blocks | volume, fs, inode |
 * | `reserved` | other file-system metadata (reserved inodes' data, resize inode) | volume, fs, inode, detail |
 * | `allocated` | in use per the file system's allocation but no owner found (orphans, preallocation) | volume, fs |
 * | `free` | free space of a file system | volume, fs |
 */
export const KINDS = [
  'partition-table',
  'lvm-metadata',
  'unpartitioned',
  'volume',
  'boot',
  'superblock',
  'group-desc',
  'bitmap',
  'inode-table',
  'journal',
  'extent-tree',
  'directory',
  'file',
  'xattr',
  'reserved',
  'allocated',
  'free',
] as const;

export type Kind = (typeof KINDS)[number];

export const KIND_CODE: Readonly<Record<Kind, number>> = Object.fromEntries(KINDS.map((k, i) => [k, i])) as Record<
  Kind,
  number
>;

/** What a kind means for a cache or a copier: file data, metadata, or nothing worth keeping. */
export type KindClass = 'data' | 'metadata' | 'unused';

export function classOf(kind: Kind): KindClass {
  if (kind === 'file') return 'data';
  if (kind === 'free' || kind === 'unpartitioned') return 'unused';
  return 'metadata';
}

/** Kinds that are not in use: what `used` leaves out. */
export const isUnused = (code: number): boolean => code === KIND_CODE.free || code === KIND_CODE.unpartitioned;

/**
 * Who wins where two claims overlap. Backgrounds (unpartitioned < volume < free <
 * allocated) are painted under everything; among real owners fixed-layout structures beat
 * per-inode ones, and partition tables beat anything inside a volume. Equal priority: the
 * claim made first wins (claims are made in a fixed order, so the winner is deterministic).
 */
export const PRIORITY: Readonly<Record<Kind, number>> = {
  unpartitioned: 0,
  volume: 1,
  free: 2,
  allocated: 3,
  file: 10,
  reserved: 11,
  directory: 12,
  xattr: 13,
  'extent-tree': 14,
  journal: 15,
  boot: 16,
  superblock: 16,
  'group-desc': 16,
  bitmap: 16,
  'inode-table': 16,
  'lvm-metadata': 20,
  'partition-table': 21,
};

/** Lowest priority of a real owner (overlaps among these are reported). */
export const OWNER_PRIORITY = 10;

/**
 * A file system's own structure name (`OwnedRange.kind`) in the map's vocabulary, with the
 * original name kept as detail when it says more. Unknown names are `reserved` metadata,
 * so a new file system's structures are never lost, only less precisely named.
 */
export function kindOfRegion(fsKind: string, fsDetail?: string): { kind: Kind; detail?: string } {
  switch (fsKind) {
    case 'boot':
    case 'boot-sector':
      return { kind: 'boot' };
    case 'superblock':
      return { kind: 'superblock' };
    case 'group-descriptors':
    case 'group-desc':
      return { kind: 'group-desc' };
    case 'reserved-gdt':
      return { kind: 'group-desc', detail: 'reserved GDT blocks' };
    case 'block-bitmap':
      return { kind: 'bitmap', detail: 'block bitmap' };
    case 'inode-bitmap':
      return { kind: 'bitmap', detail: 'inode bitmap' };
    case 'bitmap':
      return { kind: 'bitmap' };
    case 'inode-table':
      return { kind: 'inode-table' };
    case 'journal':
      return { kind: 'journal' };
    case 'extent-tree':
      return { kind: 'extent-tree' };
    case 'indirect-block':
    case 'indirect':
      return { kind: 'extent-tree', detail: 'indirect block' };
    case 'directory':
      return { kind: 'directory' };
    case 'xattr-block':
    case 'xattr':
      return { kind: 'xattr' };
    case 'reserved':
      return fsDetail === 'boot sector' ? { kind: 'boot' } : { kind: 'reserved' };
    default:
      return { kind: 'reserved', detail: fsKind };
  }
}
