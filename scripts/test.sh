#!/usr/bin/env bash
# Every test: formatting, lints, and the whole workspace's unit and integration tests (real
# libtorch, the real Docker engine and registry where a test needs them). CI runs exactly this.
#
# One build serves lint and test: the tests run in the release profile, whose dependencies the
# release binaries have compiled already, and clippy is the compiler of the workspace's own
# crates in that build (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy` itself does it), so no
# dependency is compiled a second time for a check build or a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's start on stderr, so a slow CI run shows where its minutes went.
step() { echo "test.sh: $1 at $(date +%T) (${SECONDS}s)" >&2; }
step setup
scripts/setup.sh compilers
mkdir -p target
# torch (4.7 GB of wheels, about 40 s of one core cold), then the tools (the registry, skopeo, …,
# spdx-tools and mlflow) install while the compiler works. torch-sys's build script is the
# first that needs torch: scripts/await-torch/python, first on PATH for the builds below, holds
# it until torch is there. The tests wait for the tools below.
rm -f target/setup-torch.rc
{
  rc=0
  scripts/setup.sh torch >target/setup-torch.log 2>&1 || rc=$?
  echo $rc >target/setup-torch.rc
  [ $rc = 0 ] && scripts/setup.sh tools
} >target/setup-tools.log 2>&1 &
tools=$!
. scripts/env.sh
export PATH="$PWD/scripts/await-torch:$PATH"
step "fmt, module graph"
cargo fmt --all -- --check
# The module graph of builder/src: fails on an import circle or a CLI command file importing another.
python3 scripts/modgraph.py >/dev/null
# The trainer as images carry it: on its own, without the clippy wrapper (see build-release.sh).
step "release trainer"
scripts/build-release.sh trainer
# `cargo clippy --workspace --all-targets -- -D warnings`, as part of the test build: cargo-clippy
# passes exactly these two variables to clippy-driver (its arguments split by the marker).
step "clippy and test build"
export RUSTC_WORKSPACE_WRAPPER=clippy-driver
export CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# The test targets, and the envbuild binary the end-to-end tests run (what their bins() builds).
cargo build --release --locked --workspace --lib --tests --examples --bin envbuild
if ! wait $tools; then
  cat target/setup-torch.log target/setup-tools.log >&2
  exit 1
fi
# Again, now that the venv is there: its site-packages and libtorch for the tests.
. scripts/env.sh
step tests
cargo test --release --locked --workspace
step done
