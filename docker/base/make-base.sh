#!/usr/bin/env bash
# Makes the local base image from Debian packages: downloads the .debs of the host's configured
# Debian release (deb.debian.org is a package registry, so this works where no container
# registry can be reached), unpacks them, and lets envbuild archive the tree reproducibly.
#   docker/base/make-base.sh [OUT_DIR [NAME]]
# NAME is debian-runtime (the default; OUT_DIR defaults to out/base/NAME) or debian-python (the
# same packages plus Debian's python3.11, its standard library and the shared libraries its
# extension modules need), each with its environment file docker/base/NAME.toml.
# Prints the base image digest; the same package versions always give the same digest.
set -euo pipefail
export LC_ALL=C  # the glob order below, and so the dpkg status file, is the same in any locale
cd "$(dirname "$0")/../.."
name=${2:-debian-runtime}
out=${1:-out/base/$name}
packages=(libc6 libgcc-s1 libstdc++6 gcc-12-base dash)
case $name in
  debian-runtime) ;;
  # python3.11 and python3 (the -minimal packages: the interpreter and /usr/bin/python3), the
  # standard library, and what its lib-dynload modules link (the link check proves the list);
  # base-passwd for /etc/passwd and /etc/group (Python's getpass, which torch calls, needs root
  # to have a name).
  debian-python)
    packages+=(base-passwd python3-minimal python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
      libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6
      libreadline8 libuuid1 libdb5.3 libnsl2 libtirpc3 libcrypt1 libgssapi-krb5-2 libkrb5-3
      libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1) ;;
  *)
    echo "make-base: unknown base $name (debian-runtime or debian-python)" >&2
    exit 2 ;;
esac
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
# base-passwd's first install copies its master files into /etc, as its postinst does.
if [ -f "$work/rootfs/usr/share/base-passwd/passwd.master" ]; then
  cp "$work/rootfs/usr/share/base-passwd/passwd.master" "$work/rootfs/etc/passwd"
  cp "$work/rootfs/usr/share/base-passwd/group.master" "$work/rootfs/etc/group"
fi
find "$work/rootfs/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete 2>/dev/null || true
find "$work/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
mkdir -p "$work/rootfs/tmp"
ls "$work"/*.deb | xargs -n1 basename >&2
ENVBUILD=${ENVBUILD:-target/release/envbuild}
ROOTFS="$work/rootfs" "$ENVBUILD" build "docker/base/$name.toml" --output "oci:$out"
