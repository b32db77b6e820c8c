/* Helpers shared by the addon's files: a promise settled by napi async work, and an export. */
#ifndef STRATA_NAPI_JOB_H
#define STRATA_NAPI_JOB_H
#include <node_api.h>

/* Queue `exec` on libuv's pool and `done` back on the main thread; returns the promise of *deferred. */
static inline napi_value strata_queue(napi_env env, const char *label, napi_async_execute_callback exec,
                                      napi_async_complete_callback done, void *data, napi_async_work *work,
                                      napi_deferred *deferred) {
  napi_value promise, name;
  napi_create_promise(env, deferred, &promise);
  napi_create_string_utf8(env, label, NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, exec, done, data, work);
  napi_queue_async_work(env, *work);
  return promise;
}

static inline void strata_export(napi_env env, napi_value exports, const char *name, napi_callback fn) {
  napi_value f;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f);
  napi_set_named_property(env, exports, name, f);
}
#endif
