/*
 * extDirPlus: the READDIRPLUS reply (offset 0) of one ext directory, built in one call on the
 * FUSE serving thread: the directory's blocks are parsed (linear and htree leaves, leaf tails
 * and htree tails verified with metadata_csum), each child's inode is decoded from the
 * inode-table pieces the caller holds (checksum verified) and its fuse_direntplus written,
 * exactly as src/serve/fuse/session.ts writes it from src/fs/ext's reader (that path is the
 * reference: test/serve/fuse-dirplus.test.ts compares the two byte for byte).
 *
 * Only the clean case is served here: whatever the TypeScript reader would warn about or
 * treat specially (a bad rec_len, an unsafe or duplicate name, a name that is not plain
 * UTF-8, an out-of-range inode, a checksum mismatch, a bad extra inode size, an absurd size,
 * a dirent with no file type) answers FALLBACK, and the caller serves the directory the
 * TypeScript way, which warns and answers EIO where it must. Every read is bounds-checked.
 *
 * extDirPlus(cfg: Float64Array, groups: Float64Array, dir: Uint8Array, pieces: Array,
 *            out: Uint8Array, res: Float64Array) -> number
 *   cfg: see CFG_* below. groups[g]: volume offset of group g's inode table. dir: the
 *   directory's blocks from logical block 0 on, contiguous. pieces[k]: the inode-table piece
 *   at volume offset k * pieceSize (a Uint8Array), or undefined.
 *   Returns the reply's length (>= 0), FALLBACK (-1; res[0] says why), or MISSING (-2:
 *   res[0] = n, res[1..n] the piece numbers to load before calling again).
 *   On success: res[0] = the listing's length ('.' and '..' included), res[1] = entries
 *   written, res[2] = n, then n pairs (reply offset, inode) of the entries whose inode is a
 *   directory (the caller checks them for cycles and clears the refused ones).
 *
 * extDirPlusFd(cfg, groups, cache: Uint8Array, tags: Float64Array, out, res) -> number
 *   The same reply with no bytes handed in: the volume is a plain window of a local file
 *   (cfg[CFG_FD] at cfg[CFG_BASE]), so this call reads everything itself with pread: the
 *   directory's inode (cfg[CFG_DIR_INO]), its extent map (depth 0) or direct blocks, its blocks,
 *   and its children's inode-table pieces, kept in `cache` (a direct-mapped cache of
 *   cache.length / pieceSize pieces; tags[2s] = the piece number in slot s or -1, tags[2s+1] its
 *   length). What src/fs/ext's plusDirectory would not hand out, and any short read, is FALLBACK.
 *   Never MISSING.
 */
#include <errno.h>
#include <math.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  CFG_BLOCK_SIZE,
  CFG_INODE_SIZE,
  CFG_INODES_PER_GROUP,
  CFG_INODES_COUNT,
  CFG_FLAGS, /* F_* */
  CFG_CSUM_SEED,
  CFG_DIR_SEED,
  CFG_INDEXED,
  CFG_SELF_INO,
  CFG_PARENT_INO,
  CFG_ROOT_INO,
  CFG_VALID_SEC,
  CFG_VALID_NSEC,
  CFG_SIZE,
  CFG_ID_BASE,
  CFG_PIECE_SIZE,
  CFG_BLKSIZE,
  /* extDirPlusFd only: the image file, where the volume starts in it and its size, the file
     system's block count and first data block, and the directory's inode */
  CFG_FD,
  CFG_BASE,
  CFG_VOLUME_SIZE,
  CFG_BLOCKS_COUNT,
  CFG_FIRST_DATA_BLOCK,
  CFG_DIR_INO,
  CFG_N
};
#define F_CSUM 1
#define F_HUGE 2
#define F_FILETYPE 4

#define FALLBACK (-1)
#define MISSING (-2)
/* why a directory fell back (res[0]) */
enum {
  WHY_CONFIG = 1,
  WHY_REC_LEN,
  WHY_NAME,
  WHY_INODE_RANGE,
  WHY_LEAF_CSUM,
  WHY_DX_CSUM,
  WHY_DX_COUNT,
  WHY_FILE_TYPE,
  WHY_INODE_CSUM,
  WHY_EXTRA_ISIZE,
  WHY_SIZE_HIGH,
  WHY_PIECE,
  WHY_DUPLICATE,
  WHY_MEMORY,
  WHY_RES,
  /* extDirPlusFd: the directory's own inode or block map is one the reader would warn about
     or serves otherwise (not a directory, inline or encrypted, a deep or odd extent tree,
     indirect blocks, holes, unwritten or out-of-range runs), or a read fell short */
  WHY_DIR_INODE,
  WHY_DIR_MAP,
  WHY_READ
};

