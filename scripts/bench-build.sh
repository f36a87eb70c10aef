#!/usr/bin/env bash
# Build benchmark, side by side in one run (not part of the tests):
#   1. cold `envbuild build` of environments/mnist-cuda.toml (empty cache)
#   2. the compression floor: pigz -6 -p CORES over the same bytes
#   3. `docker build` of docker/Dockerfile (same base loaded into the engine, same files)
#   4. warm rebuild after a one-byte trainer change: envbuild and docker build
#   5. the compressor alone, one core each, on the same 512 MiB of those inputs: envbuild's
#      gzip at its default level 6 and at 4 (builder/examples/compress.rs, both SHA-256s
#      included), pigz -6 -p 1, zstd -3 -T1
# Prints seconds, ratios, MB/s per core, compressed sizes against pigz -6, envbuild's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cores=$(nproc)
scripts/build-release.sh >&2
cargo build --release --locked -q -p envbuild --example compress >&2
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
  # Each step starts with the previous steps' writes on disk, not still being written back.
  sync
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
bytes=$(du -sb --exclude=include --exclude='*.a' "$ENVBUILD_SITE/nvidia" "$ENVBUILD_SITE/torch/lib" | awk '{s+=$1} END {printf "%.0f", s}')
echo "# inputs: $((bytes / 1000000)) MB, $cores cores" >&2

r1=$(measure envbuild-cold target/release/envbuild build environments/mnist-cuda.toml --cache "$work/cache" --output "oci:$work/oci")
r2=$(measure pigz-floor sh -c "tar -C '$ENVBUILD_SITE' --exclude=include --exclude='*.a' --exclude=__pycache__ -cf - nvidia torch/lib | pigz -6 -p $cores > /dev/null")
r3=$(measure docker-build-cold docker build --no-cache -q -t envbuild/bench:cold "$ctx")
printf '\x01' >> "$CARGO_TARGET_DIR/release/trainer"
printf '\x01' >> "$ctx/trainer"
# The same build with other pinned compressors (ko and crane use gzip level 1).
# Their files sit in $work/environments, so that PROJECT_ROOT ($work) has the Cargo.lock the SBOM reads.
mkdir -p "$work/environments"
cp Cargo.lock "$work/Cargo.lock"
for c in gzip:1 zstd:3; do
  sed "s/^platform = .*/&\ncompression = \"$c\"/" environments/mnist-cuda.toml > "$work/environments/cuda-$c.toml"
  sed -i "s|^oci = .*|oci = \"$base\"|" "$work/environments/cuda-$c.toml"
done
rv1=$(measure envbuild-cold-gzip1 target/release/envbuild build "$work/environments/cuda-gzip:1.toml" --cache "$work/cache-g1")
rv2=$(measure envbuild-cold-zstd3 target/release/envbuild build "$work/environments/cuda-zstd:3.toml" --cache "$work/cache-z3")
size() { du -sb "$1/blobs" | cut -f1; }
echo "# compressed blob bytes: gzip (level 6) $(size "$work/cache") gzip-1 $(size "$work/cache-g1") zstd-3 $(size "$work/cache-z3")" >&2
r4=$(measure envbuild-warm target/release/envbuild build environments/mnist-cuda.toml --cache "$work/cache" --output "oci:$work/oci")
r5=$(measure docker-build-warm docker build -q -t envbuild/bench:warm "$ctx")
# The compressor alone, one core each, on the same bytes.
tar -C "$ENVBUILD_SITE" --exclude=include --exclude='*.a' --exclude=__pycache__ -cf - nvidia torch/lib 2>/dev/null | head -c 512M > "$work/sample" || true
sync
rc0=$(measure core-envbuild-gzip4 sh -c "target/release/examples/compress gzip:4 1 < '$work/sample' > '$work/c4.gz'")
rc1=$(measure core-envbuild-gzip6 sh -c "target/release/examples/compress gzip:6 1 < '$work/sample' > '$work/c.gz'")
rc2=$(measure core-pigz6 sh -c "pigz -6 -p 1 < '$work/sample' > '$work/p.gz'")
rc3=$(measure core-zstd3 sh -c "zstd -3 -T1 -q -c < '$work/sample' > '$work/z.zst'")
gunzip -c "$work/c.gz" | cmp - "$work/sample"
gunzip -c "$work/c4.gz" | cmp - "$work/sample"
sizes="$(stat -c %s "$work/sample") $(stat -c %s "$work/c4.gz") $(stat -c %s "$work/c.gz") $(stat -c %s "$work/p.gz") $(stat -c %s "$work/z.zst")"
# Size against pigz -6 on exactly the same bytes: each of the image's own layers (not the
# base's), decompressed and compressed again by pigz.
layers=0 pigz_layers=0
for l in $(python3 -c '
import json, os, sys
d, base = sys.argv[1:]
m = json.load(open(d + "/index.json"))["manifests"][0]["digest"].split(":")[1]
m = json.load(open(f"{d}/blobs/sha256/{m}"))
for l in m["layers"]:
    h = l["digest"].split(":")[1]
    if not os.path.exists(f"{base}/blobs/sha256/{h}"):
        print(h)' "$work/oci" "$base"); do
  layers=$((layers + $(stat -c %s "$work/oci/blobs/sha256/$l")))
  pigz_layers=$((pigz_layers + $(gzip -dc "$work/oci/blobs/sha256/$l" | pigz -6 -p "$cores" | wc -c)))
done
python3 - "$r1" "$r2" "$r3" "$rv1" "$rv2" "$r4" "$r5" "$rc0" "$rc1" "$rc2" "$rc3" <<PY
import sys
sample, c4gz, cgz, pgz, zst = map(int, "$sizes".split())
layers, pigz_layers = $layers, $pigz_layers
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
print(f"compressed size of the image's own layers: envbuild gzip (level 6) {layers} B, pigz -6 of the same tars {pigz_layers} B: {layers / pigz_layers:.4f}x")
mb = sample / 1e6
print(f"one core, {mb:.0f} MB sample: envbuild gzip level 4 {mb / t['core-envbuild-gzip4']:.1f} MB/s ({c4gz / pgz:.4f}x pigz's size), "
      f"level 6 {mb / t['core-envbuild-gzip6']:.1f} MB/s ({cgz / pgz:.4f}x), "
      f"pigz -6 {mb / t['core-pigz6']:.1f} MB/s, zstd -3 {mb / t['core-zstd3']:.1f} MB/s ({zst / pgz:.4f}x pigz's size); "
      f"envbuild/pigz speed: level 4 {t['core-pigz6'] / t['core-envbuild-gzip4']:.2f}x, level 6 {t['core-pigz6'] / t['core-envbuild-gzip6']:.2f}x")
PY
