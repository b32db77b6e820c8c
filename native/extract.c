/*
 * writeFiles: a batch of an extraction's regular files created, filled and given their
 * attributes on a thread of libuv's pool (napi async work), for `extract`
 * (src/library/extract/native-writer.ts). Per file the main thread would spend an open,
 * reads, writes, fchmod/fchown, futimens and a close, each a Node binding call with its
 * argument checks and objects; here the whole batch is one call, and its system calls run
 * beside the walk, which goes on parsing directories and inodes on the main thread.
 *
 * writeFiles(imgFd, meta, extents, paths) -> Promise<Int32Array>
 *   meta: Float64Array, META_FIELDS numbers per file (see enum below);
 *   extents: Float64Array, 3 numbers per extent: offset in imgFd, length, offset in the file;
 *   paths: Uint8Array of NUL-terminated paths (meta's pathOff indexes it).
 *   Result: 2 int32 per file: errno (0 when the file was written) and the step that failed.
 * Each file is opened O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC (the caller checked the
 * path's names: this never follows a link or overwrites anything), its extents copied
 * (small ones through a cached 1 MiB block of the image, so neighbours cost one pread),
 * truncated to its size when the data ends short of it, then fchown, fchmod and futimens
 * as flagged, in that order (the order of destination.ts), then closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XBLK (1024 * 1024)
#define SMALL_EXTENT (256 * 1024)

enum { M_PATH, M_EXT_START, M_EXT_COUNT, M_SIZE, M_OPEN_MODE, M_FLAGS, M_MODE, M_UID, M_GID, M_ASEC, M_ANSEC, M_MSEC, M_MNSEC, META_FIELDS };
enum { F_CHMOD = 1, F_CHOWN = 2, F_TIMES = 4 };
enum { S_OK, S_OPEN, S_READ, S_WRITE, S_TRUNCATE, S_CHOWN, S_CHMOD, S_TIMES, S_CLOSE, S_SHORT_READ };

/* Per pool thread: the cached block of the image and a buffer for larger extents. */
static __thread unsigned char *xblk, *xbuf;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int img_fd;
  size_t n, next, plen;
  double *meta, *ext;
  char *paths;
  int32_t *res;
  int64_t blk_off, blk_len;
  int setup_err;
} XJob;

static int pread_full(int fd, unsigned char *b, size_t len, int64_t off, size_t *got) {
  size_t g = 0;
  while (g < len) {
    ssize_t r = pread(fd, b + g, len - g, (off_t)(off + (int64_t)g));
    if (r < 0) {
      if (errno == EINTR) continue;
      *got = g;
      return errno;
    }
    if (r == 0) break;
    g += (size_t)r;
  }
  *got = g;
  return 0;
}

static int pwrite_full(int fd, const unsigned char *b, size_t len, int64_t off) {
  size_t d = 0;
  while (d < len) {
    ssize_t r = pwrite(fd, b + d, len - d, (off_t)(off + (int64_t)d));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? errno : EIO;
    d += (size_t)r;
  }
  return 0;
}

/* One extent of the image into the file; 0, or an errno with *step set. */
static int copy_extent(XJob *j, int out, int64_t vol, int64_t len, int64_t fo, int *step) {
  if (len <= SMALL_EXTENT && vol / XBLK == (vol + len - 1) / XBLK) {
    int64_t b = vol - vol % XBLK;
    if (j->blk_off != b) {
      size_t got;
      j->blk_off = -1;
      int e = pread_full(j->img_fd, xblk, XBLK, b, &got);
      if (e) {
        *step = S_READ;
        return e;
      }
      j->blk_off = b;
      j->blk_len = (int64_t)got;
    }
    if (vol + len > j->blk_off + j->blk_len) {
      *step = S_SHORT_READ;
      return EIO;
    }
    int e = pwrite_full(out, xblk + (vol - b), (size_t)len, fo);
    if (e) *step = S_WRITE;
    return e;
  }
  while (len > 0) {
    size_t want = (size_t)(len < XBLK ? len : XBLK), got;
    int e = pread_full(j->img_fd, xbuf, want, vol, &got);
    if (e) {
      *step = S_READ;
      return e;
    }
    if (got < want) {
      *step = S_SHORT_READ;
      return EIO;
    }
    e = pwrite_full(out, xbuf, want, fo);
    if (e) {
      *step = S_WRITE;
      return e;
    }
    vol += (int64_t)want;
    fo += (int64_t)want;
    len -= (int64_t)want;
  }
  return 0;
}

