#!/usr/bin/env bash
# Datastore upload benchmark, side by side in one run (not part of the tests): a folder of NFILES
# small files and one file, each SIZE_MB in all (default 1024 MB and 10,000 files), uploaded to
# the Blob Storage stand-in (tests/src/blob.rs over HTTPS on loopback) by envbuild's client
# (`envbuild::blob`, default settings: 8 MiB blocks, 8 requests at once; the driver is
# builder/examples/blob-upload.rs, the same library call as `run --azure`) and by curl, one
# sequential Put Blob per file over one reused connection (`curl -K`, one config line pair per
# file). Each tool writes its own prefix in a fresh container. Prints wall time (envbuild's split
# into hashing, which content addressing needs and a plain PUT does not, and uploading), MB/s,
# the requests and bytes the stand-in received, peak RSS (/usr/bin/time -v), and the ratio; then
# envbuild's second upload of the same folder (what it sends when everything is there).
# The stand-in is the debug build of the tests crate: its speed bounds both tools alike, and on
# loopback one stream is as fast as several. With WAN=RTT_MS[:MB_PER_S] (e.g. WAN=40:50) both
# tools go through a shaping proxy (tests/src/bin/wan-proxy.rs): every round trip pays RTT_MS and
# every connection is capped at MB_PER_S, as an upload to a storage account over the internet is.
# Usage: [WAN=40:50] scripts/bench-upload.sh [SIZE_MB] [NFILES]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
size_mb=${1:-1024}
nfiles=${2:-10000}
command -v /usr/bin/time >/dev/null || { echo "bench-upload: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench-upload: needs curl" >&2; exit 1; }
echo "# building the driver (release) and the stand-in" >&2
cargo build --release --locked -q -p envbuild --example blob-upload
cargo build --locked -q -p envbuild-e2e --bin blob-server
if [ -n "${WAN:-}" ]; then
  case $WAN in
    *[!0-9:.]* | "" | :* ) echo "WAN=$WAN: want RTT_MS[:MB_PER_S], e.g. 40:50" >&2; exit 2 ;;
  esac
  cargo build --locked -q -p envbuild-e2e --bin wan-proxy
fi
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
server_pid="" wan_pid=""
trap 'for p in $wan_pid $server_pid; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

echo "# data: $nfiles files of $size_mb MB in all, and one file of $size_mb MB" >&2
mkdir -p "$work/folder" "$work/file"
head -c "$((size_mb * 1000000))" /dev/urandom >"$work/file/one.bin"
# The folder: the same amount of other random bytes, cut into NFILES files in 100 directories.
head -c "$((size_mb * 1000000))" /dev/urandom >"$work/all.bin"
(cd "$work/folder" && split -n "$nfiles" -a 5 -d "$work/all.bin" f)
rm "$work/all.bin"
(cd "$work/folder" && for f in f*; do d="d${f:1:3}"; mkdir -p "$d"; mv "$f" "$d/"; done)

"$target/debug/blob-server" "$work/storage" stbench bench >"$work/server.json" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.json" ] && break; sleep 0.1; done
read -r url account_url ca token < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["url"], d["account_url"], d["ca"], d["token"])' "$work/server.json")
stats() { curl -sS --cacert "$ca" "$url/__envbuild/stats"; }
if [ -n "${WAN:-}" ]; then
  rtt=${WAN%%:*} rate=""
  [ "$rtt" = "$WAN" ] || rate=${WAN#*:}
  # shellcheck disable=SC2086 # rate is one word or none
  "$target/debug/wan-proxy" "${url#https://}" "$rtt" $rate >"$work/wan.addr" &
  wan_pid=$!
  for _ in $(seq 100); do [ -s "$work/wan.addr" ] && break; sleep 0.05; done
  account_url="https://$(head -1 "$work/wan.addr")/${account_url##*/}"
  echo "# through WAN=$WAN: round trip $rtt ms, ${rate:-no} MB/s cap per connection" >&2
fi
delta() { # before-json after-json → "requests bytes"
  python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(b["requests"] - a["requests"] - 1, b["bytes"] - a["bytes"])' "$1" "$2"
}
peak() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
wall() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$@"; }
now() { python3 -c 'import time; print(time.monotonic())'; }

envbuild_up() { # case dir prefix → "seconds hash_s upload_s requests bytes rss_kb"
  sync
  local before after t0 t1 out
  before=$(stats); t0=$(now)
  out=$(ENVBUILD_STORAGE_TOKEN="$token" ENVBUILD_CA_FILE="$ca" /usr/bin/time -v -o "$work/time.txt" \
    "$target/release/examples/blob-upload" "$account_url" bench "$3" "$2")
  t1=$(now); after=$(stats)
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print(sys.argv[2], "%.2f" % d["hash_s"], "%.2f" % d["upload_s"], end=" ")' "$out" "$(wall "$t0" "$t1")"
  echo "$(delta "$before" "$after") $(peak "$work/time.txt")"
}

curl_up() { # case dir prefix → "seconds requests bytes rss_kb"
  sync
  local before after t0 t1 cfg=$work/curl.cfg
  : >"$cfg"
  (cd "$2" && find . -type f | sort) | while read -r rel; do
    rel=${rel#./}
    printf 'upload-file = "%s"\nurl = "%s/bench/%s/%s"\noutput = "/dev/null"\n' "$2/$rel" "$account_url" "$3" "$rel" >>"$cfg"
  done
  before=$(stats); t0=$(now)
  /usr/bin/time -v -o "$work/time.txt" curl -sS --fail --cacert "$ca" \
    -H "Authorization: Bearer $token" -H "x-ms-version: 2025-01-05" -H "x-ms-blob-type: BlockBlob" \
    -K "$cfg"
  t1=$(now); after=$(stats)
  echo "$(wall "$t0" "$t1") $(delta "$before" "$after") $(peak "$work/time.txt")"
}

printf '%-8s %-9s %8s %8s %8s %8s %9s %12s %9s\n' case tool seconds hash_s upload_s MB/s requests bytes rss_MB
for case in folder file; do
  read -r es eh eu er eb em < <(envbuild_up "$case" "$work/$case" "envbuild-$case")
  read -r cs cr cb cm < <(curl_up "$case" "$work/$case" "curl-$case")
  mbps() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.0f}")' "$@"; }
  printf '%-8s %-9s %8s %8s %8s %8s %9s %12s %9s\n' "$case" envbuild "$es" "$eh" "$eu" "$(mbps "$eb" "$eu")" "$er" "$eb" "$((em / 1024))"
  printf '%-8s %-9s %8s %8s %8s %8s %9s %12s %9s\n' "$case" curl "$cs" - "$cs" "$(mbps "$cb" "$cs")" "$cr" "$cb" "$((cm / 1024))"
  python3 -c 'import sys; print(f"# {sys.argv[1]}: curl time / envbuild time = {float(sys.argv[2]) / float(sys.argv[3]):.2f} (whole run), {float(sys.argv[2]) / float(sys.argv[4]):.2f} (upload only)")' "$case" "$cs" "$es" "$eu"
done
read -r es eh eu er eb em < <(envbuild_up folder "$work/folder" envbuild-folder)
echo "# envbuild again, folder already there: ${es} s (hashing ${eh} s), $er requests, $eb bytes sent, peak RSS $((em / 1024)) MB"
