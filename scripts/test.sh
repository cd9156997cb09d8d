#!/usr/bin/env bash
# Runs every Linen test on a fresh Debian bookworm machine, as root: installs what is
# missing, checks formatting and lints, builds once in release, then runs all tests
# (unit, integration against real OVS / CNI plugins / network namespaces, end to end).
# Arguments go to the test runner, e.g. `./scripts/test.sh -E 'binary(reference_plugins)'`
# to run a subset after the same set-up (CI passes none: everything runs).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

# One release build: the test run builds every binary the end-to-end tests execute
# (`linen`, `flaxd`, `linen-lab` — each crate has integration tests, so cargo builds its
# binaries) into target/release with the same features as the tests, so nothing is
# compiled twice.
export LINEN_BIN_DIR="$PWD/target/release"

echo "== build (release) and sweep what killed runs left"
# The test targets and, for them, every binary (the same features nextest builds with, so
# nothing is compiled twice); the sweep tears leftover labs down with linen-lab.
cargo build --workspace --release --tests
# Namespaces, daemons, mounts and temp dirs named lnt<pid>-... whose test process is gone.
./scripts/sweep-test-leftovers.sh

# What Linen ships, built as it ships (static, stripped; scripts/build-dist.sh) into the OCI
# image archive (scripts/build-image.sh), which the image test imports into containerd.
echo "== build the image"
LINEN_IMAGE=$(./scripts/build-image.sh)
export LINEN_IMAGE

echo "== run the tests (release)"
status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --release --no-fail-fast "$@" || status=$?
fi

echo "== check that the run left nothing behind"
./scripts/sweep-test-leftovers.sh --check || status=1
exit "$status"
