"""Federated averaging over three hospitals, and what it would cost on a LAN and over a WAN.

    python examples/make_hospital_data.py            # once: writes data/hospitals/*.pt
    python examples/fedavg_hospitals.py --rounds 10  # both profiles; or, one config:
    simsyft run configs/hospitals_wan.toml -- python examples/fedavg_hospitals.py

Each round the global model is copied to every hospital, trained there for a few local steps
on data that never leaves the hospital (found by tag with `worker.search`), brought back and
averaged, weighted by shard size. Accuracy is measured at each hospital, remotely: only the
score comes back. The same training runs on two network profiles (configs/hospitals_lan.toml,
configs/hospitals_wan.toml: slow uplinks, 80 ms away, hospital C's machine 4x slower). Per
round it prints the bytes up and down per hospital, the simulated round time and the accuracy
(docs/network.md: the simulated clock), then plots accuracy against simulated time for both
profiles. The plot needs matplotlib and the progress bar tqdm: pip install -e ".[examples]".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn, optim

import simsyft as sy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = {name: os.path.join(ROOT, "configs", f"hospitals_{name}.toml") for name in ("lan", "wan")}


def local_accuracy(model: nn.Module, data: sy.PointerTensor, target: sy.PointerTensor) -> float:
    with torch.no_grad():
        return (model(data).argmax(dim=1) == target).float().mean().get().item()


def kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def one_round(sim: sy.Simulation, model: nn.Module, shards: dict, sizes: dict, local_steps: int,
              lr: float) -> dict:
    """One FedAvg round, in place on `model`; the hospitals' accuracy before averaging."""
    total = sum(sizes.values())
    local = {name: model.copy().send(sim[name]) for name in shards}
    opts = {name: optim.SGD(local[name].parameters(), lr=lr) for name in shards}
    # Pipelined: the commands to all hospitals go out without waiting for answers, so the
    # hospitals train side by side (each on its own simulated clock), as they would for real.
    with sy.pipeline():
        for name, (data, target) in shards.items():
            for _ in range(local_steps):
                opts[name].zero_grad()
                F.cross_entropy(local[name](data), target).backward()
                opts[name].step()
    scores = {name: local_accuracy(local[name], *shards[name]) for name in shards}
    trained = {name: local[name].get() for name in shards}
    with torch.no_grad():  # average, weighted by how much data each hospital has
        for averaged, *copies in zip(model.parameters(), *(m.parameters() for m in trained.values())):
            averaged.copy_(sum(p * (sizes[n] / total) for n, p in zip(trained, copies)))
    return scores


def fedavg(sim: sy.Simulation, profile: str, rounds: int, local_steps: int, lr: float) -> list[tuple[float, float]]:
    """Train; returns (simulated seconds since the start, accuracy) after each round."""
    shards = {}
    for name, worker in sim.workers.items():
        (data,), (target,) = worker.search("#data"), worker.search("#target")
        shards[name] = (data, target)
    sizes = {name: data.shape[0] for name, (data, _) in shards.items()}
    total = sum(sizes.values())
    features = next(iter(shards.values()))[0].shape[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 2))
    history, elapsed = [], 0.0
    for round_number in progress(range(1, rounds + 1), profile):
        with sim.measure() as m:
            scores = one_round(sim, model, shards, sizes, local_steps, lr)
        elapsed += m.simulated_s
        accuracy = sum(scores[n] * sizes[n] for n in scores) / total
        history.append((elapsed, accuracy))
        links = m.traffic.links
        traffic = "  ".join(
            f"{n} up {kib(links[(n, 'me')].bytes if (n, 'me') in links else 0)} KiB"
            f" down {kib(links[('me', n)].bytes if ('me', n) in links else 0)} KiB" for n in shards)
        say(f"[{profile}] round {round_number}/{rounds} accuracy {accuracy:.3f} "
            f"simulated {m.simulated_s:.2f} s (wall {m.wall_s:.2f} s)  {traffic}")
    return history


def progress(rounds: range, profile: str):
    """tqdm's progress bar over the rounds, when installed (the `examples` extra)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return rounds
    return tqdm(rounds, desc=f"FedAvg {profile}", unit="round", file=sys.stderr, leave=False)


def say(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line, file=sys.stdout)  # above the bar, not through it


def plot(path: str, results: dict[str, list[tuple[float, float]]]) -> str:
    """Accuracy against simulated time, one line per profile; what happened, as a sentence."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return 'no plot: matplotlib is not installed (pip install -e ".[examples]")'
    fig, ax = plt.subplots(figsize=(7, 4))
    for profile, history in results.items():
        ax.plot([t for t, _ in history], [a for _, a in history], marker="o",
                label=f"{profile} ({history[-1][0]:.1f} s for {len(history)} rounds)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("accuracy (weighted over hospitals)")
    ax.set_ylim(0, 1)
    ax.set_title("FedAvg over three hospitals: accuracy against simulated time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="lan,wan", help="comma-separated: lan, wan (default both)")
    parser.add_argument("--config", help="one config file instead of the profiles")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--plot", default="fedavg_accuracy.png", help="PNG file for the accuracy plot")
    args = parser.parse_args(argv)
    hook = sy.TorchHook(torch)  # noqa: F841 - adds .send to tensors and modules
    if not os.path.exists(os.path.join(ROOT, "data", "hospitals", "hospital_a_data.pt")):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from make_hospital_data import make_shards

        make_shards()
    if os.environ.get("SIMSYFT_RUN_DIR"):  # under `simsyft run CONFIG`: that simulation only
        runs = {"attached": None}
    elif args.config:
        runs = {os.path.basename(args.config).removesuffix(".toml"): args.config}
    else:
        names = [p.strip() for p in args.profiles.split(",") if p.strip()]
        unknown = [p for p in names if p not in PROFILES]
        if unknown:
            parser.error(f"unknown profile(s) {unknown}; known: {', '.join(PROFILES)}")
        runs = {name: PROFILES[name] for name in names}
    results = {}
    start = time.perf_counter()
    for profile, config in runs.items():
        sim = sy.connect() if config is None else sy.launch(config)
        with sim:
            print(f"{sim!r}: {len(sim.workers)} hospitals, {args.rounds} rounds of {args.local_steps} local "
                  f"steps, network {sim.network_mode}", flush=True)
            results[profile] = fedavg(sim, profile, args.rounds, args.local_steps, args.lr)
            print(f"[{profile}] traffic of the whole run:\n{sim.traffic()}", flush=True)
    for profile, history in results.items():
        print(f"[{profile}] final accuracy {history[-1][1]:.3f} after {args.rounds} rounds, "
              f"{history[-1][0]:.2f} simulated s")
    print(f"{plot(args.plot, results)} ({time.perf_counter() - start:.1f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
