#!/usr/bin/env bash
# The main job on a fresh Debian bookworm machine, as root: installs what is missing,
# builds Linen once in release, and runs the multi-node demo (3 simulated nodes, each a
# network namespace with its own Open vSwitch; 2 pods per node; ping matrix; TCP
# throughput across the VXLAN overlay; then tears everything down). Extra arguments go
# to `linen-lab demo` (e.g. --keep to leave the cluster running).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --workspace --release --bins
export LINEN_BIN_DIR="$PWD/target/release"
exec "$LINEN_BIN_DIR/linen-lab" demo "$@"
