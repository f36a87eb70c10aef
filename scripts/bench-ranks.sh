#!/usr/bin/env bash
# Data-parallel benchmark on this machine's CPU: images/s of the trainer as 1 process and as 2
# ranks (c10d Gloo, threads split: 2 ranks x T/2 threads against 1 x T), side by side with the
# PyTorch peer (torch.distributed Gloo + DistributedDataParallel, launched by torchrun) on the
# same model, data, batch and threads; scaling efficiency and the ratio to PyTorch. Not a test.
#   scripts/bench-ranks.sh [EPOCHS] [TRAIN_IMAGES]    (defaults: 1 epoch, 20000 images)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
epochs=${1:-1}
limit=${2:-20000}
threads=$(nproc)
half=$(( threads / 2 > 0 ? threads / 2 : 1 ))
data=${DATA:-/usr/share/datasets/fashion-mnist}
batch=${BATCH:-128}
cargo build --release --locked -p trainer >&2  # alone: see scripts/build-release.sh
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
common=(--data "$data" --epochs "$epochs" --batch-size "$batch" --limit-train "$limit" --limit-test 2000 --device cpu)
echo "# $epochs epoch(s) of $limit images, batch $batch (global), $threads cores" >&2

target/release/trainer "${common[@]}" --precision fp32 --threads "$threads" --output "$out/tch1" >&2
p=$(port)
for r in 1 0; do
  WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$p \
    target/release/trainer "${common[@]}" --precision fp32 --threads "$half" --output "$out/tch2" >&2 &
done
wait
python -W ignore scripts/torch_baseline.py --data "$data" --epochs "$epochs" --batch-size "$batch" \
  --limit-train "$limit" --limit-test 2000 --threads "$threads" --device cpu > "$out/torch1.jsonl"
OMP_NUM_THREADS=$half torchrun --standalone --nproc-per-node 2 scripts/torch_baseline.py \
  --data "$data" --epochs "$epochs" --batch-size "$batch" --limit-train "$limit" --limit-test 2000 \
  --threads "$half" --device cpu > "$out/torch2.jsonl" 2> "$out/torchrun.log"

python - "$out" "$threads" "$half" <<'PY'
import json, sys
out, threads, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def tch(d):
    m = [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")]
    return sum(x["train_seconds"] for x in m), m[-1]["test_accuracy"], m
def torch(f):
    m = [json.loads(l) for l in open(f"{out}/{f}") if '"epoch"' in l]
    return sum(x["train_seconds"] for x in m), m[-1]["test_accuracy"], m
rows = [("trainer", "1 x %d threads" % threads, *tch("tch1")), ("trainer", "2 ranks x %d" % half, *tch("tch2")),
        ("PyTorch", "1 x %d threads" % threads, *torch("torch1.jsonl")), ("PyTorch DDP", "2 ranks x %d" % half, *torch("torch2.jsonl"))]
n = sum(x.get("images_per_second", 0) * x["train_seconds"] for x in rows[0][4])
print(f"{'program':<12} {'layout':<16} {'train s':>8} {'images/s':>9} {'accuracy':>9}")
ips = {}
for prog, layout, secs, acc, m in rows:
    ips[(prog, layout)] = n / secs
    print(f"{prog:<12} {layout:<16} {secs:>8.1f} {n / secs:>9.0f} {acc * 100:>8.2f}%")
t1, t2 = n / rows[0][2], n / rows[1][2]
p1, p2 = n / rows[2][2], n / rows[3][2]
print(f"scaling, same cores (2 ranks / 1 process): trainer {t2 / t1:.2f}x, PyTorch {p2 / p1:.2f}x")
print(f"trainer / PyTorch: 1 process {t1 / p1:.2f}x, 2 ranks {t2 / p2:.2f}x")
PY
