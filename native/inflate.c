/*
 * inflateGrains: the deflated grains of one read of a stream-optimized VMDK, inflated on a
 * thread of libuv's pool (napi async work) straight into the caller's buffer, for bulk reads
 * (convert). It replaces the worker isolates of src/formats/vmdk/inflate-pool.ts where the
 * addon is built: no isolate to start (~25 ms of a core each), no message per read, and no
 * fresh 64 KiB buffer plus a copy per grain (inflateSync): zlib writes into `out` itself.
 * zlib is Node's own (the binary exports it; the headers come with Node's).
 *
 * inflateGrains(fd, lo, hi, spec, out, grainBytes, maxCompressed) -> Promise<Float64Array(4)>
 *   reads [lo, hi) of file `fd` (the grains' markers and payloads), then for each grain k
 *   of `spec` (5 numbers: the marker's file offset, the grain's expected lba in sectors,
 *   where its bytes go in `out`, the offset inside the grain and the byte count) checks
 *   the marker (12 bytes: lba u64, size u32) and inflates the payload; bytes of a short
 *   grain past its end are zeros.
 *   Resolves with [failedJob, reason, mismatchJob, mismatchLba]: failedJob -1 when all
 *   inflated; reason 1: the marker's size is 0 or above maxCompressed, 2: the payload runs
 *   past `hi`, 3: zlib refused it (or it inflates to more than a grain); mismatchJob is the
 *   first grain whose marker names another lba (-1: none), mismatchLba what it names.
 *   A read failure rejects with an Error carrying code, side 'read' and offset.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "napi-job.h"

#define SPEC 5

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref out_ref, spec_ref;
  int fd;
  int64_t lo, hi, grain_bytes, max_compressed;
  const double *spec;
  size_t jobs;
  unsigned char *out;
  size_t out_len;
  /* results */
  double failed, reason, mismatch, mismatch_lba;
  int err;
  int64_t err_off;
  int short_read;
} Job;

static __thread unsigned char *span;
static __thread size_t span_cap;
static __thread unsigned char *grain;
static __thread size_t grain_cap;
static __thread z_stream zs;
static __thread int zs_ready;

static uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Inflate `in` into dst (cap bytes); returns the byte count, or -1 when zlib refuses or the output would not fit. */
static int64_t inflate_into(const unsigned char *in, size_t n, unsigned char *dst, size_t cap) {
  if (!zs_ready) {
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) return -1;
    zs_ready = 1;
  } else if (inflateReset(&zs) != Z_OK) {
    return -1;
  }
  zs.next_in = (unsigned char *)in;
  zs.avail_in = (uInt)n;
  zs.next_out = dst;
  zs.avail_out = (uInt)cap;
  int r = inflate(&zs, Z_FINISH);
  if (r != Z_STREAM_END) return -1; /* corrupt, cut short, or larger than a grain */
  return (int64_t)(cap - zs.avail_out);
}

static void run_grains(Job *j, size_t len);

/* A per-thread buffer of at least n bytes (its old contents are not kept). */
static int grow(unsigned char **buf, size_t *cap, size_t n) {
  if (n <= *cap) return 0;
  free(*buf);
  *buf = malloc(n);
  *cap = *buf ? n : 0;
  return *buf ? 0 : -1;
}

