"""Federated averaging over three hospitals, each a worker process holding its own data shard.

    python examples/make_hospital_data.py            # once: writes data/hospitals/*.pt
    python examples/fedavg_hospitals.py --rounds 20  # or: simsyft run configs/three_hospitals.toml -- python ...

Each round the global model is copied to every hospital, trained there for a few local steps
on data that never leaves the hospital (found by tag with `worker.search`), brought back and
averaged, weighted by shard size. Accuracy is measured at each hospital, remotely: only the
score comes back. Prints per-round accuracy with a progress bar and writes a PNG plot.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib

import torch
import torch.nn.functional as F
from torch import nn, optim

import simsyft as sy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "three_hospitals.toml")


def progress(done: int, total: int, text: str) -> None:
    width = 30
    filled = width * done // total
    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] round {done}/{total} {text}")
    sys.stdout.flush()


def local_accuracy(model: nn.Module, data: sy.PointerTensor, target: sy.PointerTensor) -> float:
    with torch.no_grad():
        return (model(data).argmax(dim=1) == target).float().mean().get().item()


def fedavg(sim: sy.Simulation, rounds: int, local_steps: int, lr: float) -> list[float]:
    shards = {}
    for name, worker in sim.workers.items():
        (data,), (target,) = worker.search("#data"), worker.search("#target")
        shards[name] = (data, target)
    sizes = {name: data.shape[0] for name, (data, _) in shards.items()}
    total = sum(sizes.values())
    features = next(iter(shards.values()))[0].shape[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 2))
    history = []
    for round_number in range(1, rounds + 1):
        trained, scores = {}, {}
        for name, (data, target) in shards.items():
            local = model.copy().send(sim[name])
            opt = optim.SGD(local.parameters(), lr=lr)
            for _ in range(local_steps):
                opt.zero_grad()
                F.cross_entropy(local(data), target).backward()
                opt.step()
            scores[name] = local_accuracy(local, data, target)
            trained[name] = local.get()
        with torch.no_grad():  # average, weighted by how much data each hospital has
            for averaged, *copies in zip(model.parameters(), *(m.parameters() for m in trained.values())):
                averaged.copy_(sum(p * (sizes[n] / total) for n, p in zip(trained, copies)))
        accuracy = sum(scores[n] * sizes[n] for n in scores) / total
        history.append(accuracy)
        progress(round_number, rounds, f"accuracy {accuracy:.3f} "
                 + " ".join(f"{n}={s:.2f}" for n, s in scores.items()))
        print()
    return history


def write_png(path: str, values: list[float], width: int = 480, height: int = 300) -> None:
    """A line plot of `values` in [0, 1], written with zlib alone (matplotlib is used when installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy (weighted over hospitals)")
        ax.set_ylim(0, 1)
        ax.set_title("FedAvg over three hospitals")
        fig.tight_layout()
        fig.savefig(path)
        return
    except ImportError:
        pass
    pixels = [[255] * (width * 3) for _ in range(height)]

    def dot(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[y][3 * x:3 * x + 3] = rgb

    margin = 30
    for x in range(margin, width - 10):
        dot(x, height - margin, (0, 0, 0))
    for y in range(10, height - margin + 1):
        dot(margin, y, (0, 0, 0))
    for level in (0.25, 0.5, 0.75, 1.0):
        y = int(height - margin - level * (height - margin - 10))
        for x in range(margin, width - 10, 4):
            dot(x, y, (200, 200, 200))
    points = [(margin + i * (width - margin - 10) // max(1, len(values) - 1),
               int(height - margin - v * (height - margin - 10))) for i, v in enumerate(values)]
    for (x0, y0), (x1, y1) in zip(points, points[1:] or points):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x, y = x0 + (x1 - x0) * s // steps, y0 + (y1 - y0) * s // steps
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    dot(x + dx, y + dy, (31, 119, 180))
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--plot", default="fedavg_accuracy.png", help="PNG file for the accuracy plot")
    args = parser.parse_args(argv)
    hook = sy.TorchHook(torch)  # noqa: F841 - adds .send to tensors and modules
    if not os.path.exists(os.path.join(ROOT, "data", "hospitals", "hospital_a_data.pt")) and args.config == CONFIG:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from make_hospital_data import make_shards

        make_shards()
    start = time.perf_counter()
    sim = sy.connect() if os.environ.get("SIMSYFT_RUN_DIR") else sy.launch(args.config)
    with sim:
        print(f"{sim!r}: {len(sim.workers)} hospitals, {args.rounds} rounds of {args.local_steps} local steps")
        history = fedavg(sim, args.rounds, args.local_steps, args.lr)
    write_png(args.plot, history)
    print(f"final accuracy {history[-1]:.3f} after {args.rounds} rounds ({time.perf_counter() - start:.1f} s); "
          f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
