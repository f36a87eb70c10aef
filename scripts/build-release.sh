#!/usr/bin/env bash
# Release binaries: the trainer on its own, then envbuild. Built in one invocation, Cargo would
# unify the features of shared dependencies and the trainer's bytes (and every image digest)
# would depend on what else was built beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release --locked -p trainer
cargo build --release --locked -p envbuild
