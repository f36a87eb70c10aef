"""Fashion-MNIST (or MNIST) with plain PyTorch: a small CNN, argparse flags, per-epoch metrics.

    python3 mnist.py --data DIR --output DIR [--epochs 2] [--lr 0.001] [--batch-size 64]
                     [--seed 0] [--threads 1] [--limit-train N] [--limit-test N]

DIR holds the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), raw or gzipped, as Debian's
dataset-fashion-mnist ships them in /usr/share/datasets/fashion-mnist. Writes to --output:
model.pt (the state_dict, torch.save), metrics.jsonl (one line per epoch) and summary.json.

Everything is seeded and the algorithms are deterministic, so two runs with the same flags, the
same thread count and the same CPU kind write the same model.pt, byte for byte. Nothing here is
specific to envbuild: it runs as it is under `python3`, in `envbuild run --local` and as an Azure
ML command job.
"""

import argparse
import gzip
import json
import os
import random
import struct
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fail(message):
    """Stops with one clear line on stderr and exit status 2 (as argparse does for bad flags)."""
    print(f"mnist.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_idx(data_dir, name, magic, dims):
    """Reads one IDX file (NAME or NAME.gz in data_dir) into a uint8 array of `dims` dimensions."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            break
    else:
        fail(f"{name} not found in {data_dir} (looked for {name} and {name}.gz)")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        fail(f"cannot read {path}: {e}")
    header = 4 + 4 * dims
    if len(raw) < header:
        fail(f"{path}: {len(raw)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        fail(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}; is this an IDX file?")
    shape = struct.unpack(">" + "I" * dims, raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        fail(f"{path}: the header promises {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(data_dir, split, limit):
    """Images as float32 in [0, 1] of shape (N, 1, H, W) and labels as int64, the first `limit`."""
    images_name, labels_name = FILES[split]
    images = read_idx(data_dir, images_name, 0x00000803, 3)
    labels = read_idx(data_dir, labels_name, 0x00000801, 1)
    if len(images) != len(labels):
        fail(f"{images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if int(y.max()) > 9:
        fail(f"{labels_name}: label {int(y.max())} is out of range 0..=9")
    return x, y


class Net(nn.Module):
    """Two 3x3 convolutions with max-pooling, then two linear layers: 99% of its time is in
    the first linear layer's small matrix products, so one CPU thread trains an epoch quickly."""

    def __init__(self, side):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)
        self.conv2 = nn.Conv2d(16, 32, 3)
        pooled = ((side - 2) // 2 - 2) // 2  # 28 -> 26 -> 13 -> 11 -> 5
        flat = 32 * pooled * pooled
        self.fc1 = nn.Linear(flat, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def seed_everything(seed, threads):
    """The same seed, thread count and CPU kind give the same bytes: Python's, NumPy's and
    torch's generators are seeded, nondeterministic algorithms raise, and one fixed intra-op
    thread count fixes the order of every floating-point sum."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def evaluate(model, x, y, batch_size, device):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            out = model(xb)
            loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    return loss / len(x), correct / len(x)


class Tracker:
    """MLflow when it is installed and a tracking URI is set (Azure ML sets one); else nothing."""

    def __init__(self, args):
        self.mlflow = None
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                import mlflow
            except ImportError:
                print("note: MLFLOW_TRACKING_URI is set but mlflow is not installed; metrics stay in metrics.jsonl")
                return
            self.mlflow = mlflow
            mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("data", "output")})

    def log(self, metrics, step):
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a small CNN on Fashion-MNIST (IDX files).")
    p.add_argument("--data", required=True, help="folder with the four IDX files (raw or .gz)")
    p.add_argument("--output", required=True, help="folder for model.pt, metrics.jsonl, summary.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (fixed, for identical results)")
    p.add_argument("--limit-train", type=int, default=0, help="train on the first N images only (0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="test on the first N images only (0: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0:
        p.error("--lr must be positive")
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: not a directory")
    return args


def main(argv=None):
    args = parse_args(argv)
    seed_everything(args.seed, args.threads)
    device = torch.device(args.device)
    x_train, y_train = load_split(args.data, "train", args.limit_train)
    x_test, y_test = load_split(args.data, "test", args.limit_test)
    if x_train.shape[2] != x_train.shape[3] or x_train.shape[2:] != x_test.shape[2:]:
        fail(f"expected square images of one size, got train {tuple(x_train.shape[2:])} and test {tuple(x_test.shape[2:])}")
    os.makedirs(args.output, exist_ok=True)
    print(
        f"torch {torch.__version__} on {device} ({args.threads} thread(s)); "
        f"{len(x_train)} training and {len(x_test)} test images from {args.data}",
        flush=True,
    )

    model = Net(x_train.shape[2]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    tracker = Tracker(args)
    history = []
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        train_loss = total / len(x_train)
        test_loss, test_accuracy = evaluate(model, x_test, y_test, 1000, device)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "seconds": round(time.monotonic() - started, 3),
        }
        history.append(row)
        tracker.log({k: row[k] for k in ("train_loss", "test_loss", "test_accuracy")}, epoch)
        print(
            f"epoch {epoch}/{args.epochs}  train_loss {train_loss:.4f}  test_loss {test_loss:.4f}  "
            f"test_accuracy {test_accuracy:.4f}  ({row['seconds']:.1f}s)",
            flush=True,
        )

    model_path = os.path.join(args.output, "model.pt")
    torch.save(model.state_dict(), model_path)
    with open(os.path.join(args.output, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    summary = {
        "epochs": args.epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "train_loss": history[-1]["train_loss"],
        "train_images": len(x_train),
        "test_images": len(x_test),
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "device": str(device),
        "torch": torch.__version__,
        "model": "model.pt",
    }
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"test accuracy {summary['test_accuracy']:.4f}; model saved to {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
