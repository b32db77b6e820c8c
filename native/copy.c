/*
 * copyRange: one range of a local file copied into another file on a thread of libuv's pool
 * (napi async work), for `convert` (src/library/convert/native-copy.ts). Doing the copy in C
 * on the pool gives the parallelism of two copiers without starting worker isolates (each
 * ~25 ms of a core and ~10 MB), which on a 1 GiB disk was the gap to qemu-img.
 *
 * copyRange(inFd, inOff, outFd, outOff, len, gran, flags) -> Promise<{written, cloneErrno}>
 *   flags & 1 (HOLES): skip the source's holes (SEEK_DATA/SEEK_HOLE) without reading them;
 *   flags & 2 (CLONE): first try FICLONERANGE (a reflink: btrfs, xfs); when the file system
 *                      refuses, cloneErrno says why and the range is copied as below.
 *   flags & 4 (KERNEL): the non-zero granules go from the input to the output with
 *                      copy_file_range(2) instead of pwrite(2) from the buffer: the kernel
 *                      copies page cache to page cache (and reflinks where it can). On this
 *                      VM's ext4 a 4 MiB pwrite from user memory costs 3-4x the system time
 *                      of the same bytes moved by copy_file_range (800 MB: 0.5-1.3 s
 *                      against 0.26-0.32 s). Where the kernel refuses (EXDEV across file
 *                      systems, EOPNOTSUPP, ...), cfrErrno says why and the range is written
 *                      from the buffer as below.
 *   flags & 8 (ALLDATA): the caller knows the range holds data (qcow2 clusters it found
 *                      non-zero with scanClusters): no read and no zero check, only
 *                      copy_file_range (falling back to the copy below).
 *   flags & 16 (PREALLOC): each range about to be written is first allocated with
 *                      fallocate(2) (mode 0: blocks, size unchanged inside the file), as
 *                      qemu-img's qcow2 driver does with ZERO_RANGE: ext4 then maps the
 *                      range once instead of reserving delayed allocation block by block
 *                      (ext4_da_get_block_prep). 1 GiB mixed disk, 8 interleaved rounds at
 *                      load 24-27, user+sys CPU median: raw -> qcow2 0.47 -> 0.39 s (qemu-img
 *                      0.38), raw -> raw 0.40 -> 0.32 s (qemu-img 0.38). A file system that
 *                      refuses fallocate is simply written.
 *   Otherwise the range is read into a per-thread buffer and granules (`gran` bytes) that
 *   are all zeros are not written (the output is sparse, sized beforehand).
 *
 * copyRange(..., flags, directFd): directFd >= 0 is the output opened again with O_DIRECT:
 *   the bytes go from the buffer straight to the disk instead of into fresh page-cache
 *   pages (with ALLDATA: read, then written; otherwise the non-zero granules found by the
 *   zero check). On this VM, when the page cache is full, a buffered writer pays for
 *   reclaim and for memory the host has to back again: 8 GiB raw disk, dd bs=4M conv=sparse,
 *   load 11: buffered 19.3 s (6.2 s of system time), oflag=direct 14.1 s (2.4 s). A write
 *   the kernel refuses there (EINVAL: not aligned, or no O_DIRECT on this file system) is
 *   done through outFd, and so is the rest of the job.
 *
 * scanClusters(fd, off, len, virt, cs[, flags]) -> Promise<Uint8Array>
 *   reads [off, off+len) of a file holding virtual bytes [virt, virt+len) and says, for
 *   each cs-byte virtual cluster that range touches (the first is floor(virt / cs)),
 *   whether its bytes in the range are not all zeros (1) or all zeros (0).
 *   flags & 32 (PROBE): read the first 4 KiB of each cluster, and the rest only where those
 *   are all zeros: a data cluster is data from its first non-zero word, so for a disk of
 *   data the kernel copies a sixteenth of it to user memory instead of all of it (that copy,
 *   _copy_to_iter, was 16% of a 1 GiB raw -> qcow2 run's samples). The range is asked
 *   for with POSIX_FADV_WILLNEED first, so a source not in the page cache is still read
 *   ahead in large requests rather than 4 KiB at a time.
 * A failure rejects with an Error carrying code (errno name), side ('read'|'write') and
 * offset (the file offset on that side).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF_BYTES (1024 * 1024)
#define F_HOLES 1
#define F_CLONE 2
#define F_KERNEL 4
#define F_ALLDATA 8
#define F_PREALLOC 16
#define F_PROBE 32
/* F_PROBE: the bytes read first of each cluster; almost every data cluster is known by them */
#define PROBE_BYTES 4096

