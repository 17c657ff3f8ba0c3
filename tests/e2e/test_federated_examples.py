"""Tutorial Parts 6 and 7 run on worker processes, and print what plain torch computes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(name: str) -> str:
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True, text=True,
                            timeout=240, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def example_cells(name: str) -> list[str]:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        return __import__(name).CELLS
    finally:
        sys.path.pop(0)


def test_part7_federated_dataset_training_equals_plain_torch():
    out = run_example("tutorial_part7.py")
    assert "['bob', 'alice']" in out
    totals = [float(v) for v in re.findall(r"^Total loss (\S+)$", out, re.M)]
    assert len(totals) == 10 and totals[-1] < 0.6 * totals[0]
    assert re.findall(r"Train Epoch: 1 \[0/(\d+) \(0%\)\]", out) == ["6"]  # 3 batches of 32 per worker
    # The same in plain torch: the seed, the data, bob's batches then alice's, one Adam per worker.
    torch.manual_seed(0)
    features = torch.randn(192, 13)
    prices = features @ torch.linspace(-1, 1, 13) + 3.0 + 0.1 * torch.randn(192)
    model = torch.nn.Linear(13, 1)
    optimizers = {w: torch.optim.Adam(params=model.parameters(), lr=1e-2) for w in ("bob", "alice")}
    expected = []
    for _ in range(10):
        total = 0.0
        for worker, first in (("bob", 0), ("alice", 96)):
            for start in range(first, first + 96, 32):
                optimizers[worker].zero_grad()
                loss = ((model(features[start:start + 32]).view(-1) - prices[start:start + 32]) ** 2).mean()
                loss.backward()
                optimizers[worker].step()
                total += float(loss.detach())
        expected.append(total)
    assert torch.allclose(torch.tensor(totals), torch.tensor(expected), rtol=1e-4)


def test_part6_mnist_cnn_learns_and_equals_plain_torch():
    out = run_example("tutorial_part6.py")
    losses = [float(v) for v in re.findall(r"Train Epoch: \d \[\d+/640 \(\d+%\)\]\tLoss: ([\d.]+)", out)]
    accuracy = [int(v) for v in re.findall(r"Accuracy: (\d+)/320", out)]
    assert len(losses) == 6 and losses[-1] < 0.6 * losses[0]
    assert len(accuracy) == 3 and accuracy[-1] > 320 // 2  # chance is 1 in 10
    # The same in plain torch, with the example's own dataset stand-ins and Net, drawing from torch's
    # generator in the same order: federate's DataLoader, Net(), then per epoch bob's sampler,
    # alice's sampler and the shuffled test loader.
    cells = example_cells("tutorial_part6")
    namespace: dict = {}
    for number in (0, 1, 5):  # imports, the stand-ins, Net
        exec(cells[number], namespace)
    datasets, transforms = namespace["datasets"], namespace["transforms"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    torch.manual_seed(1)
    parts = list(DataLoader(datasets.MNIST("", train=True, transform=tf), batch_size=320))
    test_loader = DataLoader(datasets.MNIST("", train=False, transform=tf), batch_size=1000, shuffle=True)
    model = namespace["Net"]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected_losses, expected_accuracy = [], []
    for _ in range(3):
        batch_idx = 0
        for data, target in parts:
            for indices in BatchSampler(RandomSampler(range(len(data))), 64, False):
                optimizer.zero_grad()
                loss = F.nll_loss(model(data[indices]), target[indices])
                loss.backward()
                optimizer.step()
                if batch_idx % 5 == 0:
                    expected_losses.append(loss.item())
                batch_idx += 1
        with torch.no_grad():
            expected_accuracy.append(sum(int((model(d).argmax(1) == t).sum()) for d, t in test_loader))
    assert torch.allclose(torch.tensor(losses), torch.tensor(expected_losses), atol=1e-5, rtol=1e-3)
    assert accuracy == expected_accuracy
