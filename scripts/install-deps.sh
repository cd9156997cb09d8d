#!/usr/bin/env bash
# Installs every system package Linen's demo and tests need, on Debian bookworm, as root.
# Safe to run again: it installs only what is missing. Checked on a fresh root by
# scripts/fresh-check.sh (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

# The Rust toolchain comes first: without it nothing below is any use. The minimum is the
# workspace's `rust-version` (what our dependencies declare; cargo itself refuses an older
# rustc with the same number), read from Cargo.toml so the two cannot drift.
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)"/\1/p' Cargo.toml | head -n 1)
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  echo "install-deps: cargo not found. Linen needs a stable Rust toolchain >= $need (edition 2024):" >&2
  echo "  install rustup (https://rustup.rs) and run 'rustup default stable'" >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "${have%%-*}" | sort -V | head -n 1)" != "$need" ]; then
  echo "install-deps: rustc $have is older than $need, the workspace's rust-version: run 'rustup update stable'" >&2
  exit 1
fi

# Debian package -> a file it provides, to test whether it is already there.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")
declare -A PROVIDES=(
  # A C toolchain: rustup brings no linker (`cc`), and gcc only recommends libc6-dev (crt
  # objects, libc.a for the static plugin), which --no-install-recommends skips.
  [gcc]=/usr/bin/gcc
  [libc6-dev]=/usr/lib/$arch/Scrt1.o
  # etcd-client's build script compiles .proto files: protoc, and the well-known types
  # (google/protobuf/*.proto), which protobuf-compiler only recommends.
  [protobuf-compiler]=/usr/bin/protoc
  [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
  [openvswitch-switch]=/usr/sbin/ovs-vswitchd
  # A real OpenFlow controller for the controller tests and `linen-lab up --controller`.
  [openvswitch-testcontroller]=/usr/bin/ovs-testcontroller
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iputils-ping]=/usr/bin/ping
  [iproute2]=/usr/sbin/ip
  [iperf3]=/usr/bin/iperf3
  # flaxd's egress masquerade (--ip-masq) keeps an nftables table; the image carries nft too.
  [nftables]=/usr/sbin/nft
  [etcd-server]=/usr/bin/etcd
  [etcd-client]=/usr/bin/etcdctl
  [procps]=/usr/bin/pgrep
  [file]=/usr/bin/file
  [git]=/usr/bin/git
  [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
  # Real container runtimes for the end-to-end tests: podman (libcni) with runc and a
  # busybox image built locally from busybox-static (no registry needed), and containerd
  # (the CRI runtime Kubernetes calls; `ctr` imports Linen's image archive).
  [podman]=/usr/bin/podman
  [runc]=/usr/sbin/runc
  [busybox-static]=/bin/busybox
  [containerd]=/usr/bin/containerd
  # A fresh Debian root for scripts/fresh-check.sh (CI checks the README's commands in one).
  [mmdebstrap]=/usr/bin/mmdebstrap
  [python3-pip]=/usr/lib/python3/dist-packages/pip
)

missing=()
for pkg in "${!PROVIDES[@]}"; do
  [ -e "${PROVIDES[$pkg]}" ] || missing+=("$pkg")
done

# Packaged daemons: openvswitch-switch, etcd-server and containerd ship services that start on
# install on a systemd machine and would hold the default sockets (/var/run/openvswitch/db.sock,
# 127.0.0.1:2379, /run/containerd/containerd.sock). Linen's tests and lab start their own
# instances on sockets and ports of their own, so the packaged ones are kept from starting
# while apt runs (policy-rc.d, Debian's documented switch) and disabled afterwards.
SERVICES=(openvswitch-switch ovs-vswitchd ovsdb-server etcd containerd)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  placed=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && placed=1
  fi
  trap '[ "$placed" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$placed" = 1 ] && rm -f "$policy"
  trap - EXIT
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  for svc in "${SERVICES[@]}"; do
    if systemctl list-unit-files "$svc.service" >/dev/null 2>&1 &&
      systemctl is-enabled --quiet "$svc.service" 2>/dev/null; then
      echo "install-deps: disabling the packaged $svc service (Linen runs its own instances)"
      systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
    fi
  done
fi

# An offline validator for the Kubernetes manifests in deploy/ (schemas ship inside the
# package), used by flaxd's deploy test. Installed apart from the system Python.
K8S_VALIDATE_DIR=/opt/linen-tools/py
if [ ! -e "$K8S_VALIDATE_DIR/kubernetes_validate" ]; then
  echo "install-deps: installing kubernetes-validate into $K8S_VALIDATE_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
    --target "$K8S_VALIDATE_DIR" kubernetes-validate==1.37.0
fi

echo "install-deps: all system packages present (rustc $have)"