static __thread unsigned char *tbuf;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int scan; /* scanClusters rather than copyRange */
  int in_fd, out_fd, flags;
  int dio_fd; /* the output opened with O_DIRECT, or -1 */
  int64_t in_off, out_off, len, gran;
  int64_t virt; /* scan: the virtual offset of in_off */
  /* results */
  int64_t written;
  int clone_errno;
  int cfr_errno;
  unsigned char *marks; /* scan: one byte per cluster */
  size_t nmarks;
  int err; /* errno of a failure, 0 when none */
  int err_write;
  int64_t err_off;
  int short_read;
} Job;

/* F_PREALLOC: allocate [off, off+len) of the output before writing it (a refusal is ignored). */
static void prealloc(Job *j, int64_t off, int64_t len) {
  if ((j->flags & F_PREALLOC) && fallocate(j->out_fd, 0, off, len) != 0 && errno != EINTR && errno != ENOSPC)
    j->flags &= ~F_PREALLOC; /* EOPNOTSUPP and the like: not here, not again in this job */
}

static int all_zero(const unsigned char *p, size_t n) {
  const uint64_t *w = (const uint64_t *)p;
  size_t i = 0, words = n / 8;
  for (; i < words; i++)
    if (w[i]) return 0;
  for (size_t b = words * 8; b < n; b++)
    if (p[b]) return 0;
  return 1;
}