#define ENTRY_OUT 128
#define DIRENT_BASE 24

static uint32_t crc_table[8][256];
static int crc_ready;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[0][i] = c;
  }
  for (int i = 0; i < 256; i++)
    for (int s = 1; s < 8; s++) crc_table[s][i] = (crc_table[s - 1][i] >> 8) ^ crc_table[0][crc_table[s - 1][i] & 0xff];
  crc_ready = 1;
}

/* crc32c without pre/post inversion, as src/util/crc32c.ts's crc32cRaw */
static uint32_t crc(uint32_t c, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint32_t a = c ^ (p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    c = crc_table[7][a & 0xff] ^ crc_table[6][(a >> 8) & 0xff] ^ crc_table[5][(a >> 16) & 0xff] ^
        crc_table[4][a >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    p += 8;
    n -= 8;
  }
  while (n--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

static uint32_t crc_u32(uint32_t c, uint32_t v) {
  uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  return crc(c, b, 4);
}

static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const uint8_t *p) {
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
/* a number written as protocol.ts's u64 does: floor division into two 32-bit words (two's complement) */
static void put64(uint8_t *p, double v) {
  double hi = floor(v / 4294967296.0);
  double lo = v - hi * 4294967296.0;
  put32(p, (uint32_t)(int64_t)lo);
  put32(p + 4, (uint32_t)(int64_t)hi);
}

/* strict UTF-8 (what TextDecoder decodes without a replacement character), no leading BOM */
static int plain_utf8(const uint8_t *s, size_t n) {
  if (n >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf) return 0;
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    else return 0;
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += len;
  }
  return 1;
}

typedef struct {
  const uint8_t *name;
  uint32_t ino;
  uint8_t len, ft;
} Entry;

typedef struct {
  Entry *v;
  size_t n, cap;
} Entries;

static int push(Entries *e, Entry x) {
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 256;
    Entry *v = realloc(e->v, cap * sizeof(Entry));
    if (!v) return 0;
    e->v = v;
    e->cap = cap;
  }
  e->v[e->n++] = x;
  return 1;
}

/* parseDirBlock of src/fs/ext/directory.ts; 0 when it would have warned (the caller falls back) */
static int parse_block(const double *cfg, const uint8_t *blk, size_t size, int dots_seen, int check_tail, Entries *out,
                       int *why) {
  int csum = ((int)cfg[CFG_FLAGS] & F_CSUM) != 0;
  size_t data_end = size;
  if (check_tail && size >= 12) {
    size_t t = size - 12;
    if (le32(blk + t) == 0 && le16(blk + t + 4) == 12 && blk[t + 6] == 0 && blk[t + 7] == 0xde) {
      data_end = t;
      if (csum && crc((uint32_t)cfg[CFG_DIR_SEED], blk, t) != le32(blk + t + 8)) return *why = WHY_LEAF_CSUM, 0;
    }
  }
  double inodes_count = cfg[CFG_INODES_COUNT];
  size_t pos = 0;
  int dots = dots_seen;
  while (pos + 8 <= data_end) {
    uint32_t ino = le32(blk + pos);
    size_t rec = le16(blk + pos + 4);
    if (size >= 65536 && (rec == 65535 || rec == 0)) rec = 65536;
    size_t name_len = blk[pos + 6];
    uint8_t ft = blk[pos + 7];
    if (rec < 8 || rec % 4 != 0 || pos + rec > size || 8 + name_len > rec) return *why = WHY_REC_LEN, 0;
    if (ino != 0) {
      const uint8_t *nb = blk + pos + 8;
      int is_dot = (name_len == 1 && nb[0] == '.') || (name_len == 2 && nb[0] == '.' && nb[1] == '.');
      if (is_dot && dots < 2 && pos < 24) {
        dots++;
      } else {
        if (name_len == 0 || is_dot || memchr(nb, '/', name_len) || memchr(nb, 0, name_len)) return *why = WHY_NAME, 0;
        if (ino > inodes_count) return *why = WHY_INODE_RANGE, 0;
        /* no file type: the reader takes it from the inode (ext2 without filetype, odd values) */
        if (ft == 0 || ft > 7) return *why = WHY_FILE_TYPE, 0;
        if (!plain_utf8(nb, name_len)) return *why = WHY_NAME, 0;
        Entry e = {nb, ino, (uint8_t)name_len, ft};
        if (!push(out, e)) return *why = WHY_MEMORY, 0;
      }
    }
    pos += rec;
  }
  return 1;
}

/* checkDxTail of directory.ts; 0 when it would have warned */
static int dx_tail_ok(uint32_t seed, const uint8_t *blk, size_t size, size_t count_off, int *why) {
  if (count_off + 4 > size) return 1;
  size_t limit = le16(blk + count_off), count = le16(blk + count_off + 2);
  size_t tail = count_off + limit * 8;
  if (count > limit || tail + 8 > size) return *why = WHY_DX_COUNT, 0;
  uint32_t c = crc(seed, blk, count_off + count * 8);
  c = crc(c, blk + tail, 4);
  c = crc_u32(c, 0);
  if (c != le32(blk + tail + 4)) return *why = WHY_DX_CSUM, 0;
  return 1;
}

/* 1 when some earlier entry has the same name (the reader's name map would merge them) */
static int has_duplicates(const Entries *e) {
  if (e->n < 2) return 0;
  size_t cap = 1;
  while (cap < e->n * 2) cap <<= 1;
  int32_t *slot = malloc(cap * sizeof(int32_t));
  if (!slot) return -1;
  memset(slot, 0xff, cap * sizeof(int32_t));
  int dup = 0;
  for (size_t i = 0; i < e->n && !dup; i++) {
    uint32_t h = 2166136261u;
    for (size_t k = 0; k < e->v[i].len; k++) h = (h ^ e->v[i].name[k]) * 16777619u;
    size_t j = h & (cap - 1);
    while (slot[j] >= 0) {
      const Entry *o = &e->v[slot[j]];
      if (o->len == e->v[i].len && memcmp(o->name, e->v[i].name, o->len) == 0) {
        dup = 1;
        break;
      }
      j = (j + 1) & (cap - 1);
    }
    slot[j] = (int32_t)i;
  }
  free(slot);
  return dup;
}

/* a mode's type is one the reader knows (else 'unknown': written as a regular file) */
static int known_type(uint32_t t) {
  return t == 0x1000 || t == 0x2000 || t == 0x4000 || t == 0x6000 || t == 0x8000 || t == 0xa000 || t == 0xc000;
}
/* DT_ of TYPE_BY_DIRENT[ft] (1..7) */
static const uint32_t DT_BY_FT[8] = {0, 8, 4, 2, 6, 1, 12, 10};

/*
 * What decodeInode of src/fs/ext/inode.ts warns about or refuses in inode `ino` (raw: its
 * bytes): a bad extra inode size, a checksum mismatch (metadata_csum), an absurd size; 0 then.
 * *extra: the extra inode size.
 */
static int inode_ok(const double *cfg, uint32_t ino, const uint8_t *raw, uint32_t *extra, int *why) {
  size_t isize = (size_t)cfg[CFG_INODE_SIZE];
  uint32_t x = isize > 128 ? le16(raw + 0x80) : 0;
  if (x && (128 + x > isize || x % 4 != 0)) return *why = WHY_EXTRA_ISIZE, 0;
  *extra = x;
  if ((int)cfg[CFG_FLAGS] & F_CSUM) {
    int has_hi = x >= 4;
    uint32_t stored = le16(raw + 0x7c) + (has_hi ? (uint32_t)le16(raw + 0x82) << 16 : 0);
    static const uint8_t zero2[2] = {0, 0};
    uint32_t c = crc_u32(crc_u32((uint32_t)cfg[CFG_CSUM_SEED], ino), le32(raw + 0x64));
    c = crc(c, raw, 0x7c);
    c = crc(c, zero2, 2);
    if (has_hi) {
      c = crc(c, raw + 0x7e, 0x82 - 0x7e);
      c = crc(c, zero2, 2);
      c = crc(c, raw + 0x84, isize - 0x84);
    } else {
      c = crc(c, raw + 0x7e, isize - 0x7e) & 0xffff;
    }
    if (c != stored) return *why = WHY_INODE_CSUM, 0;
  }
  if (le32(raw + 0x6c) >= (1u << 21)) return *why = WHY_SIZE_HIGH, 0;
  return 1;
}

/*
 * decodeInode of src/fs/ext/inode.ts into a fuse_attr (makeAttr of tree.ts) at `a`; 0 when the
 * reader would warn or throw. *is_dir says whether the inode is a directory.
 */
static int write_attr(const double *cfg, uint32_t ino, const uint8_t *raw, uint8_t *a, int *is_dir, int *why) {
  int flags_cfg = (int)cfg[CFG_FLAGS];
  uint32_t mode_bits = le16(raw);
  uint32_t flags = le32(raw + 0x20);
  uint32_t extra;
  if (!inode_ok(cfg, ino, raw, &extra, why)) return 0;
  double size = (double)le32(raw + 4) + (double)le32(raw + 0x6c) * 4294967296.0;
  int huge = (flags_cfg & F_HUGE) != 0;
  double blocks = (double)le32(raw + 0x1c) + (huge ? (double)le16(raw + 0x74) * 4294967296.0 : 0);
  if (huge && (flags & 0x40000)) blocks *= cfg[CFG_BLOCK_SIZE] / 512;
  uint32_t t = mode_bits & 0xf000;
  int known = known_type(t);
  int is_file = t == 0x8000;
  int devlike = t == 0x2000 || t == 0x6000 || t == 0x1000 || t == 0xc000;
  *is_dir = t == 0x4000;
  double allocated = (blocks + ((flags & 0x10000000) && is_file ? ceil(size / 512) : 0)) * 512;
  double attr_size = devlike ? 0 : size;
  /* times: seconds, and with the extra field 2 more epoch bits and nanoseconds */
  double sec[3];
  uint32_t nsec[3];
  static const size_t SEC_AT[3] = {0x08, 0x10, 0x0c}, EXTRA_AT[3] = {0x8c, 0x88, 0x84}; /* atime, mtime, ctime */
  for (int k = 0; k < 3; k++) {
    sec[k] = (double)(int32_t)le32(raw + SEC_AT[k]);
    nsec[k] = 0;
    if (extra >= EXTRA_AT[k] - 128 + 4) {
      uint32_t x = le32(raw + EXTRA_AT[k]);
      sec[k] += (double)(x & 3) * 4294967296.0;
      nsec[k] = x >> 2 > 999999999u ? 999999999u : x >> 2;
    }
  }
  uint32_t rdev = 0;
  if (t == 0x2000 || t == 0x6000) {
    uint32_t major, minor, d0 = le32(raw + 0x28);
    if (d0 != 0) {
      major = (d0 >> 8) & 0xff;
      minor = d0 & 0xff;
    } else {
      uint32_t d1 = le32(raw + 0x2c);
      major = (d1 & 0xfff00) >> 8;
      minor = (d1 & 0xff) | ((d1 >> 12) & 0xfff00);
    }
    rdev = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xffu) << 12);
  }
  put64(a, ino);
  put64(a + 8, attr_size);
  put64(a + 16, ceil(allocated / 512));
  put64(a + 24, sec[0]);
  put64(a + 32, sec[1]);
  put64(a + 40, sec[2]);
  put32(a + 48, nsec[0]);
  put32(a + 52, nsec[1]);
  put32(a + 56, nsec[2]);
  put32(a + 60, (known ? t : 0x8000) | (mode_bits & 07777));
  put32(a + 64, le16(raw + 0x1a));
  put32(a + 68, le16(raw + 2) + ((uint32_t)le16(raw + 0x78) << 16));
  put32(a + 72, le16(raw + 0x18) + ((uint32_t)le16(raw + 0x7a) << 16));
  put32(a + 76, rdev);
  put32(a + 80, (uint32_t)cfg[CFG_BLKSIZE]);
  put32(a + 84, 0);
  return 1;
}

