#!/usr/bin/env bash
# Builds the artifacts Linen ships, with the `dist` profile (stripped, no debuginfo), statically
# linked on the host's gnu target (`+crt-static`: no dynamic loader, no shared libraries, so the
# plugin runs on hosts with an older glibc). Each binary is built in its own cargo invocation
# so cargo resolves its features alone: the plugin does not inherit flaxd's (tokio's signal
# driver, multi-threaded runtime). Prints the directory holding `linen` and `flaxd`.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=$(rustc -vV | sed -n 's/^host: //p')
case "$triple" in
  *-linux-gnu) ;;
  *) echo "build-dist: static builds need a *-linux-gnu host target, not $triple" >&2; exit 1 ;;
esac
# RUSTFLAGS for the target only: with --target, build scripts and proc macros stay dynamic.
var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$var=-C target-feature=+crt-static"

for pkg_bin in linen:linen flaxd:flaxd flaxd:linen-install; do
  cargo build --quiet --profile dist --target "$triple" -p "${pkg_bin%%:*}" --bin "${pkg_bin#*:}" >&2
done
echo "$PWD/target/$triple/dist"
