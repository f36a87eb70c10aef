#!/usr/bin/env bash
# Push benchmark, side by side in one run (not part of the tests): the default CUDA image from an
# OCI layout to Debian's docker-registry on loopback, envbuild vs `skopeo copy`. After one untimed
# push each, ROUNDS rounds (default 3) taken in turn, each push into a fresh registry after a
# `sync` (so neither inherits the other's dirty pages). Then five incremental pushes, each after a
# one-byte trainer change, with the requests the last made, counted from the registry's access
# log. Last, one 4 GiB layer (random bytes) pushed by each tool once, for peak RSS with a layer
# larger than any chunk. Prints each time, the medians, their ratio, and peak RSS.
# With WAN=RTT_MS[:MB_PER_S] (e.g. WAN=40:50), every push goes through a shaping proxy (see
# scripts/registry.sh): the figures an ACR user over the internet would see.
# Usage: [WAN=40:50] [BIG_LAYER=0] scripts/bench-push.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
rounds=${1:-3}
scripts/build-release.sh >&2
work=$(mktemp -d)
export WORK=$work
. scripts/registry.sh
trap 'stop_registry; rm -rf "$work"' EXIT
measure() { # name, command... → appends "name seconds peak_rss_kb" to $work/times
  local name=$1; shift
  sync
  python3 - "$name" "$@" >>"$work/times" <<'PY'
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
layers=$(python3 -c '
import json, sys
d = sys.argv[1]
m = json.load(open(d + "/index.json"))["manifests"][0]["digest"].split(":")[1]
m = json.load(open(f"{d}/blobs/sha256/{m}"))
print(len(m["layers"]), "layers,", sum(l["size"] for l in m["layers"]), "bytes, the largest", max(l["size"] for l in m["layers"]))' "$work/oci")
echo "# image: $layers" >&2
# One untimed push each first (the first timed round was seen 40 % slower than the rest).
start_registry "$work/r"
target/release/envbuild push "oci:$work/oci" "$reg/envbuild/cuda:1" >/dev/null 2>&1
start_registry "$work/r"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:latest" "docker://$reg/skopeo/cuda:1" >/dev/null 2>&1
for r in $(seq "$rounds"); do
  echo "# round $r of $rounds" >&2
  start_registry "$work/r"
  measure envbuild-push target/release/envbuild push "oci:$work/oci" "$reg/envbuild/cuda:1"
  start_registry "$work/r"
  measure skopeo-copy skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:latest" "docker://$reg/skopeo/cuda:1"
done
# Incremental: the last skopeo-filled registry is replaced by one holding envbuild's push.
start_registry "$work/r"
target/release/envbuild push "oci:$work/oci" "$reg/envbuild/cuda:1" >/dev/null 2>&1
# Five of them, each after its own one-byte change (a single push through the proxy varies by
# tens of milliseconds); the requests are counted for the last.
for i in 2 3 4 5 6; do
  printf '\x01' >> "$CARGO_TARGET_DIR/release/trainer"
  target/release/envbuild build environments/mnist-cuda.toml --output "oci:$work/oci" >/dev/null 2>&1
  sleep 0.5
  before=$(wc -l <"$work/r/access.log")
  measure envbuild-incremental target/release/envbuild push --json "oci:$work/oci" "$reg/envbuild/cuda:$i"
done
sleep 0.5
requests=$(tail -n +"$((before + 1))" "$work/r/access.log" | grep -oE '"(GET|HEAD|POST|PUT|PATCH|DELETE) ' | tr -d '" ' | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')
summary=$(cat "$work/envbuild-incremental.out")
# One 4 GiB layer (BIG_LAYER=0 skips it: through a capped WAN it is minutes of one stream).
if [ "${BIG_LAYER:-1}" != 0 ]; then
python3 - "$work/big" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]
os.makedirs(f"{d}/blobs/sha256")
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(f"{d}/blobs/sha256/{h}", "wb").write(b)
    return {"digest": "sha256:" + h, "size": len(b)}
h, n = hashlib.sha256(), 0
with open(f"{d}/layer", "wb") as f:
    for _ in range(256):
        b = os.urandom(16 << 20)
        h.update(b); f.write(b); n += len(b)
os.rename(f"{d}/layer", f"{d}/blobs/sha256/{h.hexdigest()}")
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + h.hexdigest(), "size": n}
config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}, "config": {}}).encode())
config["mediaType"] = "application/vnd.oci.image.config.v1+json"
m = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]}).encode())
m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
json.dump({"schemaVersion": 2, "manifests": [dict(m, annotations={"org.opencontainers.image.ref.name": "latest"})]}, open(f"{d}/index.json", "w"))
open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
echo "# one 4 GiB layer" >&2
start_registry "$work/r"
measure envbuild-push-4GiB-layer target/release/envbuild push "oci:$work/big" "$reg/envbuild/big:1"
start_registry "$work/r"
measure skopeo-copy-4GiB-layer skopeo copy --quiet --dest-tls-verify=false "oci:$work/big:latest" "docker://$reg/skopeo/big:1"
fi
python3 - "$work/times" "$summary" "$requests" <<'PY'
import json, os, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for name, secs, rss in rows:
    by.setdefault(name, []).append((float(secs), int(rss)))
for name, runs in by.items():
    times = " ".join(f"{s:6.2f}" for s, _ in runs)
    print(f"{name:<22} median {statistics.median(s for s, _ in runs):6.2f} s   runs: {times}   peak RSS {max(r for _, r in runs) / 1024:5.0f} MiB")
e, s = (statistics.median(t for t, _ in by[n]) for n in ("envbuild-push", "skopeo-copy"))
print(f"envbuild / skopeo cold push time (medians): {e / s:.2f}x")
inc = json.loads(sys.argv[2])
print(f"incremental push after a one-byte trainer change: {inc}")
wan = os.environ.get("WAN", "")
if wan:
    rtt, _, rate = wan.partition(":")
    print(f"  through WAN={wan} (round trip {rtt} ms, {rate or 'no'} MB/s cap per connection)")
    if rate:
        transfer = inc["bytes"] / (float(rate) * 1e6)
        took = statistics.median(t for t, _ in by["envbuild-incremental"])
        print(f"  {took:.2f} s = {transfer:.2f} s for its {inc['bytes']} new bytes at the cap + {took - transfer:.2f} s")
print(f"  requests the registry logged for it: {sys.argv[3]}")
PY
