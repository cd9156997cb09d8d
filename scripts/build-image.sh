#!/usr/bin/env bash
# Builds Linen's image offline, as an OCI image archive (an OCI image layout in a tar: no
# registry, no daemon): one layer holding flaxd and linen-install (the DaemonSet's init step)
# in /usr/local/bin, and in /opt/linen/cni-bin the plugins the init step installs on the host:
# the static `linen` and the reference plugins its conflist chains (bridge, host-local,
# loopback, portmap, from Debian's containernetworking-plugins). Binaries come from
# scripts/build-dist.sh (static, stripped). The layer is reproducible: sorted, owned by
# root, every mtime 0, gzip without a name or time, so the same inputs give the same digest.
#
#   scripts/build-image.sh [OUT]   OUT defaults to target/image/linen-VERSION.oci.tar
#
# Prints the archive's path. Import it with `ctr images import OUT` (or `podman load`); its
# name is ghcr.io/linen-cni/linen:VERSION, the image deploy/linen.yaml runs.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
name="ghcr.io/linen-cni/linen:$version"
out=${1:-$PWD/target/image/linen-$version.oci.tar}
plugins_dir=${CNI_PLUGINS_DIR:-/usr/lib/cni}
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "build-image: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

dist=$(./scripts/build-dist.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/opt/linen/cni-bin" "$root/tmp" "$work/oci/blobs/sha256"
chmod 1777 "$root/tmp"
install -m 0755 "$dist/flaxd" "$dist/linen-install" "$root/usr/local/bin/"
install -m 0755 "$dist/linen" "$root/opt/linen/cni-bin/"
# nft, for flaxd's egress masquerade (--ip-masq): Debian's program with the shared objects
# it loads, at the paths ldd resolves (the image has no other userland).
nft=$(command -v nft || true)
[ -x "$nft" ] || { echo "build-image: nft missing: run ./scripts/install-deps.sh" >&2; exit 1; }
install -m 0755 "$nft" "$root/usr/local/bin/nft"
for lib in $(ldd "$nft" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  install -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
for p in bridge host-local loopback portmap; do
  [ -x "$plugins_dir/$p" ] || { echo "build-image: $plugins_dir/$p missing: run ./scripts/install-deps.sh" >&2; exit 1; }
  install -m 0755 "$plugins_dir/$p" "$root/opt/linen/cni-bin/"
done

# A blob: stored under its digest; prints "sha256:HEX SIZE".
blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$work/oci/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" $(cd "$root" && ls)
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -6 "$work/layer.tar"
read -r layer layer_size < <(blob "$work/layer.tar.gz")

cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/usr/local/bin"],"Entrypoint":["/usr/local/bin/flaxd"],"Labels":{"org.opencontainers.image.title":"linen","org.opencontainers.image.version":"$version"}},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created_by":"scripts/build-image.sh"}]}
JSON
read -r config config_size < <(blob "$work/config.json")

cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$layer","size":$layer_size}]}
JSON
read -r manifest manifest_size < <(blob "$work/manifest.json")

cat >"$work/oci/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest","size":$manifest_size,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$version"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
echo "build-image: $name, $(du -h "$out" | cut -f1) archive; flaxd $(du -h "$dist/flaxd" | cut -f1), linen $(du -h "$dist/linen" | cut -f1)" >&2
echo "$out"
