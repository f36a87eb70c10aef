#!/usr/bin/env bash
# Makes the local base image from Debian packages: downloads the .debs of the host's configured
# Debian release (deb.debian.org is a package registry, so this works where no container
# registry can be reached), unpacks them, and lets envbuild archive the tree reproducibly.
#   docker/base/make-base.sh [OUT_DIR]     (default: out/base/debian-runtime)
# Prints the base image digest; the same package versions always give the same digest.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/base/debian-runtime}
packages=(libc6 libgcc-s1 libstdc++6 gcc-12-base dash)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "${packages[@]}" >/dev/null 2>&1) || {
  echo "make-base: apt-get download ${packages[*]} failed (is a Debian mirror reachable?)" >&2
  exit 1
}
mkdir -p "$work/rootfs/var/lib/dpkg"
# Unpacked as dpkg would, and registered as dpkg would: the status database lists each package
# (what an SBOM reads), and each package's copyright file stays (its licenses); the rest of
# /usr/share/doc goes.
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$work/rootfs"
  { dpkg-deb -f "$deb" | sed '1a Status: install ok installed'; echo; } >> "$work/rootfs/var/lib/dpkg/status"
done
find "$work/rootfs/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete 2>/dev/null || true
find "$work/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
mkdir -p "$work/rootfs/tmp"
ls "$work"/*.deb | xargs -n1 basename >&2
ENVBUILD=${ENVBUILD:-target/release/envbuild}
ROOTFS="$work/rootfs" "$ENVBUILD" build docker/base/debian-runtime.toml --output "oci:$out"