/* Read `want` bytes of the input at `a` into tbuf; a failure or the file's end is recorded in j. */
static int read_full(Job *j, size_t want, int64_t a) {
  size_t got = 0;
  while (got < want) {
    ssize_t n = pread(j->in_fd, tbuf + got, want - got, a + (int64_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      j->err = errno;
      j->err_off = a + (int64_t)got;
      return -1;
    }
    if (n == 0) {
      j->err = EIO;
      j->short_read = 1;
      j->err_off = a + (int64_t)got;
      return -1;
    }
    got += (size_t)n;
  }
  return 0;
}

static int alloc_tbuf(Job *j) {
  if (!tbuf && posix_memalign((void **)&tbuf, 4096, BUF_BYTES) != 0) {
    tbuf = NULL;
    j->err = ENOMEM;
    j->err_off = j->in_off;
    return -1;
  }
  return 0;
}

/* scanClusters: one mark per virtual cluster touched, 1 where its bytes in the range are not all zeros. */
static void ExecuteScan(Job *j) {
  int64_t cs = j->gran, first = j->virt / cs;
  j->nmarks = j->len > 0 ? (size_t)((j->virt + j->len - 1) / cs - first + 1) : 0;
  j->marks = calloc(j->nmarks ? j->nmarks : 1, 1);
  if (!j->marks) {
    j->err = ENOMEM;
    j->err_off = j->in_off;
    return;
  }
  if (alloc_tbuf(j) != 0) return;
  if (j->flags & F_PROBE) {
    posix_fadvise(j->in_fd, j->in_off, j->len, POSIX_FADV_WILLNEED);
    for (int64_t pos = 0; pos < j->len;) {
      int64_t v = j->virt + pos, k = v / cs, n = (k + 1) * cs - v; /* this cluster's bytes here */
      if (n > j->len - pos) n = j->len - pos;
      for (int64_t p = 0; p < n && !j->marks[k - first];) {
        int64_t cap = p == 0 ? PROBE_BYTES : BUF_BYTES;
        size_t want = (size_t)(n - p < cap ? n - p : cap);
        if (read_full(j, want, j->in_off + pos + p) != 0) return;
        if (!all_zero(tbuf, want)) j->marks[k - first] = 1;
        p += (int64_t)want;
      }
      pos += n;
    }
    return;
  }
  for (int64_t pos = 0; pos < j->len;) {
    size_t want = (size_t)(j->len - pos < BUF_BYTES ? j->len - pos : BUF_BYTES);
    if (read_full(j, want, j->in_off + pos) != 0) return;
    for (size_t p = 0; p < want;) {
      int64_t v = j->virt + pos + (int64_t)p, k = v / cs;
      size_t n = (size_t)((k + 1) * cs - v);
      if (n > want - p) n = want - p;
      if (!j->marks[k - first] && !all_zero(tbuf + p, n)) j->marks[k - first] = 1;
      p += n;
    }
    pos += (int64_t)want;
  }
}

/* Copy [a, b) of the input (data, not a hole) to the output at out_off + (a - in_off). */
/* pwrite buf[*done, n) at `at` + *done; 0, or the errno of the failure. */
static int pwrite_from(int fd, const unsigned char *buf, size_t n, int64_t at, size_t *done) {
  while (*done < n) {
    ssize_t w = pwrite(fd, buf + *done, n - *done, at + (int64_t)*done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? errno : EIO;
    *done += (size_t)w;
  }
  return 0;
}

/*
 * Write buf[0, n) at `at` through the O_DIRECT descriptor; what it refuses (EINVAL: not
 * aligned, an unaligned tail after a short write, no O_DIRECT here) goes through the page
 * cache, and nothing more of this job goes the direct way. 0, or -1 on a failure (in j).
 */
static int write_direct(Job *j, const unsigned char *buf, size_t n, int64_t at) {
  size_t done = 0;
  int e = j->dio_fd >= 0 ? pwrite_from(j->dio_fd, buf, n, at, &done) : EINVAL;
  if (e == EINVAL) {
    j->dio_fd = -1;
    e = pwrite_from(j->out_fd, buf, n, at, &done);
  }
  if (e == 0) return 0;
  j->err = e;
  j->err_write = 1;
  j->err_off = at + (int64_t)done;
  return -1;
}

static int copy_data(Job *j, int64_t a, int64_t b) {
  int64_t delta = j->out_off - j->in_off;
  size_t gran = (size_t)j->gran;
  while (a < b) {
    size_t want = (size_t)(b - a < BUF_BYTES ? b - a : BUF_BYTES);
    if (read_full(j, want, a) != 0) return -1;
    size_t p = 0;
    while (p < want) {
      while (p < want && all_zero(tbuf + p, (want - p < gran ? want - p : gran))) p += gran;
      if (p >= want) break;
      size_t q = p;
      while (q < want && !all_zero(tbuf + q, (want - q < gran ? want - q : gran))) q += gran;
      if (q > want) q = want;
      size_t done = p;
      prealloc(j, a + (int64_t)p + delta, (int64_t)(q - p));
      if (j->dio_fd >= 0) {
        if (write_direct(j, tbuf + p, q - p, a + (int64_t)p + delta) != 0) return -1;
        done = q;
      }
      while (done < q && (j->flags & F_KERNEL)) {
        loff_t from = a + (int64_t)done, to = a + (int64_t)done + delta;
        ssize_t n = copy_file_range(j->in_fd, &from, j->out_fd, &to, q - done, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          /* refused here (or the input shrank since the read): write what the buffer holds */
          j->cfr_errno = n < 0 ? errno : EIO;
          j->flags &= ~F_KERNEL;
          break;
        }
        done += (size_t)n;
      }
      while (done < q) {
        ssize_t n = pwrite(j->out_fd, tbuf + done, q - done, a + (int64_t)done + delta);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          j->err = n < 0 ? errno : EIO;
          j->err_write = 1;
          j->err_off = a + (int64_t)done + delta;
          return -1;
        }
        done += (size_t)n;
      }
      j->written += (int64_t)(q - p);
      p = q;
    }
    a += (int64_t)want;
  }
  return 0;
}

static void Execute(napi_env env, void *data) {
  (void)env;
  Job *j = (Job *)data;
  if (j->scan) {
    ExecuteScan(j);
    return;
  }
  if (j->flags & F_CLONE) {
#ifdef FICLONERANGE
    struct file_clone_range r = {.src_fd = j->in_fd,
                                 .src_offset = (uint64_t)j->in_off,
                                 .src_length = (uint64_t)j->len,
                                 .dest_offset = (uint64_t)j->out_off};
    if (ioctl(j->out_fd, FICLONERANGE, &r) == 0) {
      j->written = j->len;
      return;
    }
    j->clone_errno = errno;
#else
    j->clone_errno = EOPNOTSUPP;
#endif
  }
  if ((j->flags & F_ALLDATA) && j->dio_fd >= 0) {
    /* read into the buffer, write from it to the disk */
    if (alloc_tbuf(j) != 0) return;
    prealloc(j, j->out_off, j->len);
    int64_t done = 0;
    while (done < j->len) {
      size_t want = (size_t)(j->len - done < BUF_BYTES ? j->len - done : BUF_BYTES);
      if (read_full(j, want, j->in_off + done) != 0) return;
      if (write_direct(j, tbuf, want, j->out_off + done) != 0) return;
      j->written += (int64_t)want;
      done += (int64_t)want;
    }
    return;
  }
  if ((j->flags & F_ALLDATA) && (j->flags & F_KERNEL)) {
    loff_t from = j->in_off, to = j->out_off;
    int64_t left = j->len;
    prealloc(j, j->out_off, j->len);
    while (left > 0) {
      ssize_t n = copy_file_range(j->in_fd, &from, j->out_fd, &to, (size_t)left, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        j->cfr_errno = n < 0 ? errno : EIO;
        j->flags &= ~F_KERNEL;
        break;
      }
      left -= n;
      j->written += n;
    }
    if (left == 0) return;
    /* the rest through the buffer (a short copy at the input's end fails there as a short read) */
    j->out_off += j->len - left;
    j->in_off += j->len - left;
    j->len = left;
  }
  if (alloc_tbuf(j) != 0) return;
  int64_t pos = j->in_off, want = j->in_off + j->len, end = want;
  /* A file that shrank since its map was made: copy what is there, then fail as a short read
     (SEEK_DATA would otherwise take the missing tail for a hole). */
  struct stat st;
  if (fstat(j->in_fd, &st) == 0 && st.st_size < end) end = st.st_size > pos ? st.st_size : pos;
  if (!(j->flags & F_HOLES)) {
    if (copy_data(j, pos, end) != 0) return;
  } else {
    while (pos < end) {
      off_t d = lseek(j->in_fd, pos, SEEK_DATA);
      if (d < 0) {
        if (errno == ENXIO) break;                   /* a hole to the end of the file: zeros */
        if (copy_data(j, pos, end) != 0) return; /* SEEK_DATA unsupported here: all data */
        break;
      }
      if (d >= end) break;
      off_t h = lseek(j->in_fd, d, SEEK_HOLE);
      if (h < 0 || h <= d || h > end) h = end;
      if (copy_data(j, d, h) != 0) return;
      pos = h;
    }
  }
  if (end < want) {
    j->err = EIO;
    j->short_read = 1;
    j->err_off = end;
  }
}

static const char *errno_name(int e) {
  switch (e) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EFBIG: return "EFBIG";
    case EDQUOT: return "EDQUOT";
    case ENOMEM: return "ENOMEM";
    case EISDIR: return "EISDIR";
    default: return "EUNKNOWN";
  }
}

