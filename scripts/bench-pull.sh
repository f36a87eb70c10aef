#!/usr/bin/env bash
# Pull benchmark, side by side in one run (not part of the tests): an image pushed to Debian's
# docker-registry on loopback, then pulled into an OCI layout by `envbuild pull` (cold cache)
# and by `skopeo copy docker://… oci:…`, ROUNDS rounds (default 3) taken in turn, each after a
# `sync` and with fresh destinations. Prints each time, the medians and their ratio.
# With WAN=RTT_MS[:MB_PER_S] (e.g. WAN=40:50), the pulls go through a shaping proxy (see
# scripts/registry.sh).
# Usage: [WAN=40:50] [PULL_ARGS="--parallel 8"] scripts/bench-pull.sh [ROUNDS] [ENV_FILE]
#   (default: 3 rounds, environments/mnist-cuda.toml; PULL_ARGS: more arguments of envbuild pull)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
rounds=${1:-3}
envfile=${2:-environments/mnist-cuda.toml}
scripts/build-release.sh >&2
work=$(mktemp -d)
. scripts/registry.sh
trap 'stop_registry; rm -rf "$work"' EXIT
# The local Debian base, as the other benchmarks make it (a fresh checkout has none yet).
ENVBUILD=target/release/envbuild docker/base/make-base.sh "$work/base" >/dev/null 2>&1
export ENVBUILD_BASE="$work/base" ENVBUILD_CACHE="$work/build-cache"
start_registry "$work/reg"
ref="$reg/bench/pull:v1"
# The image goes in directly; only the pulls pay the WAN.
target/release/envbuild push "$envfile" "$reg_direct/bench/pull:v1" -q >/dev/null
t() { # name, command... → prints "name seconds"
  local name=$1; shift
  sync
  local s e
  s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
  echo "$name $(python3 -c "print(f'{$e - $s:.2f}')")"
}
for r in $(seq "$rounds"); do
  # shellcheck disable=SC2086 # PULL_ARGS: extra words, e.g. "--parallel 8"
  t envbuild-pull target/release/envbuild pull "$ref" --output "oci:$work/e$r" --cache "$work/cache$r" -q ${PULL_ARGS:-}
  t skopeo-copy skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/s$r:v1"
  rm -rf "$work/e$r" "$work/s$r" "$work/cache$r"
done | tee "$work/times"
python3 - "$work/times" <<'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    name, secs = line.split()
    t.setdefault(name, []).append(float(secs))
e, s = statistics.median(t["envbuild-pull"]), statistics.median(t["skopeo-copy"])
print(f"median: envbuild pull {e:.2f} s, skopeo copy {s:.2f} s; envbuild/skopeo = {e / s:.2f}x")
PY
