#!/usr/bin/env bash
# Checks that the README's commands work on a fresh machine, as root: builds a clean Debian
# bookworm root with mmdebstrap, gives it only what a newcomer has (the Rust toolchain rustup
# installs, read-only; an empty cargo registry; a clean clone of this repository's HEAD, no
# target/), and runs the README's command in it. Then checks the shipped plugin is portable:
# the static `linen` (scripts/build-dist.sh) runs in an older-glibc Debian bullseye root.
#
#   scripts/fresh-check.sh [COMMAND]   COMMAND defaults to ./scripts/demo.sh (the main job)
#
# Environment: FRESH_CACHE (default /var/cache/linen-fresh) keeps downloaded .debs between runs;
# FRESH_SKIP_PORTABLE=1 skips the bullseye check, FRESH_SKIP_COMMAND=1 the bookworm one (to
# iterate on one half; CI runs both).
# It prints the first failure clearly, and always unmounts and removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
command=${1:-./scripts/demo.sh}

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check: run as root (it builds a Debian root and mounts into it)" >&2
  exit 1
fi
command -v mmdebstrap >/dev/null || { echo "fresh-check: mmdebstrap missing: run ./scripts/install-deps.sh" >&2; exit 1; }

cache=${FRESH_CACHE:-/var/cache/linen-fresh}
mkdir -p "$cache/bookworm" "$cache/bullseye"
work=$(mktemp -d /var/tmp/linen-fresh.XXXXXX)
roots=()
started=$(date +%s)

say() { printf 'fresh-check [%4ss]: %s\n' "$(($(date +%s) - started))" "$*" >&2; }
fail() { printf '\nfresh-check: FAILED: %s\n' "$*" >&2; exit 1; }

# Everything below a root: kill what still runs in it, unmount deepest first, remove it.
cleanup() {
  local root pid
  for root in "${roots[@]}"; do
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill -9 "$pid" 2>/dev/null || true
    done
    # Mounts deepest first; the root's own network namespaces (bound under its /run/netns)
    # go with them once nothing runs in them.
    grep -o " $root[^ ]*" /proc/self/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  rm -rf --one-file-system "$work" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A Debian root of SUITE at DIR, mounted as a machine of its own would be.
make_root() {
  local suite=$1 variant=$2 root=$3
  say "building a fresh $suite root ($variant)"
  mkdir -p "$root"
  mmdebstrap --quiet --variant="$variant" \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" && cp -a $cache/$suite/. \"\$1/var/cache/apt/archives/\" 2>/dev/null || true" \
    --customize-hook="cp -a \"\$1/var/cache/apt/archives/.\" $cache/$suite/ 2>/dev/null || true" \
    "$suite" "$root" >"$work/mmdebstrap-$suite.log" 2>&1 ||
    { tail -n 20 "$work/mmdebstrap-$suite.log" >&2; fail "mmdebstrap $suite"; }
  roots+=("$root")
  # Its own mount point (else `ip netns` fails: "mount --make-rslave /: Invalid argument").
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --make-rslave "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mount -t tmpfs tmpfs "$root/dev/shm"
  mount -t tmpfs tmpfs "$root/run"
  mount -t tmpfs tmpfs "$root/tmp"
  # apt keeps what it downloads here; the next run starts from it (the root is still fresh).
  mount --bind "$cache/$suite" "$root/var/cache/apt/archives"
  # This machine's trust store: the package and crate clients here need it. Also as a local
  # CA, so it survives the ca-certificates package regenerating the bundle in the root.
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-trust.crt"
}

in_root() {
  local root=$1
  shift
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "$*"
}

# 1. The README's command on a fresh bookworm, as a newcomer has it.
if [ "${FRESH_SKIP_COMMAND:-0}" != 1 ]; then
  root=$work/bookworm
  make_root bookworm important "$root"
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
  mkdir -p "$root/root/.cargo/bin" "$root/root/.rustup"
  mount --bind -o ro "$cargo_home/bin" "$root/root/.cargo/bin"
  mount --bind -o ro "$rustup_home" "$root/root/.rustup"
  mount -o remount,bind,ro "$root/root/.cargo/bin"
  mount -o remount,bind,ro "$root/root/.rustup"
  git clone --quiet --no-local "$repo" "$root/src/linen"
  say "clean clone of $(git -C "$root/src/linen" log -1 --format='%h %s' | cut -c1-72)"
  say "running '$command' in the fresh root"
  if ! in_root "$root" "cd /src/linen && $command" 2>&1 | tee "$work/run.log" | sed 's/^/  | /'; then
    grep -m 1 -iE 'error|failed|not found' "$work/run.log" >&2 || true
    fail "'$command' on a fresh bookworm root (log above)"
  fi
  say "'$command' passed on a fresh bookworm root"
fi

# 2. The shipped plugin on an older glibc (bullseye: 2.31; our build host: 2.36).
if [ "${FRESH_SKIP_PORTABLE:-0}" != 1 ]; then
  dist=$(./scripts/build-dist.sh) || fail "scripts/build-dist.sh (the static plugin)"
  old=$work/bullseye
  make_root bullseye essential "$old"
  install -m 0755 "$dist/linen" "$old/usr/local/bin/linen"
  say "running the static linen (CNI VERSION and a refused ADD) on bullseye ($(in_root "$old" 'ldd --version | head -n 1'))"
  out=$(in_root "$old" 'echo "{\"cniVersion\":\"1.0.0\"}" | CNI_COMMAND=VERSION linen') ||
    fail "static linen does not run on bullseye: $out"
  case "$out" in *'"supportedVersions"'*'"1.1.0"'*) ;; *) fail "linen VERSION on bullseye printed: $out" ;; esac
  # Bad input on stdin: the CNI error JSON with code 6 (decoding failure), non-zero exit.
  set +e
  err=$(in_root "$old" 'echo "{not json" | CNI_COMMAND=ADD CNI_CONTAINERID=c CNI_NETNS=/proc/1/ns/net CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni linen')
  rc=$?
  set -e
  [ "$rc" -ne 0 ] || fail "linen accepted a broken config on bullseye"
  case "$err" in *'"code":6'*|*'"code": 6'*) ;; *) fail "linen's error on bullseye was not code 6: $err" ;; esac
  say "static linen runs on bullseye: VERSION ok, bad input refused with code 6"
fi
say "all passed"