static size_t dirent_size(size_t name_len) { return ENTRY_OUT + ((DIRENT_BASE + name_len + 7) & ~(size_t)7); }

/* a fuse_dirent at `p` (after its entry_out); returns its length */
static size_t write_dirent(uint8_t *p, double ino, double off, uint32_t dt, const uint8_t *name, size_t len) {
  put64(p, ino);
  put64(p + 8, off);
  put32(p + 16, (uint32_t)len);
  put32(p + 20, dt);
  memcpy(p + DIRENT_BASE, name, len);
  size_t end = (DIRENT_BASE + len + 7) & ~(size_t)7;
  memset(p + DIRENT_BASE + len, 0, end - DIRENT_BASE - len);
  return end;
}

/* Where the children's inode-table pieces come from: piece k's bytes, or NULL (*len 0). */
typedef const uint8_t *(*PieceFn)(void *ctx, uint32_t k, size_t *len);

typedef struct {
  napi_env env;
  napi_value pieces;
} JsPieces;

/* extDirPlus: piece k as the caller holds it in its array, or NULL (to be loaded: MISSING) */
static const uint8_t *js_piece(void *ctx, uint32_t k, size_t *len) {
  JsPieces *ps = ctx;
  napi_value v;
  bool is;
  *len = 0;
  if (napi_get_element(ps->env, ps->pieces, k, &v) != napi_ok) return NULL;
  if (napi_is_typedarray(ps->env, v, &is) != napi_ok || !is) return NULL;
  napi_typedarray_type type;
  size_t n;
  void *data;
  if (napi_get_typedarray_info(ps->env, v, &type, &n, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) return NULL;
  *len = n;
  return data;
}

typedef struct {
  int fd;
  double base, vsize, psz;
  uint8_t *cache;
  double *tags;
  size_t slots;
} FdPieces;

/* bytes [off, off+len) of the volume into p; 0 when they lie past its end or the read falls short */
static int vread(FdPieces *f, uint8_t *p, double off, size_t len) {
  if (off < 0 || off + (double)len > f->vsize) return 0;
  double at = f->base + off;
  size_t got = 0;
  while (got < len) {
    ssize_t r = pread(f->fd, p + got, len - got, (off_t)(at + (double)got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return 1;
}

/* extDirPlusFd: piece k from the cache, else read into its slot (clipped at the volume's end); NULL when unreadable */
static const uint8_t *fd_piece(void *ctx, uint32_t k, size_t *len) {
  FdPieces *f = ctx;
  *len = 0;
  size_t s = k % f->slots;
  uint8_t *slot = f->cache + s * (size_t)f->psz;
  if (f->tags[2 * s] == k) {
    *len = (size_t)f->tags[2 * s + 1];
    return slot;
  }
  double at = k * f->psz;
  if (at >= f->vsize) return NULL;
  size_t n = (size_t)(f->vsize - at < f->psz ? f->vsize - at : f->psz);
  f->tags[2 * s] = -1;
  if (!vread(f, slot, at, n)) return NULL;
  f->tags[2 * s] = k;
  f->tags[2 * s + 1] = (double)n;
  *len = n;
  return slot;
}

static int build(const double *cfg, const double *groups, size_t ngroups, const uint8_t *dir, size_t dir_len,
                 PieceFn get, void *pctx, uint8_t *out, size_t out_len, double *res, size_t res_len, int *why) {
  size_t bs = (size_t)cfg[CFG_BLOCK_SIZE];
  size_t isize = (size_t)cfg[CFG_INODE_SIZE];
  double ipg = cfg[CFG_INODES_PER_GROUP];
  double psz = cfg[CFG_PIECE_SIZE];
  size_t limit = (size_t)cfg[CFG_SIZE];
  if (bs < 1024 || bs > 65536 || (bs & (bs - 1)) || isize < 128 || isize > bs || ipg < 1 || psz < isize ||
      dir_len % bs != 0 || limit > out_len || res_len < 3 || !((int)cfg[CFG_FLAGS] & F_FILETYPE))
    return *why = WHY_CONFIG, FALLBACK;
  int indexed = cfg[CFG_INDEXED] != 0;
  int csum = ((int)cfg[CFG_FLAGS] & F_CSUM) != 0;
  Entries es = {0};
  int ok = 1;
  for (size_t k = 0; ok && k * bs < dir_len; k++) {
    const uint8_t *blk = dir + k * bs;
    size_t dx = 0;
    if (k == 0) dx = indexed ? 0x20 : 0;
    else {
      size_t rec0 = le16(blk + 4);
      if (le32(blk) == 0 && (rec0 == bs || (bs == 65536 && rec0 == 0))) dx = 8;
    }
    if (dx && csum && !dx_tail_ok((uint32_t)cfg[CFG_DIR_SEED], blk, bs, dx, why)) ok = 0;
    else if (!parse_block(cfg, blk, bs, k == 0 ? 0 : 2, dx == 0, &es, why)) ok = 0;
  }
  if (ok) {
    int d = has_duplicates(&es);
    if (d) ok = 0, *why = d < 0 ? WHY_MEMORY : WHY_DUPLICATE;
  }
  if (!ok) {
    free(es.v);
    return FALLBACK;
  }
  /* which children fit, and the inode-table pieces they need */
  size_t used = dirent_size(1) + dirent_size(2), fit = 0;
  if (used > limit) {
    /* the kernel asks for pages: a reply too small for '.' and '..' is the reader's to give */
    free(es.v);
    return *why = WHY_CONFIG, FALLBACK;
  }
  while (fit < es.n && used + dirent_size(es.v[fit].len) <= limit) used += dirent_size(es.v[fit++].len);
  size_t missing = 0;
  /* each child's inode copied out: a later piece may take an earlier one's place (extDirPlusFd's cache) */
  uint8_t *raw = malloc((fit ? fit : 1) * isize);
  if (!raw) {
    free(es.v);
    return *why = WHY_MEMORY, FALLBACK;
  }
  for (size_t i = 0; i < fit; i++) {
    double n = es.v[i].ino - 1;
    double g = floor(n / ipg);
    if (g >= ngroups) {
      ok = 0, *why = WHY_INODE_RANGE;
      break;
    }
    double at = groups[(size_t)g] + (n - g * ipg) * isize;
    double k = floor(at / psz);
    size_t plen;
    const uint8_t *p = get(pctx, (uint32_t)k, &plen);
    if (!p) {
      if (missing + 1 < res_len) {
        size_t j = 1;
        while (j <= missing && res[j] != k) j++;
        if (j > missing) res[++missing] = k;
      }
      continue;
    }
    size_t off = (size_t)(at - k * psz);
    if (off + isize > plen) {
      ok = 0, *why = WHY_PIECE;
      break;
    }
    memcpy(raw + i * isize, p + off, isize);
  }
  if (!ok || missing) {
    free(raw);
    free(es.v);
    if (!ok) return FALLBACK;
    res[0] = (double)missing;
    return MISSING;
  }
  /* the reply */
  size_t at = 0, dirs = 0;
  double valid_sec = cfg[CFG_VALID_SEC];
  uint32_t valid_nsec = (uint32_t)cfg[CFG_VALID_NSEC];
  static const uint8_t dots[2] = {'.', '.'};
  for (int k = 0; k < 2; k++) {
    memset(out + at, 0, ENTRY_OUT);
    at += ENTRY_OUT;
    at += write_dirent(out + at, k == 0 ? cfg[CFG_SELF_INO] : cfg[CFG_PARENT_INO], k + 1, 4, dots, k + 1);
  }
  for (size_t i = 0; i < fit; i++) {
    const Entry *e = &es.v[i];
    uint8_t *p = out + at;
    int is_dir = 0;
    if (!write_attr(cfg, e->ino, raw + i * isize, p + 40, &is_dir, why)) {
      ok = 0;
      break;
    }
    if (is_dir) {
      if (3 + 2 * (dirs + 1) > res_len) {
        ok = 0, *why = WHY_RES;
        break;
      }
      res[3 + 2 * dirs] = (double)at;
      res[4 + 2 * dirs] = e->ino;
      dirs++;
    }
    if (e->ino == (uint32_t)cfg[CFG_ROOT_INO]) {
      memset(p, 0, ENTRY_OUT); /* the root met again: refused, as the session's give() */
    } else {
      put64(p, e->ino + cfg[CFG_ID_BASE]);
      put64(p + 8, 0);
      put64(p + 16, valid_sec);
      put64(p + 24, valid_sec);
      put32(p + 32, valid_nsec);
      put32(p + 36, valid_nsec);
    }
    at += ENTRY_OUT;
    at += write_dirent(out + at, e->ino, (double)(i + 3), DT_BY_FT[e->ft], e->name, e->len);
  }
  size_t total = es.n;
  free(raw);
  free(es.v);
  if (!ok) return FALLBACK;
  res[0] = (double)(total + 2);
  res[1] = (double)(fit + 2);
  res[2] = (double)dirs;
  return (int)at;
}

/* v is a typed array of type `want`: its data and length (also used by fuseread.c) */
int strata_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  bool is;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  if (napi_get_typedarray_info(env, v, &type, len, data, NULL, NULL) != napi_ok || type != want) return 0;
  return 1;
}

static napi_value ExtDirPlus(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *cfg, *groups, *dir, *out, *res;
  size_t ncfg, ngroups, ndir, nout, nres;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 ||
      !strata_typed(env, argv[0], napi_float64_array, &cfg, &ncfg) || ncfg < CFG_N ||
      !strata_typed(env, argv[1], napi_float64_array, &groups, &ngroups) ||
      !strata_typed(env, argv[2], napi_uint8_array, &dir, &ndir) || !strata_typed(env, argv[4], napi_uint8_array, &out, &nout) ||
      !strata_typed(env, argv[5], napi_float64_array, &res, &nres)) {
    napi_throw_type_error(env, NULL,
                          "extDirPlus(cfg: Float64Array, groups: Float64Array, dir: Uint8Array, pieces: Array, out: "
                          "Uint8Array, res: Float64Array)");
    return NULL;
  }
  if (!crc_ready) crc_init();
  int why = 0;
  JsPieces ps = {env, argv[3]};
  int r = build(cfg, groups, ngroups, dir, ndir, js_piece, &ps, out, nout, res, nres, &why);
  if (r == FALLBACK && nres > 0) ((double *)res)[0] = why;
  napi_value v;
  napi_create_int32(env, r, &v);
  return v;
}


#define FL_INDEX 0x1000
#define FL_EXTENTS 0x80000
#define FL_ENCRYPT 0x800
#define FL_INLINE_DATA 0x10000000
#define MAX_PLUS_DIRECTORY (16u << 20) /* src/fs/ext/index.ts: larger directories are read in batches */

/*
 * The directory's blocks as src/fs/ext's plusDirectory hands them out, read with pread: its
 * inode (checked as decodeInode checks it: any warning it would give is FALLBACK), its runs
 * (depth-0 extents checked as leafRuns checks them, or direct block pointers), then the blocks
 * from logical block 0 on while they are contiguous and written. *blocks is malloc'd.
 */
static int dir_blocks(const double *cfg, const double *groups, size_t ngroups, FdPieces *f, uint8_t **blocks,
                      size_t *len, double *seed, int *indexed, int *why) {
  size_t bs = (size_t)cfg[CFG_BLOCK_SIZE];
  size_t isize = (size_t)cfg[CFG_INODE_SIZE];
  double ipg = cfg[CFG_INODES_PER_GROUP];
  double ino = cfg[CFG_DIR_INO];
  int flags_cfg = (int)cfg[CFG_FLAGS];
  if (ino < 1 || ino > cfg[CFG_INODES_COUNT] || ino != floor(ino)) return *why = WHY_DIR_INODE, 0;
  double n = ino - 1;
  double g = floor(n / ipg);
  if (g >= ngroups) return *why = WHY_DIR_INODE, 0;
  double at = groups[(size_t)g] + (n - g * ipg) * isize;
  double k = floor(at / f->psz);
  size_t plen;
  const uint8_t *p = fd_piece(f, (uint32_t)k, &plen);
  size_t off = (size_t)(at - k * f->psz);
  if (!p || off + isize > plen) return *why = WHY_READ, 0;
  uint8_t raw[1024];
  if (isize > sizeof raw) return *why = WHY_CONFIG, 0;
  memcpy(raw, p + off, isize);
  /* decodeInode's warnings and refusals */
  uint32_t extra;
  if (!inode_ok(cfg, (uint32_t)ino, raw, &extra, why)) return 0;
  uint32_t dseed = crc_u32(crc_u32((uint32_t)cfg[CFG_CSUM_SEED], (uint32_t)ino), le32(raw + 0x64));
  uint32_t size_hi = le32(raw + 0x6c);
  uint32_t flags = le32(raw + 0x20);
  if ((le16(raw) & 0xf000) != 0x4000 || (flags & (FL_INLINE_DATA | FL_ENCRYPT))) return *why = WHY_DIR_INODE, 0;
  double size = (double)le32(raw + 4) + (double)size_hi * 4294967296.0;
  double nblocks = ceil(size / bs);
  if (nblocks * bs > MAX_PLUS_DIRECTORY) return *why = WHY_DIR_INODE, 0;
  /* the runs, as (lblk, pblk, len) in logical order */
  double runs[12][3];
  size_t nruns = 0;
  double blocks_count = cfg[CFG_BLOCKS_COUNT], first_data = cfg[CFG_FIRST_DATA_BLOCK];
  const uint8_t *ib = raw + 0x28;
  if (flags & FL_EXTENTS) {
    uint32_t entries = le16(ib + 2), max = le16(ib + 4), depth = le16(ib + 6);
    /* extentHeader's checks; an index node (depth > 0) is the reader's to walk */
    if (le16(ib) != 0xf30a || entries > max || 12 + max * 12 > 60 || depth != 0) return *why = WHY_DIR_MAP, 0;
    double end = 0;
    for (uint32_t i = 0; i < entries; i++) {
      const uint8_t *e = ib + 12 + 12 * i;
      double lblk = le32(e);
      uint32_t l = le16(e + 4);
      int unwritten = l > 32768;
      if (unwritten) l -= 32768;
      double pblk = (double)le16(e + 6) * 4294967296.0 + le32(e + 8);
      if (l == 0) continue;
      /* leafRuns: in order, inside the file system */
      if (lblk + l > 4294967296.0 || lblk < end || pblk + l > blocks_count || pblk < first_data)
        return *why = WHY_DIR_MAP, 0;
      end = lblk + l;
      runs[nruns][0] = unwritten ? -1 : lblk; /* -1: not to be read */
      runs[nruns][1] = pblk;
      runs[nruns][2] = l;
      nruns++;
    }
  } else {
    /* indirectRuns for what fits the 12 direct pointers; more is the reader's to walk */
    if (nblocks > 12) return *why = WHY_DIR_MAP, 0;
    for (uint32_t i = 0; i < (uint32_t)nblocks; i++) {
      double pblk = le32(ib + 4 * i);
      if (pblk == 0) continue;
      if (pblk >= blocks_count) return *why = WHY_DIR_MAP, 0;
      runs[nruns][0] = i;
      runs[nruns][1] = pblk;
      runs[nruns][2] = 1;
      nruns++;
    }
  }
  /* plusDirectory: the runs from block 0 on while they follow each other, written */
  double next = 0;
  for (size_t i = 0; i < nruns && next < nblocks; i++) {
    if (runs[i][0] != next) return *why = WHY_DIR_MAP, 0;
    double cnt = runs[i][2] < nblocks - next ? runs[i][2] : nblocks - next;
    runs[i][2] = cnt;
    next += cnt;
  }
  size_t total = (size_t)next * bs;
  uint8_t *b = malloc(total ? total : 1);
  if (!b) return *why = WHY_MEMORY, 0;
  double done = 0;
  for (size_t i = 0; i < nruns && done < next; i++) {
    if (!vread(f, b + (size_t)done * bs, runs[i][1] * bs, (size_t)runs[i][2] * bs)) {
      free(b);
      return *why = WHY_READ, 0;
    }
    done += runs[i][2];
  }
  *blocks = b;
  *len = total;
  *seed = (flags_cfg & F_CSUM) ? dseed : 0;
  *indexed = (flags & FL_INDEX) != 0;
  return 1;
}

static napi_value ExtDirPlusFd(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  void *cfgp, *groups, *cache, *tags, *out, *res;
  size_t ncfg, ngroups, ncache, ntags, nout, nres;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 ||
      !strata_typed(env, argv[0], napi_float64_array, &cfgp, &ncfg) || ncfg < CFG_N ||
      !strata_typed(env, argv[1], napi_float64_array, &groups, &ngroups) ||
      !strata_typed(env, argv[2], napi_uint8_array, &cache, &ncache) ||
      !strata_typed(env, argv[3], napi_float64_array, &tags, &ntags) || !strata_typed(env, argv[4], napi_uint8_array, &out, &nout) ||
      !strata_typed(env, argv[5], napi_float64_array, &res, &nres)) {
    napi_throw_type_error(env, NULL,
                          "extDirPlusFd(cfg: Float64Array, groups: Float64Array, cache: Uint8Array, tags: Float64Array, "
                          "out: Uint8Array, res: Float64Array)");
    return NULL;
  }
  if (!crc_ready) crc_init();
  double *cfg = cfgp;
  int why = 0, r = FALLBACK;
  FdPieces f = {(int)cfg[CFG_FD], cfg[CFG_BASE], cfg[CFG_VOLUME_SIZE], cfg[CFG_PIECE_SIZE], cache, tags, 0};
  if (f.psz >= 1 && f.psz <= (1 << 24)) f.slots = ncache / (size_t)f.psz;
  if (f.slots == 0 || ntags < 2 * f.slots || cfg[CFG_BLOCK_SIZE] < 1024 || cfg[CFG_BLOCK_SIZE] > 65536 ||
      cfg[CFG_INODE_SIZE] < 128) {
    why = WHY_CONFIG;
  } else {
    uint8_t *blocks = NULL;
    size_t len = 0;
    int indexed = 0;
    if (dir_blocks(cfg, groups, ngroups, &f, &blocks, &len, &cfg[CFG_DIR_SEED], &indexed, &why)) {
      cfg[CFG_INDEXED] = indexed;
      r = build(cfg, groups, ngroups, blocks, len, fd_piece, &f, out, nout, res, nres, &why);
      /* a piece fd_piece could not read */
      if (r == MISSING) r = FALLBACK, why = WHY_READ;
      free(blocks);
    }
  }
  if (r == FALLBACK && nres > 0) ((double *)res)[0] = why;
  napi_value v;
  napi_create_int32(env, r, &v);
  return v;
}

void strata_register_dirplus(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "extDirPlus", NAPI_AUTO_LENGTH, ExtDirPlus, NULL, &fn);
  napi_set_named_property(env, exports, "extDirPlus", fn);
  napi_create_function(env, "extDirPlusFd", NAPI_AUTO_LENGTH, ExtDirPlusFd, NULL, &fn);
  napi_set_named_property(env, exports, "extDirPlusFd", fn);
}
