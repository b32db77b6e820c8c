/*
 * lseek(2) for Node, which has no binding for it: SEEK_DATA and SEEK_HOLE let a reader
 * see a sparse file's holes (raw images, qcow2 data files, vmdk flat extents) without
 * reading them. One synchronous call per request: the syscall answers from the file
 * system's extent tree in microseconds, less than a hop to the thread pool.
 *
 * seek(fd, offset, whence) returns the new offset, or -errno (ENXIO: no data/hole at or
 * after offset; EINVAL: whence unsupported by this file system).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <unistd.h>

void strata_register_copy(napi_env env, napi_value exports);    /* copy.c */
void strata_register_extract(napi_env env, napi_value exports); /* extract.c */
void strata_register_inflate(napi_env env, napi_value exports); /* inflate.c */
void strata_register_dirplus(napi_env env, napi_value exports); /* dirplus.c */
void strata_register_heap(napi_env env, napi_value exports);    /* heap.c */
void strata_register_fuseread(napi_env env, napi_value exports); /* fuseread.c */
#ifdef STRATA_ZSTD
void strata_register_zstd(napi_env env, napi_value exports); /* zstd.c (when zstd-napi's zstd sources are there) */
#endif

static napi_value Seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd = -1, whence = 0;
  int64_t off = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &off) != napi_ok ||
      napi_get_value_int32(env, argv[2], &whence) != napi_ok) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence): three integers");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)off, whence);
  napi_value out;
  napi_create_int64(env, r < 0 ? -(int64_t)errno : (int64_t)r, &out);
  return out;
}

static napi_value Constant(napi_env env, int v) {
  napi_value out;
  napi_create_int32(env, v, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "seek", NAPI_AUTO_LENGTH, Seek, NULL, &fn);
  napi_set_named_property(env, exports, "seek", fn);
#ifdef SEEK_DATA
  napi_set_named_property(env, exports, "SEEK_DATA", Constant(env, SEEK_DATA));
  napi_set_named_property(env, exports, "SEEK_HOLE", Constant(env, SEEK_HOLE));
#endif
  napi_set_named_property(env, exports, "ENXIO", Constant(env, ENXIO));
  strata_register_copy(env, exports);
  strata_register_extract(env, exports);
  strata_register_inflate(env, exports);
  strata_register_dirplus(env, exports);
  strata_register_heap(env, exports);
  strata_register_fuseread(env, exports);
#ifdef STRATA_ZSTD
  strata_register_zstd(env, exports);
#endif
  return exports;
}
