#!/usr/bin/env bash
# The main job: set up what is missing, build the trainer, and train it on Fashion-MNIST for one
# short epoch. Run again, it resumes the finished run and only prints its result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/build-release.sh
out=out/quickstart
target/release/trainer --data /usr/share/datasets/fashion-mnist --epochs 1 --limit-train 20000 \
  --output "$out" --resume
echo "metrics: $out/metrics.jsonl  summary: $out/summary.json"
