/*
 * trimHeap(): hand the C heap's free pages back to the system (glibc's malloc_trim(0)), for
 * long runs whose buffers come and go (a check-in). Node's large ArrayBuffers come from
 * malloc, and glibc's mmap threshold rises to the largest buffer freed (up to 32 MiB), so
 * past the first few megabyte-sized buffers they are carved from the main heap, where a
 * free hole below a live block is never returned: measured at the end of a 200,000-file
 * check-in, ~100 MiB of the main heap resident with ~25 MiB of buffers alive (issue 22).
 * malloc_trim releases the free pages anywhere in the heap (madvise), not only at its top.
 * Returns 1 when memory was released, 0 when none, -1 where the C library has no such call.
 */
#define _GNU_SOURCE
#include <node_api.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value TrimHeap(napi_env env, napi_callback_info info) {
  (void)info;
#ifdef __GLIBC__
  int r = malloc_trim(0);
#else
  int r = -1;
#endif
  napi_value out;
  napi_create_int32(env, r, &out);
  return out;
}

void strata_register_heap(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "trimHeap", NAPI_AUTO_LENGTH, TrimHeap, NULL, &fn);
  napi_set_named_property(env, exports, "trimHeap", fn);
}
