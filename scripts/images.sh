#!/usr/bin/env bash
# Builds zenvoy's two container images from binaries that are already built, with buildah
# and no base image (`FROM scratch`: nothing is pulled from any registry).
#
#   scripts/images.sh [--prefix PREFIX] [--archive DIR] BIN_DIR TAG
#
# For zenvoy-controller and zenvoy-holder each, a build context holds:
#   - the binary from BIN_DIR;
#   - the dynamic loader and every shared library `ldd` names for it, copied from this
#     machine to the same paths (the binaries link glibc dynamically; this is the glibc
#     they were built against when they were built here, as `make images` does);
#   - images/etc/: passwd and group (the non-root user zenvoy, 65532:65532),
#     nsswitch.conf (`hosts: files dns`) and a placeholder hosts file.
# Host lookups need nothing more from glibc 2.34 on, where the `files` and `dns` sources
# are part of libc.so.6; an older glibc loads them as libnss_files.so.2 and
# libnss_dns.so.2, and then those are copied too.
# Then `buildah bud -f images/<name>.Containerfile`, tagged PREFIX/<name>:TAG (PREFIX
# `localhost` unless given, the names deploy/ uses). --archive DIR also writes each image
# as DIR/<name>-TAG.tar (docker-archive), for `kind load image-archive`, `docker load` or
# `ctr images import`.
#
# `make images` runs it on target/release with the workspace version as TAG;
# e2e/tests/images.rs on target/debug, with a tag and a storage of its own. buildah
# runs as root here (or rootless, with subordinate ids set up). Its storage driver is vfs
# unless STORAGE_DRIVER says otherwise: these images are one copied directory each, and
# vfs works everywhere, inside containers too, where overlay may not.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 [--prefix PREFIX] [--archive DIR] BIN_DIR TAG" >&2
  exit 2
}

prefix=localhost
archive=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
    --archive) [ $# -ge 2 ] || usage; archive=$2; shift 2 ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
bin_dir=$1
tag=$2
command -v buildah >/dev/null 2>&1 ||
  { echo "images: buildah is missing (make setup installs it, as root)" >&2; exit 1; }
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
# Every file and the image itself get one time, SOURCE_DATE_EPOCH or the last commit's:
# the same binaries give the same image, digest included.
created=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

# The loader and shared libraries of an ELF file, one absolute path a line; nothing for a
# static one. "not found" is an error: the image would not start.
shared_objects() {
  local out
  if ! out=$(ldd "$1" 2>&1); then
    case "$out" in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) echo "images: ldd $1: $out" >&2; return 1 ;;
    esac
  fi
  if grep -q "not found" <<<"$out"; then
    echo "images: $1 needs libraries this machine lacks:" >&2
    grep "not found" <<<"$out" >&2
    return 1
  fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# glibc's NSS modules for `hosts: files dns`, where they are not built into libc.so.6.
nss_modules() {
  local libc=$1 version major minor dir m
  version=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{ print $2 }')
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%.*}
  if [ -n "$version" ] && { [ "$major" -gt 2 ] || [ "$minor" -ge 34 ]; }; then
    return 0
  fi
  dir=$(dirname "$libc")
  for m in libnss_files.so.2 libnss_dns.so.2; do
    [ -e "$dir/$m" ] || { echo "images: glibc $version without $dir/$m" >&2; return 1; }
    echo "$dir/$m"
    shared_objects "$dir/$m"
  done
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() {
  local name=$1 binary=$bin_dir/$1 ctx=$work/$1 objects libc ref
  [ -x "$binary" ] || { echo "images: $binary is missing or not executable" >&2; return 1; }
  install -D -m 0755 "$binary" "$ctx/$name"
  objects=$(shared_objects "$binary")
  libc=$(grep '/libc\.so\.' <<<"$objects" || true)
  if [ -n "$libc" ]; then
    objects+=$'\n'$(nss_modules "$libc")
  fi
  # Each at the path the loader looks for it, as a regular file (the host's may be a
  # symlink into a directory the image does not have).
  sort -u <<<"$objects" | while read -r so; do
    [ -n "$so" ] || continue
    install -D -m 0755 "$(readlink -f "$so")" "$ctx/rootfs$so"
  done
  install -D -m 0644 -t "$ctx/rootfs/etc" images/etc/*
  ref="$prefix/$name:$tag"
  buildah bud --quiet --timestamp "$created" --format oci --build-arg "VERSION=$tag" \
    -f "images/$name.Containerfile" -t "$ref" "$ctx" >/dev/null
  echo "images: built $ref ($(du -sh "$ctx" | cut -f1) context)"
  if [ -n "$archive" ]; then
    mkdir -p "$archive"
    rm -f "$archive/$name-$tag.tar"
    buildah push --quiet "$ref" "docker-archive:$archive/$name-$tag.tar:$ref"
    echo "images: wrote $archive/$name-$tag.tar"
  fi
}

for name in zenvoy-controller zenvoy-holder; do
  build "$name"
done