static void Complete(napi_env env, napi_status status, void *data) {
  Job *j = (Job *)data;
  napi_value v;
  if (status != napi_ok || j->err) {
    napi_value msg, code, err, side, off;
    const char *text = j->short_read ? "short read: the file ends here" : strerror(j->err ? j->err : EIO);
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, errno_name(j->err), NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &err);
    napi_create_string_utf8(env, j->err_write ? "write" : "read", NAPI_AUTO_LENGTH, &side);
    napi_set_named_property(env, err, "side", side);
    napi_create_int64(env, j->err_off, &off);
    napi_set_named_property(env, err, "offset", off);
    napi_reject_deferred(env, j->deferred, err);
  } else if (j->scan) {
    void *copy;
    napi_create_buffer_copy(env, j->nmarks, j->marks, &copy, &v);
    napi_resolve_deferred(env, j->deferred, v);
  } else {
    napi_value w, c, f;
    napi_create_object(env, &v);
    napi_create_int64(env, j->written, &w);
    napi_create_int32(env, j->clone_errno, &c);
    napi_create_int32(env, j->cfr_errno, &f);
    napi_set_named_property(env, v, "written", w);
    napi_set_named_property(env, v, "cloneErrno", c);
    napi_set_named_property(env, v, "cfrErrno", f);
    napi_resolve_deferred(env, j->deferred, v);
  }
  napi_delete_async_work(env, j->work);
  free(j->marks);
  free(j);
}

