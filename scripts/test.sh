#!/usr/bin/env bash
# Every test: formatting, lints, and the whole workspace's unit and integration tests (real
# libtorch, the real Docker engine and registry where a test needs them). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's start on stderr, so a slow CI run shows where its minutes went.
step() { echo "test.sh: $1 at $(date +%T) (${SECONDS}s)" >&2; }
step setup
scripts/setup.sh
. scripts/env.sh
step "fmt, module graph"
cargo fmt --all -- --check
# The module graph of builder/src: fails on an import circle or a CLI command file importing another.
python3 scripts/modgraph.py >/dev/null
step clippy
cargo clippy --locked --workspace --all-targets -- -D warnings
# The end-to-end tests put the release binaries into images; build them first.
step "release build"
scripts/build-release.sh
step tests
cargo test --locked --workspace
step done
