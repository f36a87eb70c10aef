#!/usr/bin/env bash
# Build benchmark, side by side in one run (not part of the tests):
#   1. cold `envbuild build` of environments/mnist-cuda.toml (empty cache)
#   2. the compression floor: pigz -6 -p CORES over the same bytes
#   3. `docker build` of docker/Dockerfile (same base loaded into the engine, same files)
#   4. warm rebuild after a one-byte trainer change: envbuild and docker build
# Prints seconds, ratios and envbuild's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cores=$(nproc)
scripts/build-release.sh >&2
work=$(mktemp -d)
trap 'rm -rf "$work"; docker rmi -f envbuild/bench:cold envbuild/bench:warm >/dev/null 2>&1 || true' EXIT
base="$work/base"
ENVBUILD=target/release/envbuild docker/base/make-base.sh "$base" >/dev/null 2>&1
export ENVBUILD_BASE="$base"
mkdir -p "$work/target/release"
cp target/release/trainer "$work/target/release/trainer"
export CARGO_TARGET_DIR="$work/target"

measure() { # name, command... → prints "name seconds peak_rss_kb"
  local name=$1; shift
  python3 - "$name" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[2:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
dt = time.perf_counter() - t
print(f"{sys.argv[1]} {dt:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}

ctx="$work/ctx"
mkdir -p "$ctx/site-packages/torch"
cp -al "$ENVBUILD_SITE/nvidia" "$ctx/site-packages/nvidia" 2>/dev/null || cp -a "$ENVBUILD_SITE/nvidia" "$ctx/site-packages/nvidia"
cp -al "$ENVBUILD_SITE/torch/lib" "$ctx/site-packages/torch/lib" 2>/dev/null || cp -a "$ENVBUILD_SITE/torch/lib" "$ctx/site-packages/torch/lib"
printf '%s\n' 'site-packages/nvidia/*/include' '**/*.a' '**/__pycache__' '**/__init__.py' \
  'site-packages/torch/lib/libtorch_python.so' 'site-packages/torch/lib/libshm*' > "$ctx/.dockerignore"
cp docker/Dockerfile "$ctx/Dockerfile"
cp "$CARGO_TARGET_DIR/release/trainer" "$ctx/trainer"
skopeo copy --quiet "oci:$base:latest" docker-daemon:envbuild/debian-runtime:base
bytes=$(du -sb --exclude=include --exclude='*.a' "$ENVBUILD_SITE/nvidia" "$ENVBUILD_SITE/torch/lib" | awk '{s+=$1} END {printf "%d", s}')
echo "# inputs: $((bytes / 1000000)) MB, $cores cores" >&2

r1=$(measure envbuild-cold target/release/envbuild build environments/mnist-cuda.toml --cache "$work/cache" --output "oci:$work/oci")
r2=$(measure pigz-floor sh -c "tar -C '$ENVBUILD_SITE' --exclude=include --exclude='*.a' --exclude=__pycache__ -cf - nvidia torch/lib | pigz -6 -p $cores > /dev/null")
r3=$(measure docker-build-cold docker build --no-cache -q -t envbuild/bench:cold "$ctx")
printf '\x01' >> "$CARGO_TARGET_DIR/release/trainer"
printf '\x01' >> "$ctx/trainer"
# The same build with other pinned compressors (ko and crane use gzip level 1).
for c in gzip:1 zstd:3; do
  sed "s/^platform = .*/&\ncompression = \"$c\"/" environments/mnist-cuda.toml > "$work/cuda-$c.toml"
  sed -i "s|^oci = .*|oci = \"$base\"|" "$work/cuda-$c.toml"
done
rv1=$(measure envbuild-cold-gzip1 target/release/envbuild build "$work/cuda-gzip:1.toml" --cache "$work/cache-g1")
rv2=$(measure envbuild-cold-zstd3 target/release/envbuild build "$work/cuda-zstd:3.toml" --cache "$work/cache-z3")
size() { du -sb "$1/blobs" | cut -f1; }
echo "# compressed blob bytes: gzip-6 $(size "$work/cache") gzip-1 $(size "$work/cache-g1") zstd-3 $(size "$work/cache-z3")" >&2
r4=$(measure envbuild-warm target/release/envbuild build environments/mnist-cuda.toml --cache "$work/cache" --output "oci:$work/oci")
r5=$(measure docker-build-warm docker build -q -t envbuild/bench:warm "$ctx")
python3 - "$r1" "$r2" "$r3" "$rv1" "$rv2" "$r4" "$r5" <<'PY'
import sys
rows = [a.split() for a in sys.argv[1:]]
t = {r[0]: float(r[1]) for r in rows}
print(f"{'step':<18} {'seconds':>8}")
for r in rows:
    print(f"{r[0]:<18} {float(r[1]):>8.2f}")
print(f"envbuild cold vs docker build: {t['docker-build-cold'] / t['envbuild-cold']:.2f}x faster")
print(f"  with gzip:1: {t['docker-build-cold'] / t['envbuild-cold-gzip1']:.2f}x, with zstd:3: {t['docker-build-cold'] / t['envbuild-cold-zstd3']:.2f}x")
print(f"envbuild cold vs pigz floor:   {t['envbuild-cold'] / t['pigz-floor']:.2f}x the floor")
print(f"warm rebuild: envbuild {t['envbuild-warm']:.2f}s, docker build {t['docker-build-warm']:.2f}s")
print(f"envbuild peak RSS (cold build): {int(rows[0][2]) / 1024:.0f} MiB")
PY
