#!/usr/bin/env bash
# GPU benchmark, for a CUDA host whose python has torch 2.11 (the device machine's, or .venv):
# runs the trainer binary and the same PyTorch eager model on the GPU, side by side, and prints a
# table (device, per-epoch seconds, images/s, accuracy, ratio).
#   scripts/bench-gpu.sh [TRAINER_BINARY] [DATA_DIR]
# Defaults: target/release/trainer, /usr/share/datasets/fashion-mnist. EPOCHS, BATCH and
# PRECISION (the trainer's --precision: bf16 by default here, fp32 for the eager model's own) override.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/trainer}
data=${2:-/usr/share/datasets/fashion-mnist}
epochs=${EPOCHS:-3}
batch=${BATCH:-256}
precision=${PRECISION:-bf16}
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=.venv/bin/python
torch_lib=$("$py" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
"$bin" --data "$data" --epochs "$epochs" --batch-size "$batch" --device cuda \
  --precision "$precision" --output "$out/tch" >&2
"$py" -W ignore scripts/torch_baseline.py --data "$data" --epochs "$epochs" --batch-size "$batch" \
  --device cuda > "$out/torch.jsonl"
"$py" - "$out/tch/metrics.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
tch = [json.loads(l) for l in open(sys.argv[1])]
pt = [json.loads(l) for l in open(sys.argv[2]) if '"epoch"' in l]
print(f"{'epoch':>5} {'device':>7} {'tch s':>6} {'torch s':>8} {'tch img/s':>10} {'torch img/s':>12} {'ratio':>6} {'tch acc':>8} {'torch acc':>9}")
for a, b in zip(tch, pt):
    print(f"{a['epoch']:>5} {a['device']:>7} {a['train_seconds']:>6.2f} {b['train_seconds']:>8.2f} "
          f"{a['images_per_second']:>10.0f} {b['images_per_second']:>12.0f} "
          f"{a['images_per_second'] / b['images_per_second']:>5.2f}x {a['test_accuracy']*100:>7.2f}% {b['test_accuracy']*100:>8.2f}%")
ta = sum(m['train_seconds'] for m in tch); tb = sum(m['train_seconds'] for m in pt)
print(f"training wall time: tch {ta:.2f}s (final accuracy {tch[-1]['test_accuracy']*100:.2f}%), torch {tb:.2f}s, ratio {tb/ta:.2f}x")
PY
