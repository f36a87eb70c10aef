#!/usr/bin/env bash
# Installs what envbuild needs and is missing: Debian packages (the local registry, skopeo,
# umoci, pigz, zstd, Fashion-MNIST, hyperfine, a C++ compiler for tch) and the project-local venv
# with torch 2.11.0 (libtorch for tch 0.24), spdx-tools and mlflow. Idempotent: a second run
# checks and returns.
#
#   scripts/setup.sh          everything
#   scripts/setup.sh build    what compiling needs: `compilers`, then `torch`
#   scripts/setup.sh compilers  a C++ compiler and Python (Debian packages)
#   scripts/setup.sh torch    the venv with torch (after `compilers`; scripts/test.sh runs it
#                             while cargo compiles what does not need it)
#   scripts/setup.sh tools    what only the tests and the main job run besides: the registry,
#                             skopeo, umoci, pigz, zstd, the data set, hyperfine, spdx-tools and
#                             mlflow (after `build`; scripts/test.sh runs it while the compiler
#                             works)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
SPDX_TOOLS_VERSION=0.8.5
MLFLOW_VERSION=3.17.2
# What compiling needs, and what only the tests and the main job run (installed by `tools`,
# which scripts/test.sh runs beside the compiler).
BUILD_PACKAGES=(ca-certificates g++ python3 python3-venv)
TOOL_PACKAGES=(docker-registry skopeo umoci pigz zstd dataset-fashion-mnist hyperfine patchelf
  binutils)

say() { printf 'setup: %s\n' "$*" >&2; }

# `pip install NAME==VERSION` into .venv unless that version is there; WHY says what it is for.
pip_pin() {
  local name=$1 version=$2 why=$3
  .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('$name') != '$version')" 2>/dev/null && return
  say "installing $name==$version ($why) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "$name==$version"
}

# `apt-get install` of those of the named Debian packages that are missing.
apt_install() {
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

compilers() {
  if ! command -v cargo >/dev/null; then
    say "cargo not found: install Rust (rustup, 1.88 or newer) first"
    exit 1
  fi
  apt_install "${BUILD_PACKAGES[@]}"
}

torch() {
  if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    say "creating .venv with torch==$TORCH_VERSION (about 4.7 GB with its CUDA wheels)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  fi
}

tools() {
  if [ ! -x .venv/bin/python ]; then
    say "no .venv yet: run scripts/setup.sh (or scripts/setup.sh build) first"
    exit 1
  fi
  apt_install "${TOOL_PACKAGES[@]}"
  # The SPDX project's own validator, which the tests run on every SBOM they check.
  pip_pin spdx-tools "$SPDX_TOOLS_VERSION" "pyspdxtools, the SBOM validator"
  # A real MLflow tracking server (`mlflow server`), which the tests start to receive the
  # trainer's metrics. About 825 MB and a minute (it brings pandas, scipy, scikit-learn, pyarrow).
  pip_pin mlflow "$MLFLOW_VERSION" "the tracking server the tests start"
}

case ${1:-all} in
  all)
    compilers
    torch
    tools
    say "ready: Debian packages, .venv with torch $TORCH_VERSION, spdx-tools and mlflow, data in /usr/share/datasets/fashion-mnist"
    ;;
  build)
    compilers
    torch
    say "ready to compile: g++, .venv with torch $TORCH_VERSION"
    ;;
  compilers) compilers ;;
  torch) torch ;;
  tools) tools ;;
  *)
    say "unknown part '$1': all, build, compilers, torch or tools"
    exit 2
    ;;
esac
