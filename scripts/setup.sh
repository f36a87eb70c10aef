#!/usr/bin/env bash
# Installs what envbuild needs and is missing: Debian packages (the local registry, skopeo,
# umoci, pigz, zstd, Fashion-MNIST, hyperfine, a C++ compiler for tch) and the project-local venv
# with torch 2.11.0 (libtorch for tch 0.24), spdx-tools and mlflow. Idempotent: a second run checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PACKAGES=(ca-certificates g++ python3 python3-venv docker-registry skopeo umoci pigz zstd
  dataset-fashion-mnist hyperfine patchelf binutils)

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
  say "cargo not found: install Rust (rustup, 1.88 or newer) first"
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  say "creating .venv with torch==$TORCH_VERSION (about 4.7 GB with its CUDA wheels)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# The SPDX project's own validator, which the tests run on every SBOM they check.
SPDX_TOOLS_VERSION=0.8.5
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('spdx-tools') != '$SPDX_TOOLS_VERSION')" 2>/dev/null; then
  say "installing spdx-tools==$SPDX_TOOLS_VERSION (pyspdxtools) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "spdx-tools==$SPDX_TOOLS_VERSION"
fi
# A real MLflow tracking server (`mlflow server`), which the tests start to receive the trainer's
# metrics. About 825 MB and a minute to install (it brings pandas, scipy, scikit-learn, pyarrow).
MLFLOW_VERSION=3.17.2
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('mlflow') != '$MLFLOW_VERSION')" 2>/dev/null; then
  say "installing mlflow==$MLFLOW_VERSION (the tracking server the tests start) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
fi
say "ready: Debian packages, .venv with torch $TORCH_VERSION, spdx-tools and mlflow, data in /usr/share/datasets/fashion-mnist"
