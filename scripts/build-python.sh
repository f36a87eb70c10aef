#!/usr/bin/env bash
# Builds a Python environment (default: the CUDA one, 4 GB of inputs, so not part of
# scripts/test.sh, which builds python-cpu) with the debian-python base made first when missing,
# and prints its digest, its compressed size and how long the build took.
#   scripts/build-python.sh [cpu|cuda] [OUT_DIR]      (default: cuda, out/python-VARIANT)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
variant=${1:-cuda}
case $variant in cpu|cuda) ;; *) echo "build-python: cpu or cuda, not $variant" >&2; exit 2 ;; esac
out=${2:-out/python-$variant}
[ -x target/release/envbuild ] || scripts/build-release.sh
base=${ENVBUILD_PYTHON_BASE:-out/base/debian-python}
[ -f "$base/index.json" ] || docker/base/make-base.sh "$base" debian-python >/dev/null
# Relative paths in an environment file are relative to the file: pass the base absolute.
ENVBUILD_PYTHON_BASE=$(realpath "$base")
export ENVBUILD_PYTHON_BASE
start=$SECONDS
json=$(target/release/envbuild build "environments/python-$variant.toml" --output "oci:$out" --json)
took=$((SECONDS - start))
python3 - "$variant" "$out" "$took" "$json" <<'PY'
import json, sys
variant, out, took, doc = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
size = sum(l["size"] for l in doc["layers"])
print(f"python-{variant}: {doc['digest']} in oci:{out}")
print(f"  {len(doc['layers'])} layers, {size / 1e9:.2f} GB compressed, built in {took} s")
PY
