#!/usr/bin/env bash
# Builds libfuse's own high-performance example servers, passthrough_ll (C) and passthrough_hp
# (C++), for bench/mount.ts's optional third side (BENCH_PASSTHROUGH): the floor of a FUSE
# file system on this kernel. Not part of CI or the build.
#
#   apt-get install libfuse3-dev pkg-config gcc g++
#   bash scripts/build-fuse-passthrough.sh [OUTDIR]          # OUTDIR: .cache/fuse-passthrough
#
# The examples are compiled against the installed libfuse3 (pkg-config fuse3), from the
# libfuse release of the same version (tag fuse-X.Y.Z), so they use the API the library has.
# Their sources come from LIBFUSE_SRC when set: a libfuse source tree (with example/) or a
# clone of https://github.com/libfuse/libfuse (bare or not; the tag's files are read with
# git show); otherwise the tag is cloned from GitHub.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/fuse-passthrough}
version=$(pkg-config --modversion fuse3) || {
  echo "build-fuse-passthrough: libfuse3's headers are missing (apt-get install libfuse3-dev pkg-config)" >&2
  exit 1
}
tag=fuse-$version
files=(passthrough_ll.c passthrough_hp.cc passthrough_helpers.h cxxopts.hpp)
mkdir -p "$out/src"

src=${LIBFUSE_SRC:-}
if [ -z "$src" ]; then
  rm -rf "$out/libfuse"
  git clone --quiet --depth 1 --branch "$tag" https://github.com/libfuse/libfuse.git "$out/libfuse"
  src=$out/libfuse
fi
if [ -f "$src/example/passthrough_ll.c" ] && ! git -C "$src" rev-parse --verify --quiet "$tag" >/dev/null 2>&1; then
  # a plain source tree: take it as it is
  for f in "${files[@]}"; do cp "$src/example/$f" "$out/src/$f"; done
else
  # a git clone: the files as the tag of the installed version has them
  git -C "$src" rev-parse --verify --quiet "$tag" >/dev/null || {
    echo "build-fuse-passthrough: $src has no tag $tag (the installed libfuse3's version)" >&2
    exit 1
  }
  for f in "${files[@]}"; do git -C "$src" show "$tag:example/$f" >"$out/src/$f"; done
fi

cflags=$(pkg-config --cflags fuse3)
libs=$(pkg-config --libs fuse3)
# shellcheck disable=SC2086 # pkg-config's flags are words
gcc -O2 -Wall $cflags "$out/src/passthrough_ll.c" -o "$out/passthrough_ll" $libs -pthread
# shellcheck disable=SC2086
g++ -O2 -std=c++17 $cflags "$out/src/passthrough_hp.cc" -o "$out/passthrough_hp" $libs -pthread
echo "built $out/passthrough_ll and $out/passthrough_hp (libfuse $version)"
