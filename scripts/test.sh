#!/usr/bin/env bash
# Every test: formatting, lints, and the whole workspace's unit and integration tests (real
# libtorch, the real Docker engine and registry where a test needs them). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo fmt --all -- --check
# The module graph of builder/src: fails on an import circle or a CLI command file importing another.
python3 scripts/modgraph.py >/dev/null
cargo clippy --locked --workspace --all-targets -- -D warnings
# The end-to-end tests put the release binaries into images; build them first.
scripts/build-release.sh
cargo test --locked --workspace
