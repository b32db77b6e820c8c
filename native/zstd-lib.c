/*
 * zstd's compressor as one translation unit (what zstd's own single-file build does), from
 * the copy zstd-napi ships (node_modules/zstd-napi/deps/zstd/lib, found by binding.gyp), for
 * native/zstd.c: the same zstd as zstd-napi's binding, so the same frames. Its symbols stay
 * hidden inside the addon (binding.gyp), never bound to another zstd in the process.
 */
#include "common/debug.c"
#include "common/entropy_common.c"
#include "common/error_private.c"
#include "common/fse_decompress.c"
#include "common/pool.c"
#include "common/threading.c"
#include "common/xxhash.c"
#include "common/zstd_common.c"
#include "compress/fse_compress.c"
#include "compress/hist.c"
#include "compress/huf_compress.c"
#include "compress/zstd_compress.c"
#include "compress/zstd_compress_literals.c"
#include "compress/zstd_compress_sequences.c"
#include "compress/zstd_compress_superblock.c"
#include "compress/zstd_double_fast.c"
#include "compress/zstd_fast.c"
#include "compress/zstd_lazy.c"
#include "compress/zstd_ldm.c"
#include "compress/zstd_opt.c"
#include "compress/zstd_preSplit.c"
