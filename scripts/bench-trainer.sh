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
# The trainer twice: fp32 (the eager model's own precision) and auto (bf16 convolutions where
# the CPU has native bfloat16, which the first log line names).
for p in fp32 auto; do
  target/release/trainer --data "$data" --epochs "$epochs" --threads "$threads" --batch-size "$batch" \
    --device cpu --precision "$p" --output "$out/tch-$p" >&2
done
python -W ignore scripts/torch_baseline.py --data "$data" --epochs "$epochs" --threads "$threads" \
  --batch-size "$batch" --device cpu > "$out/torch.jsonl"
python - "$out/tch-fp32" "$out/tch-auto" "$out/torch.jsonl" <<'PY'
import json, sys
runs = [(json.load(open(d + "/summary.json"))["precision"], [json.loads(l) for l in open(d + "/metrics.jsonl")])
        for d in sys.argv[1:3]]
pt = [json.loads(l) for l in open(sys.argv[3]) if '"epoch"' in l]
tb = sum(m['train_seconds'] for m in pt)
for precision, tch in runs:
    print(f"trainer, {precision} convolutions, against PyTorch eager fp32:")
    print(f"{'epoch':>5} {'tch img/s':>10} {'torch img/s':>12} {'ratio':>6} {'tch acc':>8} {'torch acc':>9}")
    for a, b in zip(tch, pt):
        print(f"{a['epoch']:>5} {a['images_per_second']:>10.0f} {b['images_per_second']:>12.0f} "
              f"{a['images_per_second'] / b['images_per_second']:>5.2f}x {a['test_accuracy']*100:>7.2f}% {b['test_accuracy']*100:>8.2f}%")
    ta = sum(m['train_seconds'] for m in tch)
    print(f"total training seconds: tch {ta:.1f}, torch {tb:.1f}, throughput ratio {tb/ta:.2f}x, "
          f"accuracy after {len(tch)} epochs {tch[-1]['test_accuracy']*100 - pt[-1]['test_accuracy']*100:+.2f} points")
PY
