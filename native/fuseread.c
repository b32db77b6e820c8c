/*
 * fuseRead: the blocking read of /dev/fuse for a read-only mount's serving loop, answering on
 * its own the READDIR or READDIRPLUS past the end of a listing already handed out whole (the
 * kernel learns a listing's end only from an empty reply, so every directory walked costs
 * this second request): it never reaches JavaScript. src/serve/fuse/listing-ends.ts describes
 * the shared table (ListingEndsView) and does the same in TypeScript without the addon.
 *
 * fuseRead(fd, buf: Uint8Array, ends: BigInt64Array, stats: Int32Array) -> number
 *   ends: 2 slots per directory (node id, listing length), a power of two of them; stats[0]
 *   counts the requests answered here. Returns the length of the next request for the caller
 *   (> 0), 0 at end of file, or -errno of a failed read (EINTR, EAGAIN and ENOENT: an
 *   interrupted request, read again here).
 */
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define IN_HEADER 40
#define OUT_HEADER 16
#define OP_READDIR 28
#define OP_READDIRPLUS 44

static inline uint32_t le32(const uint8_t *p) {
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* ListingEndsView.get: the id is read before and after the length (the writer brackets with id 0) */
static int listing_end(int64_t *a, size_t slots, uint64_t id, int64_t *count) {
  size_t s = 2 * (size_t)(id & (slots - 1));
  if (id == 0 || (uint64_t)__atomic_load_n(&a[s], __ATOMIC_SEQ_CST) != id) return 0;
  *count = __atomic_load_n(&a[s + 1], __ATOMIC_SEQ_CST);
  return (uint64_t)__atomic_load_n(&a[s], __ATOMIC_SEQ_CST) == id;
}

int strata_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len); /* dirplus.c */

static napi_value FuseRead(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t fd = -1;
  void *buf, *ends, *stats;
  size_t nbuf, nends, nstats;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || !strata_typed(env, argv[1], napi_uint8_array, &buf, &nbuf) ||
      !strata_typed(env, argv[2], napi_bigint64_array, &ends, &nends) ||
      !strata_typed(env, argv[3], napi_int32_array, &stats, &nstats) || nstats < 1 || nends < 2 ||
      ((nends / 2) & (nends / 2 - 1)) != 0) {
    napi_throw_type_error(env, NULL, "fuseRead(fd, buf: Uint8Array, ends: BigInt64Array, stats: Int32Array)");
    return NULL;
  }
  uint8_t *b = buf;
  size_t slots = nends / 2;
  int64_t r;
  for (;;) {
    ssize_t n = read(fd, b, nbuf);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      r = -(int64_t)errno;
      break;
    }
    r = n;
    if (n < IN_HEADER + 24) break;
    uint32_t op = le32(b + 4);
    int64_t count;
    if ((op != OP_READDIR && op != OP_READDIRPLUS) || le32(b) > (size_t)n ||
        !listing_end(ends, slots, le64(b + 16), &count) || le64(b + IN_HEADER + 8) < (uint64_t)count)
      break;
    uint8_t empty[OUT_HEADER] = {OUT_HEADER};
    memcpy(empty + 8, b + 8, 8); /* the request's unique */
    if (write(fd, empty, OUT_HEADER) != OUT_HEADER) break; /* the caller meets the error again */
    __atomic_add_fetch((int32_t *)stats, 1, __ATOMIC_SEQ_CST);
  }
  napi_value v;
  napi_create_int64(env, r, &v);
  return v;
}

void strata_register_fuseread(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "fuseRead", NAPI_AUTO_LENGTH, FuseRead, NULL, &fn);
  napi_set_named_property(env, exports, "fuseRead", fn);
}