static Job *new_job(napi_env env) {
  Job *j = calloc(1, sizeof(Job));
  if (!j) napi_throw_error(env, "ENOMEM", "strata native copy: out of memory");
  else j->dio_fd = -1;
  return j;
}

/* Run j on libuv's pool; the promise settles in Complete. */
static napi_value queue_job(napi_env env, Job *j, const char *label) {
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, label, NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, Execute, Complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static napi_value CopyRange(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  int32_t dio_fd = -1;
  int32_t in_fd, out_fd, flags;
  int64_t in_off, out_off, len, gran;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 7 ||
      napi_get_value_int32(env, argv[0], &in_fd) != napi_ok || napi_get_value_int64(env, argv[1], &in_off) != napi_ok ||
      napi_get_value_int32(env, argv[2], &out_fd) != napi_ok || napi_get_value_int64(env, argv[3], &out_off) != napi_ok ||
      napi_get_value_int64(env, argv[4], &len) != napi_ok || napi_get_value_int64(env, argv[5], &gran) != napi_ok ||
      napi_get_value_int32(env, argv[6], &flags) != napi_ok || in_off < 0 || out_off < 0 || len < 0 || gran <= 0 ||
      gran > BUF_BYTES || (argc > 7 && napi_get_value_int32(env, argv[7], &dio_fd) != napi_ok)) {
    napi_throw_type_error(env, NULL, "copyRange(inFd, inOff, outFd, outOff, len, gran, flags[, directFd]): integers in range");
    return NULL;
  }
  Job *j = new_job(env);
  if (!j) return NULL;
  j->in_fd = in_fd;
  j->out_fd = out_fd;
  j->flags = flags;
  j->in_off = in_off;
  j->out_off = out_off;
  j->len = len;
  j->gran = gran;
  j->dio_fd = dio_fd < 0 ? -1 : dio_fd;
  return queue_job(env, j, "strata.copyRange");
}

static napi_value ScanClusters(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int32_t fd, flags = 0;
  int64_t off, len, virt, cs;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &off) != napi_ok ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok || napi_get_value_int64(env, argv[3], &virt) != napi_ok ||
      napi_get_value_int64(env, argv[4], &cs) != napi_ok || (argc > 5 && napi_get_value_int32(env, argv[5], &flags) != napi_ok) ||
      off < 0 || len < 0 || virt < 0 || cs <= 0) {
    napi_throw_type_error(env, NULL, "scanClusters(fd, off, len, virt, cs[, flags]): integers in range");
    return NULL;
  }
  Job *j = new_job(env);
  if (!j) return NULL;
  j->scan = 1;
  j->flags = flags;
  j->in_fd = fd;
  j->in_off = off;
  j->len = len;
  j->virt = virt;
  j->gran = cs;
  return queue_job(env, j, "strata.scanClusters");
}

void strata_register_copy(napi_env env, napi_value exports) {
  napi_value fn, scan;
  napi_create_function(env, "copyRange", NAPI_AUTO_LENGTH, CopyRange, NULL, &fn);
  napi_set_named_property(env, exports, "copyRange", fn);
  napi_create_function(env, "scanClusters", NAPI_AUTO_LENGTH, ScanClusters, NULL, &scan);
  napi_set_named_property(env, exports, "scanClusters", scan);
}
