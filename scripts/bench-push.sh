#!/usr/bin/env bash
# Push benchmark, side by side in one run (not part of the tests): the default CUDA image from an
# OCI layout to Debian's docker-registry on loopback, envbuild vs `skopeo copy` (each into its own
# fresh registry), then an incremental push after a one-byte trainer change. Prints seconds,
# the ratio, blobs sent, and envbuild's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/build-release.sh >&2
work=$(mktemp -d)
export WORK=$work
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
start_registry() { # dir → prints host:port
  local dir=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir/data"
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "127.0.0.1:$port"
}
measure() { # name, command... → "name seconds peak_rss_kb"
  local name=$1; shift
  python3 - "$name" "$@" <<'PY'
import os, resource, subprocess, sys, time
t = time.perf_counter()
out = subprocess.run(sys.argv[2:], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
print(f"{sys.argv[1]} {time.perf_counter() - t:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
open(os.path.join(os.environ["WORK"], sys.argv[1] + ".out"), "wb").write(out)
PY
}
base="$work/base"
ENVBUILD=target/release/envbuild docker/base/make-base.sh "$base" >/dev/null 2>&1
export ENVBUILD_BASE="$base" ENVBUILD_CACHE="$work/cache"
mkdir -p "$work/target/release"
cp target/release/trainer "$work/target/release/trainer"
export CARGO_TARGET_DIR="$work/target"
target/release/envbuild build environments/mnist-cuda.toml --output "oci:$work/oci" >/dev/null 2>&1
echo "# image: $(du -sb "$work/oci/blobs" | cut -f1) bytes of blobs" >&2
r1=$(start_registry "$work/r1"); r2=$(start_registry "$work/r2")
a=$(measure envbuild-push target/release/envbuild push "oci:$work/oci" "$r1/envbuild/cuda:1")
b=$(measure skopeo-copy skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:latest" "docker://$r2/skopeo/cuda:1")
printf '\x01' >> "$CARGO_TARGET_DIR/release/trainer"
target/release/envbuild build environments/mnist-cuda.toml --output "oci:$work/oci" >/dev/null 2>&1
c=$(measure envbuild-incremental target/release/envbuild push --json "oci:$work/oci" "$r1/envbuild/cuda:2")
summary=$(head -1 "$work/envbuild-incremental.out")
python3 - "$a" "$b" "$c" "$summary" <<'PY'
import json, sys
rows = [a.split() for a in sys.argv[1:4]]
t = {r[0]: float(r[1]) for r in rows}
for r in rows:
    print(f"{r[0]:<22} {float(r[1]):>8.2f} s   peak RSS {int(r[2]) / 1024:>6.0f} MiB")
print(f"envbuild / skopeo cold push time: {t['envbuild-push'] / t['skopeo-copy']:.2f}x")
print(f"incremental push after a one-byte trainer change: {json.loads(sys.argv[4])}")
PY
