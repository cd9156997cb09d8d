#!/usr/bin/env bash
# Installs every system package Linen's demo and tests need, on Debian bookworm, as root.
# Safe to run again: it installs only what is missing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

# Debian package -> a file it provides, to test whether it is already there.
declare -A PROVIDES=(
  [openvswitch-switch]=/usr/sbin/ovs-vswitchd
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [protobuf-compiler]=/usr/bin/protoc
  [iputils-ping]=/usr/bin/ping
  [iproute2]=/usr/sbin/ip
  [iperf3]=/usr/bin/iperf3
  [etcd-server]=/usr/bin/etcd
  [etcd-client]=/usr/bin/etcdctl
  [procps]=/usr/bin/pgrep
  # A real container runtime for the end-to-end test: podman (libcni) with runc and a
  # busybox image built locally from busybox-static (no registry needed).
  [podman]=/usr/bin/podman
  [runc]=/usr/sbin/runc
  [busybox-static]=/bin/busybox
)

missing=()
for pkg in "${!PROVIDES[@]}"; do
  [ -e "${PROVIDES[$pkg]}" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# An offline validator for the Kubernetes manifests in deploy/ (schemas ship inside the
# package), used by flaxd's deploy test. Installed apart from the system Python.
K8S_VALIDATE_DIR=/opt/linen-tools/py
if [ ! -e "$K8S_VALIDATE_DIR/kubernetes_validate" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "install-deps: installing kubernetes-validate into $K8S_VALIDATE_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
    --target "$K8S_VALIDATE_DIR" kubernetes-validate==1.37.0
fi

# The Debian packages start nothing here (no systemd); the lab and the tests start their own
# ovsdb-server/ovs-vswitchd per simulated node. Make sure no stray packaged instance holds the
# default socket: we never rely on it.

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Linen needs a stable Rust toolchain >= 1.85 (edition 2024):" >&2
  echo "  install rustup (https://rustup.rs) and run 'rustup default stable'" >&2
  exit 1
fi
echo "install-deps: all system packages present"
