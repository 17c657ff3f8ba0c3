"""A party killed in the middle of a comparison (issue 16): the client gets a clear error naming
it, and the party still alive keeps no dealt tensor and no half-made result in its store."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import simsyft as sy
from simsyft.backends.local import LocalBackend
from simsyft.simulation import Simulation
from simsyft.smpc import compare
from simsyft.worker.spec import WorkerConfig


@pytest.mark.parametrize("after_steps", [0, 3])
def test_a_party_killed_during_a_comparison_raises_and_leaves_nothing(monkeypatch, after_steps):
    sy.TorchHook(torch)
    sim = Simulation(LocalBackend(f"smpc-cmp-crash-{after_steps}"))
    try:
        for name in ("bob", "alice", "james"):
            sim.backend.start(WorkerConfig(name))
        bob, alice, james = sim["bob"], sim["alice"], sim["james"]
        x = torch.tensor([1, -2, 3]).share(bob, alice, crypto_provider=james)
        kept = set(bob._objects)  # x's share: what bob holds before the comparison's protocol
        steps = []
        real = compare.messages.Step

        def step_then_kill(*args):
            steps.append(args)
            if len(steps) == after_steps + 1:
                os.kill(alice.pid, signal.SIGKILL)
            return real(*args)
        monkeypatch.setattr(compare.messages, "Step", step_then_kill)
        with pytest.raises(sy.WorkerCrashedError, match="alice"):
            compare.msb(x)  # the protocol of x < 0
        monkeypatch.setattr(compare.messages, "Step", real)
        assert set(bob._objects) <= kept  # no dealt tensor, no result share left behind
        assert james._objects == {}
    finally:
        sim.shutdown()
