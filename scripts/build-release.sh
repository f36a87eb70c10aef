#!/usr/bin/env bash
# Release binaries: the trainer on its own, then envbuild (or only the packages named:
# `scripts/build-release.sh trainer`). Built in one invocation, Cargo would unify the features of
# shared dependencies and the trainer's bytes (and every image digest) would depend on what else
# was built beside it. (trainer/Cargo.toml turns on, for the dependencies it shares, the features
# the whole workspace uses, so that the test build reuses what this compiled; a test keeps the
# two alike.) Never through scripts/test.sh's clippy wrapper, which compiles with other MIR
# optimisations (and so other bytes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
packages=("$@")
((${#packages[@]})) || packages=(trainer envbuild)
for package in "${packages[@]}"; do
  cargo build --release --locked -p "$package"
done