static void Execute(napi_env env, void *data) {
  (void)env;
  Job *j = (Job *)data;
  j->failed = -1;
  j->mismatch = -1;
  size_t len = (size_t)(j->hi - j->lo);
  if (grow(&span, &span_cap, len) != 0 || grow(&grain, &grain_cap, (size_t)j->grain_bytes) != 0) {
    j->err = ENOMEM;
    j->err_off = j->lo;
    return;
  }
  for (size_t got = 0; got < len;) {
    ssize_t n = pread(j->fd, span + got, len - got, j->lo + (int64_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      j->err = n < 0 ? errno : EIO;
      j->short_read = n == 0;
      j->err_off = j->lo + (int64_t)got;
      return;
    }
    got += (size_t)n;
  }
  run_grains(j, len);
  /* A large span (a dense read of many grains) is not kept for the thread's next job. */
  if (span_cap > (16u << 20)) {
    free(span);
    span = NULL;
    span_cap = 0;
  }
}

static void run_grains(Job *j, size_t len) {
  size_t gb = (size_t)j->grain_bytes;
  for (size_t k = 0; k < j->jobs; k++) {
    const double *s = j->spec + k * SPEC;
    int64_t o = (int64_t)s[0] - j->lo;
    size_t at = (size_t)s[2], in_grain = (size_t)s[3], n = (size_t)s[4];
    if (o < 0 || o + 12 > (int64_t)len) {
      j->failed = (double)k;
      j->reason = 2;
      return;
    }
    const unsigned char *m = span + o;
    uint32_t size = le32(m + 8);
    if (size == 0 || size > (uint64_t)j->max_compressed) {
      j->failed = (double)k;
      j->reason = 1;
      return;
    }
    if (o + 12 + (int64_t)size > (int64_t)len) {
      j->failed = (double)k;
      j->reason = 2;
      return;
    }
    double lba = (double)le32(m) + (double)le32(m + 4) * 4294967296.0;
    if (lba != s[1] && j->mismatch < 0) {
      j->mismatch = (double)k;
      j->mismatch_lba = lba;
    }
    /* A whole grain goes straight into `out`; part of one through the grain buffer. */
    int whole = in_grain == 0 && n == gb;
    int64_t got = inflate_into(m + 12, size, whole ? j->out + at : grain, gb);
    if (got < 0) {
      j->failed = (double)k;
      j->reason = 3;
      return;
    }
    if (whole) {
      if ((size_t)got < n) memset(j->out + at + got, 0, n - (size_t)got);
    } else {
      size_t avail = (size_t)got > in_grain ? (size_t)got - in_grain : 0;
      if (avail > n) avail = n;
      memcpy(j->out + at, grain + in_grain, avail);
      if (avail < n) memset(j->out + at + avail, 0, n - avail);
    }
  }
}

static void Complete(napi_env env, napi_status status, void *data) {
  Job *j = (Job *)data;
  if (status != napi_ok || j->err) {
    napi_value msg, code, err, side, off;
    const char *text = j->short_read ? "short read: the file ends here" : strerror(j->err ? j->err : EIO);
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, j->err == ENOMEM ? "ENOMEM" : "EIO", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &err);
    napi_create_string_utf8(env, "read", NAPI_AUTO_LENGTH, &side);
    napi_set_named_property(env, err, "side", side);
    napi_create_int64(env, j->err_off, &off);
    napi_set_named_property(env, err, "offset", off);
    napi_reject_deferred(env, j->deferred, err);
  } else {
    napi_value ab, arr;
    void *p;
    napi_create_arraybuffer(env, 4 * sizeof(double), &p, &ab);
    double *r = (double *)p;
    r[0] = j->failed;
    r[1] = j->reason;
    r[2] = j->mismatch;
    r[3] = j->mismatch_lba;
    napi_create_typedarray(env, napi_float64_array, 4, ab, 0, &arr);
    napi_resolve_deferred(env, j->deferred, arr);
  }
  napi_delete_reference(env, j->out_ref);
  napi_delete_reference(env, j->spec_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

/* A typed array's bytes (any element type). */
static int bytes_of(napi_env env, napi_value v, void **data, size_t *len) {
  napi_typedarray_type type;
  size_t n, off;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &n, data, &ab, &off) != napi_ok) return -1;
  size_t el = type == napi_float64_array ? 8 : type == napi_uint8_array || type == napi_int8_array ? 1 : 0;
  if (!el) return -1;
  *len = n * el;
  return 0;
}

static napi_value InflateGrains(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  int32_t fd;
  int64_t lo, hi, gb, maxc;
  void *spec, *out;
  size_t spec_len, out_len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 7 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &lo) != napi_ok ||
      napi_get_value_int64(env, argv[2], &hi) != napi_ok || bytes_of(env, argv[3], &spec, &spec_len) != 0 ||
      bytes_of(env, argv[4], &out, &out_len) != 0 || napi_get_value_int64(env, argv[5], &gb) != napi_ok ||
      napi_get_value_int64(env, argv[6], &maxc) != napi_ok || lo < 0 || hi < lo || hi - lo > (256 << 20) || gb <= 0 ||
      gb > (32 << 20) || maxc <= 0 || spec_len % (SPEC * sizeof(double)) != 0) {
    napi_throw_type_error(env, NULL,
                          "inflateGrains(fd, lo, hi, spec: Float64Array, out: Uint8Array, grainBytes, maxCompressed)");
    return NULL;
  }
  const double *s = (const double *)spec;
  size_t jobs = spec_len / (SPEC * sizeof(double));
  for (size_t k = 0; k < jobs; k++) {
    const double *e = s + k * SPEC;
    /* every grain's bytes inside `out`, every part inside a grain */
    if (!(e[2] >= 0 && e[3] >= 0 && e[4] >= 0 && e[2] + e[4] <= (double)out_len && e[3] + e[4] <= (double)gb)) {
      napi_throw_range_error(env, NULL, "inflateGrains: a grain lies outside the output buffer");
      return NULL;
    }
  }
  Job *j = calloc(1, sizeof(Job));
  if (!j) {
    napi_throw_error(env, "ENOMEM", "strata native inflate: out of memory");
    return NULL;
  }
  *j = (Job){.fd = fd, .lo = lo, .hi = hi, .grain_bytes = gb, .max_compressed = maxc,
             .spec = s, .jobs = jobs, .out = (unsigned char *)out, .out_len = out_len};
  /* Both buffers stay alive (referenced) until Complete. */
  napi_create_reference(env, argv[4], 1, &j->out_ref);
  napi_create_reference(env, argv[3], 1, &j->spec_ref);
  return strata_queue(env, "strata.inflateGrains", Execute, Complete, j, &j->work, &j->deferred);
}

void strata_register_inflate(napi_env env, napi_value exports) {
  strata_export(env, exports, "inflateGrains", InflateGrains);
}
