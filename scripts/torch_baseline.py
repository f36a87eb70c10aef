#!/usr/bin/env python3
"""The trainer's model and loop in PyTorch eager: the peer the benchmarks compare against.

Same network (pytorch/examples MNIST shape), same Adam, same normalisation (train-set mean/std),
same batch size, data on the device, batches as index selections. Prints one JSON line per epoch
and a final JSON summary, in the trainer's metrics format.

Launched with WORLD_SIZE > 1 (torchrun, or the variables set by hand) it is the data-parallel
peer: torch.distributed with Gloo and DistributedDataParallel, each rank taking its contiguous
share of every global batch (as the trainer shards), rank 0 alone printing.
"""
import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.distributed as dist


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, data[4:4 + 4 * ndims])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndims:]), dtype=torch.uint8)
    return t.reshape(dims)


def find(d, name):
    for cand in (name, name + ".gz"):
        p = os.path.join(d, cand)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{name} not found in {d}")


class Net(nn.Module):
    def __init__(self, rows, cols):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(64 * ((rows - 4) // 2) * ((cols - 4) // 2), 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = F.dropout(x, 0.25, self.training)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, 0.5, self.training)
        return self.fc2(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-test", type=int)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)

    xs = read_idx(find(a.data, "train-images-idx3-ubyte"))[: a.limit_train]
    ys = read_idx(find(a.data, "train-labels-idx1-ubyte"))[: a.limit_train]
    tx = read_idx(find(a.data, "t10k-images-idx3-ubyte"))[: a.limit_test]
    ty = read_idx(find(a.data, "t10k-labels-idx1-ubyte"))[: a.limit_test]
    mean = xs.double().div(255).mean().item()
    std = xs.double().div(255).std(unbiased=False).item()
    norm = lambda t: ((t.to(dev).float() / 255 - mean) / std).unsqueeze(1)
    xs, tx = norm(xs), norm(tx)
    ys, ty = ys.to(dev).long(), ty.to(dev).long()
    rows, cols = xs.shape[2], xs.shape[3]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = Net(rows, cols).to(dev)
    if world > 1:
        dist.init_process_group("gloo")
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n = xs.shape[0]
    total = 0.0
    for epoch in range(1, a.epochs + 1):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=dev)
        loss_sum = torch.zeros((), device=dev)
        for s in range(0, n, a.batch_size):
            idx = perm[s : s + a.batch_size]
            if world > 1:
                k = idx.numel()
                idx = idx[k * rank // world : k * (rank + 1) // world]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * idx.numel()
        if world > 1:
            dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / n
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
        total += train_seconds
        model.eval()
        with torch.no_grad():
            tl = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            for s in range(0, tx.shape[0], 1000):
                logits = model(tx[s : s + 1000])
                tl += F.cross_entropy(logits, ty[s : s + 1000], reduction="sum")
                correct += (logits.argmax(1) == ty[s : s + 1000]).sum()
        m = dict(
            epoch=epoch,
            train_loss=train_loss,
            test_loss=tl.item() / tx.shape[0],
            test_accuracy=correct.item() / tx.shape[0],
            seconds=time.perf_counter() - start,
            train_seconds=train_seconds,
            images_per_second=n / train_seconds,
            device=str(dev),
        )
        if rank == 0:
            print(json.dumps(m), flush=True)
    if rank == 0:
        print(json.dumps(dict(summary=True, test_accuracy=m["test_accuracy"], train_seconds=total)), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
