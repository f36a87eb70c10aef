#!/usr/bin/env bash
# For a CUDA host whose Docker engine has the nvidia runtime (nvidia-container-toolkit): runs the
# default CUDA image through `envbuild run --local --gpus all` and checks that the trainer in the
# container reports the CUDA device. Needs what scripts/setup.sh installs and the base image.
#   scripts/gpu-run-local.sh [OUTPUTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out=${1:-out/gpu-run-local}
[ -f out/base/debian-runtime/index.json ] || docker/base/make-base.sh >/dev/null
docker info --format '{{json .Runtimes}}' | grep -q nvidia || {
  echo "gpu-run-local: the Docker engine has no nvidia runtime (install nvidia-container-toolkit)" >&2
  exit 2
}
target/release/envbuild run --local environments/mnist-cuda.toml --gpus all --outputs "$out" \
  -- --epochs 1 --device cuda
device=$(python3 -c 'import json,sys;print(json.loads(open(sys.argv[1]).readline())["device"])' \
  "$out/metrics.jsonl")
echo "trainer device in the container: $device"
[ "${device%%:*}" = cuda ]
