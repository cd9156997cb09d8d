#!/usr/bin/env bash
# Installs CNI plugin binaries into DIR atomically: each is copied to a temporary file in DIR
# itself, made executable, flushed to disk, and renamed over the old one. A runtime calling
# the plugin meanwhile runs either the old binary or the new one — never a half-written file
# (ENOEXEC), and the copy never fails on a binary being executed (ETXTBSY), as `cp` onto it
# would. Same directory, so the rename stays on one filesystem and is atomic.
#
# Usage: scripts/install-cni.sh DIR BINARY...
#   e.g. scripts/install-cni.sh /opt/cni/bin target/release/linen
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 DIR BINARY..." >&2
  exit 2
fi
dir=$1
shift
[ -d "$dir" ] || { echo "install-cni: $dir is not a directory" >&2; exit 1; }

tmp=
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
for src in "$@"; do
  name=$(basename "$src")
  tmp=$(mktemp "$dir/.$name.XXXXXX")
  cp "$src" "$tmp"
  chmod 0755 "$tmp"
  sync "$tmp"
  mv -f -T "$tmp" "$dir/$name"
  tmp=
done
