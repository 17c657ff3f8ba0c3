"""Encrypted inference (tutorial Part 11, without the MNIST download): a small CNN classifies
images that stay secret, with a model that stays secret too.

Synthetic 8 x 8 images of three classes (a horizontal bar, a vertical bar, a diagonal, at random
places, in noise) train a CNN in plain torch first: conv2d, relu, max_pool2d, conv2d, relu,
avg_pool2d, linear. The model's owner then encodes and shares it between bob and alice
(`model.fix_precision().share(...)`), the client shares its test images the same way, and the
forward pass plus argmax run on the shares, james dealing the randomness; only the predicted
labels are revealed. The script prints the agreement with plaintext inference on the same model,
and the time and bytes per image from the traffic ledger, on this machine (LAN: processes on one
host) and under a WAN profile (50 ms, 100 Mbit/s between every two workers, a simulated clock).

    python examples/encrypted_inference.py [--images 100] [--wan]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import simsyft as sy

WAN = """[simulation]
name = "inference_wan"

[network]
mode = "account"
latency_ms = 50
bandwidth_mbps = 100
seed = 0
"""


def images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, 8, 8, generator=gen) * 0.3
    for k in range(n):
        r, c = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        if labels[k] == 0:
            x[k, 0, r, 1:7] += 1.0
        elif labels[k] == 1:
            x[k, 0, 1:7, c] += 1.0
        else:
            x[k, 0, range(1, 7), range(1, 7)] += 1.0
    return x, labels


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)  # 8x8 -> 6x6
        self.conv2 = nn.Conv2d(4, 8, 2)  # 3x3 -> 2x2
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # -> 3x3
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)  # -> 1x1
        return self.fc(x.view(-1, 8))


def train(gen: torch.Generator) -> CNN:
    torch.manual_seed(0)
    model = CNN()
    x, y = images(600, gen)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def secure_predict(model: CNN, x: torch.Tensor, bob, alice, james) -> tuple[torch.Tensor, float, int, float | None]:
    """Labels from the shared model on the shared images; wall seconds, bytes, simulated seconds."""
    shared_model = _copy(model).fix_precision().share(bob, alice, crypto_provider=james)  # by the model owner
    start = time.perf_counter()
    with sy.measure() as m:
        data = x.fix_precision().share(bob, alice, crypto_provider=james)  # by the client
        labels = shared_model(data).argmax(dim=1).get().float_precision().long()
    wall = time.perf_counter() - start
    return labels, wall, sum(t.bytes for t in m.traffic.links.values()), m.simulated_s


def _copy(model: CNN) -> CNN:
    fresh = CNN()
    fresh.load_state_dict(model.state_dict())
    return fresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--wan", action="store_true", help="also run under the WAN profile")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(1)
    model = train(gen)
    test_x, test_y = images(args.images, gen)
    with torch.no_grad():
        plain = model(test_x).argmax(dim=1)
    print(f"plaintext accuracy on {args.images} synthetic test images: {(plain == test_y).float().mean():.3f}")
    hook = sy.TorchHook(torch)
    profiles = [("LAN", None)] + ([("WAN", WAN)] if args.wan else [])
    for label, config in profiles:
        with tempfile.TemporaryDirectory() as d:
            sim = None
            if config is not None:
                path = os.path.join(d, "wan.toml")
                with open(path, "w") as f:
                    f.write(config + "".join(f"\n[workers.{n}]\nthreads = 1\n" for n in ("bob", "alice", "james")))
                sim = sy.launch(path)
            bob, alice, james = (sy.VirtualWorker(hook, id=n) for n in ("bob", "alice", "james"))
            secure, wall, sent, simulated = secure_predict(model, test_x, bob, alice, james)
            agree = (secure == plain).float().mean().item()
            print(f"{label}: secure labels equal plaintext inference for {agree:.3f} of the images")
            print(f"{label}: {wall / args.images * 1000:.1f} ms and {sent / args.images / 1e3:.1f} kB per image "
                  f"(batch of {args.images}, 2 parties)"
                  + (f"; simulated network time {simulated / args.images * 1000:.1f} ms per image, "
                     f"{simulated:.2f} s per batch" if config is not None else ""))
            for worker in (bob, alice, james):
                worker.shutdown()
            if sim is not None:
                sim.shutdown()
    sy.shutdown()


if __name__ == "__main__":
    main()
