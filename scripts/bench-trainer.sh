#!/usr/bin/env bash
# CPU benchmark: the trainer against the same model in PyTorch eager (same venv, threads, batch,
# epochs, data), side by side in one run, with the throughput ratio. Not part of the tests.
#   scripts/bench-trainer.sh [EPOCHS] [THREADS]    (defaults: 3 epochs, all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
epochs=${1:-3}
threads=${2:-$(nproc)}
data=${DATA:-/usr/share/datasets/fashion-mnist}
batch=${BATCH:-128}
cargo build --release --locked -p trainer >&2  # alone: see scripts/build-release.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "# $epochs epochs, batch $batch, $threads threads, data $data" >&2
target/release/trainer --data "$data" --epochs "$epochs" --threads "$threads" --batch-size "$batch" \
  --device cpu --output "$out/tch" >&2
python -W ignore scripts/torch_baseline.py --data "$data" --epochs "$epochs" --threads "$threads" \
  --batch-size "$batch" --device cpu > "$out/torch.jsonl"
python - "$out/tch/metrics.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
tch = [json.loads(l) for l in open(sys.argv[1])]
pt = [json.loads(l) for l in open(sys.argv[2]) if '"epoch"' in l]
print(f"{'epoch':>5} {'tch img/s':>10} {'torch img/s':>12} {'ratio':>6} {'tch acc':>8} {'torch acc':>9}")
for a, b in zip(tch, pt):
    print(f"{a['epoch']:>5} {a['images_per_second']:>10.0f} {b['images_per_second']:>12.0f} "
          f"{a['images_per_second'] / b['images_per_second']:>5.2f}x {a['test_accuracy']*100:>7.2f}% {b['test_accuracy']*100:>8.2f}%")
ta = sum(m['train_seconds'] for m in tch); tb = sum(m['train_seconds'] for m in pt)
print(f"total training seconds: tch {ta:.1f}, torch {tb:.1f}, throughput ratio {tb/ta:.2f}x")
PY