static void Execute(napi_env env, void *data) {
  (void)env;
  XJob *j = (XJob *)data;
  if ((!xblk && posix_memalign((void **)&xblk, 4096, XBLK) != 0) ||
      (!xbuf && posix_memalign((void **)&xbuf, 4096, XBLK) != 0)) {
    j->setup_err = ENOMEM;
    return;
  }
  j->blk_off = -1; /* another job (another image) may have filled this thread's block */
  for (size_t i = 0; i < j->n; i++) {
    const double *m = j->meta + i * META_FIELDS;
    int32_t *r = j->res + 2 * i;
    int fd = open(j->paths + (size_t)m[M_PATH], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  (mode_t)m[M_OPEN_MODE]);
    if (fd < 0) {
      r[0] = errno;
      r[1] = S_OPEN;
      continue;
    }
    int err = 0, step = S_OK;
    int64_t size = (int64_t)m[M_SIZE], end = 0;
    size_t e0 = (size_t)m[M_EXT_START], ne = (size_t)m[M_EXT_COUNT];
    for (size_t k = 0; k < ne && !err; k++) {
      const double *x = j->ext + 3 * (e0 + k);
      int64_t len = (int64_t)x[1], fo = (int64_t)x[2];
      err = copy_extent(j, fd, (int64_t)x[0], len, fo, &step);
      if (!err && fo + len > end) end = fo + len;
    }
    int flags = (int)m[M_FLAGS];
    if (!err && end != size && ftruncate(fd, (off_t)size) != 0) {
      err = errno;
      step = S_TRUNCATE;
    }
    if (!err && (flags & F_CHOWN) && fchown(fd, (uid_t)m[M_UID], (gid_t)m[M_GID]) != 0) {
      err = errno;
      step = S_CHOWN;
    }
    if (!err && (flags & F_CHMOD) && fchmod(fd, (mode_t)m[M_MODE]) != 0) {
      err = errno;
      step = S_CHMOD;
    }
    if (!err && (flags & F_TIMES)) {
      struct timespec ts[2];
      ts[0].tv_sec = (time_t)m[M_ASEC];
      ts[0].tv_nsec = (long)m[M_ANSEC];
      ts[1].tv_sec = (time_t)m[M_MSEC];
      ts[1].tv_nsec = (long)m[M_MNSEC];
      if (futimens(fd, ts) != 0) {
        err = errno;
        step = S_TIMES;
      }
    }
    if (close(fd) != 0 && !err) {
      err = errno;
      step = S_CLOSE;
    }
    r[0] = err;
    r[1] = step;
  }
}

static void FreeJob(XJob *j) {
  free(j->meta);
  free(j->ext);
  free(j->paths);
  free(j->res);
  free(j);
}

static void Complete(napi_env env, napi_status status, void *data) {
  XJob *j = (XJob *)data;
  if (status != napi_ok || j->setup_err) {
    napi_value msg, code, err;
    napi_create_string_utf8(env, status != napi_ok ? "writeFiles: the work was cancelled" : strerror(j->setup_err),
                            NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, status != napi_ok ? "ECANCELED" : "ENOMEM", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &err);
    napi_reject_deferred(env, j->deferred, err);
  } else {
    napi_value ab, arr;
    void *p;
    size_t bytes = j->n * 2 * sizeof(int32_t);
    napi_create_arraybuffer(env, bytes, &p, &ab);
    if (bytes) memcpy(p, j->res, bytes);
    napi_create_typedarray(env, napi_int32_array, j->n * 2, ab, 0, &arr);
    napi_resolve_deferred(env, j->deferred, arr);
  }
  napi_delete_async_work(env, j->work);
  FreeJob(j);
}

/* A copy of a typed array's bytes (the caller's arrays may be reused while the work runs). */
static int copy_array(napi_env env, napi_value v, void **out, size_t *bytes) {
  napi_typedarray_type type;
  size_t length, offset;
  void *data;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &offset) != napi_ok) return -1;
  size_t elem = type == napi_float64_array ? 8 : type == napi_uint8_array ? 1 : 0;
  if (!elem) return -1;
  *bytes = length * elem;
  *out = malloc(*bytes ? *bytes : 1);
  if (!*out) return -1;
  if (*bytes) memcpy(*out, data, *bytes);
  return 0;
}

static napi_value WriteFiles(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t img_fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_int32(env, argv[0], &img_fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "writeFiles(imgFd, meta, extents, paths)");
    return NULL;
  }
  XJob *j = calloc(1, sizeof(XJob));
  size_t mb = 0, eb = 0;
  if (!j || copy_array(env, argv[1], (void **)&j->meta, &mb) != 0 ||
      copy_array(env, argv[2], (void **)&j->ext, &eb) != 0 ||
      copy_array(env, argv[3], (void **)&j->paths, &j->plen) != 0) {
    if (j) FreeJob(j);
    napi_throw_type_error(env, NULL, "writeFiles: meta and extents are Float64Arrays, paths a Uint8Array");
    return NULL;
  }
  j->img_fd = img_fd;
  j->n = mb / (sizeof(double) * META_FIELDS);
  size_t nx = eb / (3 * sizeof(double));
  /* Validate the indexes here, so the pool thread never reads outside the copies. */
  for (size_t i = 0; i < j->n; i++) {
    const double *m = j->meta + i * META_FIELDS;
    double p = m[M_PATH], s = m[M_EXT_START], c = m[M_EXT_COUNT];
    if (!(p >= 0 && p < (double)j->plen && memchr(j->paths + (size_t)p, 0, j->plen - (size_t)p)) ||
        !(s >= 0 && c >= 0 && s + c <= (double)nx)) {
      FreeJob(j);
      napi_throw_range_error(env, NULL, "writeFiles: a path or extent index out of range");
      return NULL;
    }
  }
  j->res = calloc(j->n ? j->n * 2 : 1, sizeof(int32_t));
  if (!j->res) {
    FreeJob(j);
    napi_throw_error(env, "ENOMEM", "writeFiles: out of memory");
    return NULL;
  }
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "strata.writeFiles", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, Execute, Complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

void strata_register_extract(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "writeFiles", NAPI_AUTO_LENGTH, WriteFiles, NULL, &fn);
  napi_set_named_property(env, exports, "writeFiles", fn);
}
