#!/usr/bin/env bash
# The main job, end to end: set up what is missing, build the default environment (the CUDA
# trainer image), run it on this machine's Docker engine for one short epoch on Fashion-MNIST
# (on the GPU when the engine has the nvidia runtime), and print the accuracy and where the model
# is. Run again, it reuses the image and resumes the finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/build-release.sh
[ -f out/base/debian-runtime/index.json ] || docker/base/make-base.sh >/dev/null
exec target/release/envbuild run --local environments/mnist-cuda.toml \
  --data /usr/share/datasets/fashion-mnist --outputs out/quickstart \
  -- --epochs 1 --limit-train 20000 --resume
