/*
 * trimHeap(): hand the C heap's free pages back to the system (glibc's malloc_trim(0)), for
 * long runs whose buffers come and go (a check-in). Node's large ArrayBuffers come from
 * malloc, and glibc's mmap threshold rises to the largest buffer freed (up to 32 MiB), so
 * past the first few megabyte-sized buffers they are carved from the main heap, where a
 * free hole below a live block is never returned: measured at the end of a 200,000-file
 * check-in, ~100 MiB of the main heap resident with ~25 MiB of buffers alive (issue 22).
 * malloc_trim releases the free pages anywhere in the heap (madvise), not only at its top.
 * Returns 1 when memory was released, 0 when none, -1 where the C library has no such call.
 *
 * mmapFrom(bytes): allocations of at least `bytes` get their own mapping (glibc's
 * mallopt(M_MMAP_THRESHOLD), which also stops the threshold's rise), so a freed large buffer
 * goes back to the system at once instead of leaving a hole in the main heap until the next
 * trim: a 200,000-file check-in peaked 16 MiB lower with 1 MiB (issue 22). Returns 1 when
 * set, 0 when refused, -1 where the C library has no such call.
 *
 * release(arrayBuffer): detach it (napi_detach_arraybuffer), which drops V8's hold on its
 * memory at once: freed now (a mapping of its own goes back to the system) instead of at a
 * collection. For a pool's buffer nobody holds any more (a view left on it reads as empty).
 * Returns 1 when detached, 0 when it cannot be (not detachable, e.g. a WebAssembly memory's).
 */
#define _GNU_SOURCE
#include <node_api.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value Int(napi_env env, int r) {
  napi_value out;
  napi_create_int32(env, r, &out);
  return out;
}

static napi_value TrimHeap(napi_env env, napi_callback_info info) {
  (void)info;
#ifdef __GLIBC__
  return Int(env, malloc_trim(0));
#else
  return Int(env, -1);
#endif
}

static napi_value MmapFrom(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t bytes = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &bytes) != napi_ok || bytes < 4096 || bytes > (32 << 20)) {
    napi_throw_type_error(env, NULL, "mmapFrom(bytes): 4096 to 32 MiB");
    return NULL;
  }
#ifdef __GLIBC__
  return Int(env, mallopt(M_MMAP_THRESHOLD, (int)bytes) == 1 ? 1 : 0);
#else
  return Int(env, -1);
#endif
}

static napi_value Release(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_is_arraybuffer(env, argv[0], &is) != napi_ok || !is) {
    napi_throw_type_error(env, NULL, "release(arrayBuffer)");
    return NULL;
  }
  return Int(env, napi_detach_arraybuffer(env, argv[0]) == napi_ok ? 1 : 0);
}

void strata_register_heap(napi_env env, napi_value exports) {
  napi_value fn0, fn, fn2;
  napi_create_function(env, "release", NAPI_AUTO_LENGTH, Release, NULL, &fn2);
  napi_set_named_property(env, exports, "release", fn2);
  napi_create_function(env, "mmapFrom", NAPI_AUTO_LENGTH, MmapFrom, NULL, &fn0);
  napi_set_named_property(env, exports, "mmapFrom", fn0);
  napi_create_function(env, "trimHeap", NAPI_AUTO_LENGTH, TrimHeap, NULL, &fn);
  napi_set_named_property(env, exports, "trimHeap", fn);
}
