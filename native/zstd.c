/*
 * zstdCompress: the store's frames compressed on a thread of libuv's pool (napi async work),
 * for a check-in, in place of src/store/zstd-worker.ts's worker isolate: no second V8 heap,
 * no message per frame, nothing shared but the caller's buffer (issue 22: the worker was
 * ~30 MiB of a 1,000,000-file check-in's resident memory at the CLI's default budget).
 * zstd is the copy zstd-napi ships (node_modules/zstd-napi/deps/zstd, built here as the
 * static library of binding.gyp's strata_zstd target, its symbols hidden), so a frame is
 * byte for byte what zstd-napi's CCtx makes of the same input: ZSTD_compressCCtx at `level`,
 * or with a window (`windowLog` > 0) ZSTD_compress2 with the level and the window set, as
 * src/store/zstd-into.ts's compressInto does.
 *
 * zstdCompress(src: Uint8Array, level, windowLog) -> Promise<ArrayBuffer | null>
 *   the frame in a fresh ArrayBuffer of its length, or null when it is not smaller than
 *   `src` (the store keeps such a blob plain). `src` (any ArrayBuffer or SharedArrayBuffer
 *   view) must stay untouched until the promise settles; it is kept alive until then.
 *   A zstd error rejects with an Error naming it.
 * zstdRelease() frees the contexts and scratch kept for reuse (those of jobs running are
 *   freed when they finish): after a burst of writing, as the worker was stopped.
 * zstdVersion: the zstd version number built in (10507 for 1.5.7).
 *
 * Contexts (each with a scratch of compressBound of the largest input seen) are kept for
 * reuse, at most KEEP of them, under a mutex: addon instances of several threads share them.
 */
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "napi-job.h"

#define KEEP 2

typedef struct Ctx {
  ZSTD_CCtx *cctx;
  unsigned char *scratch;
  size_t cap;
} Ctx;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Ctx *kept[KEEP];
static int nkept;
/* Bumped by zstdRelease: a context of a job that started before it is freed, not kept. */
static unsigned generation;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref src_ref;
  const unsigned char *src;
  size_t len;
  int level, window_log;
  unsigned gen;
  Ctx *ctx;
  size_t n;
  const char *error; /* static text (ZSTD_getErrorName, or ours) */
} Job;

static void ctx_free(Ctx *c) {
  if (!c) return;
  ZSTD_freeCCtx(c->cctx);
  free(c->scratch);
  free(c);
}

static Ctx *ctx_take(void) {
  Ctx *c = NULL;
  pthread_mutex_lock(&lock);
  if (nkept > 0) c = kept[--nkept];
  pthread_mutex_unlock(&lock);
  if (c) return c;
  c = calloc(1, sizeof(Ctx));
  if (!c) return NULL;
  c->cctx = ZSTD_createCCtx();
  if (!c->cctx) {
    free(c);
    return NULL;
  }
  return c;
}

static void ctx_give(Ctx *c, unsigned gen) {
  pthread_mutex_lock(&lock);
  if (gen == generation && nkept < KEEP) {
    kept[nkept++] = c;
    c = NULL;
  }
  pthread_mutex_unlock(&lock);
  ctx_free(c);
}

static void Execute(napi_env env, void *data) {
  (void)env;
  Job *j = (Job *)data;
  Ctx *c = j->ctx = ctx_take();
  if (!c) {
    j->error = "out of memory (context)";
    return;
  }
  size_t bound = ZSTD_compressBound(j->len);
  if (c->cap < bound) {
    free(c->scratch);
    c->scratch = malloc(bound);
    c->cap = c->scratch ? bound : 0;
    if (!c->scratch) {
      j->error = "out of memory (scratch)";
      return;
    }
  }
  size_t r;
  if (j->window_log > 0) {
    r = ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_and_parameters);
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, j->level);
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_windowLog, j->window_log);
    if (!ZSTD_isError(r)) r = ZSTD_compress2(c->cctx, c->scratch, c->cap, j->src, j->len);
  } else {
    r = ZSTD_compressCCtx(c->cctx, c->scratch, c->cap, j->src, j->len, j->level);
  }
  if (ZSTD_isError(r)) j->error = ZSTD_getErrorName(r);
  else j->n = r;
}

static void Complete(napi_env env, napi_status status, void *data) {
  Job *j = (Job *)data;
  if (status != napi_ok && !j->error) j->error = "cancelled";
  if (j->error) {
    napi_value msg, err;
    napi_create_string_utf8(env, j->error, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, j->deferred, err);
  } else if (j->n >= j->len) {
    napi_value nul;
    napi_get_null(env, &nul);
    napi_resolve_deferred(env, j->deferred, nul);
  } else {
    napi_value ab;
    void *p = NULL;
    if (napi_create_arraybuffer(env, j->n, &p, &ab) != napi_ok) {
      napi_value msg, err;
      napi_create_string_utf8(env, "out of memory (frame)", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &err);
      napi_reject_deferred(env, j->deferred, err);
    } else {
      memcpy(p, j->ctx->scratch, j->n);
      napi_resolve_deferred(env, j->deferred, ab);
    }
  }
  if (j->ctx) ctx_give(j->ctx, j->gen);
  napi_delete_reference(env, j->src_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value Compress(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_typedarray_type type;
  size_t len, off;
  void *src;
  napi_value ab;
  int32_t level, wlog;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_typedarray_info(env, argv[0], &type, &len, &src, &ab, &off) != napi_ok || type != napi_uint8_array ||
      napi_get_value_int32(env, argv[1], &level) != napi_ok || napi_get_value_int32(env, argv[2], &wlog) != napi_ok ||
      level < ZSTD_minCLevel() || level > ZSTD_maxCLevel() || wlog < 0 || (wlog > 0 && wlog < 10) ||
      wlog > 27) {
    napi_throw_type_error(env, NULL, "zstdCompress(src: Uint8Array, level, windowLog: 0 or 10-27)");
    return NULL;
  }
  Job *j = calloc(1, sizeof(Job));
  if (!j) {
    napi_throw_error(env, "ENOMEM", "strata native zstd: out of memory");
    return NULL;
  }
  j->src = (const unsigned char *)src;
  j->len = len;
  j->level = level;
  j->window_log = wlog;
  pthread_mutex_lock(&lock);
  j->gen = generation;
  pthread_mutex_unlock(&lock);
  napi_create_reference(env, argv[0], 1, &j->src_ref); /* `src` stays alive until Complete */
  return strata_queue(env, "strata.zstdCompress", Execute, Complete, j, &j->work, &j->deferred);
}

static napi_value Release(napi_env env, napi_callback_info info) {
  (void)info;
  Ctx *drop[KEEP];
  int n;
  pthread_mutex_lock(&lock);
  generation++;
  n = nkept;
  memcpy(drop, kept, sizeof(Ctx *) * (size_t)n);
  nkept = 0;
  pthread_mutex_unlock(&lock);
  for (int i = 0; i < n; i++) ctx_free(drop[i]);
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

void strata_register_zstd(napi_env env, napi_value exports) {
  strata_export(env, exports, "zstdCompress", Compress);
  strata_export(env, exports, "zstdRelease", Release);
  napi_value v;
  napi_create_int32(env, (int32_t)ZSTD_versionNumber(), &v);
  napi_set_named_property(env, exports, "zstdVersion", v);
}
