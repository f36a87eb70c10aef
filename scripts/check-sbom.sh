#!/usr/bin/env bash
# The SBOM of the default (CUDA) image, checked with the SPDX project's validator: builds
# environments/mnist-cuda.toml (cached after the first time: the full image is 3.8 GB, so this
# is not part of scripts/test.sh), writes its SPDX document, validates it with pyspdxtools and
# prints what it lists — torch, the nvidia-* wheels with their versions, the Debian packages.
#   scripts/check-sbom.sh [OUT_FILE]      (default: out/mnist-cuda.spdx.json)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out=${1:-out/mnist-cuda.spdx.json}
mkdir -p "$(dirname "$out")"
[ -x target/release/envbuild ] || scripts/build-release.sh
[ -d "${ENVBUILD_BASE:-out/base/debian-runtime}" ] || docker/base/make-base.sh >/dev/null
target/release/envbuild build environments/mnist-cuda.toml --sbom "$out" -q >/dev/null
.venv/bin/pyspdxtools -i "$out"
echo "check-sbom: $out is valid SPDX 2.3 (pyspdxtools)"
python3 - "$out" <<'PY'
import collections, json, sys
doc = json.load(open(sys.argv[1]))
kinds = collections.Counter()
for p in doc["packages"]:
    ref = next((r["referenceLocator"] for r in p.get("externalRefs", []) if r["referenceType"] == "purl"), "")
    kind = ref[4:].split("/")[0] if ref.startswith("pkg:") else "other"
    kinds[kind] += 1
    if kind in ("pypi", "deb"):
        print(f"  {kind:5} {p['name']:32} {p.get('versionInfo', ''):24} {p['licenseDeclared']}")
print("check-sbom:", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
PY
