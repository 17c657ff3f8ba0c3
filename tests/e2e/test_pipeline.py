"""Pipelined mode: same results as synchronous calls; failures surface at the next synchronising call."""

from __future__ import annotations

import pytest
import torch

import simsyft as sy


def test_pipelined_results_equal_synchronous(bob):
    torch.manual_seed(0)
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    pa, pb = a.send(bob), b.send(bob)
    with sy.pipeline():
        c = (pa @ pb).relu() * 2 + 1
        d = c.sum(dim=0)
        e = torch.cat([c, c]).t()
        assert c.shape == torch.Size([4, 2]) and c.dtype == torch.float32  # predicted, no round trip
        assert e.shape == torch.Size([2, 8])
        f = pa[pa > 0]  # data-dependent shape: runs synchronously, still correct
    assert torch.equal(d.get(), ((a @ b).relu() * 2 + 1).sum(dim=0))
    assert torch.equal(e.get(), torch.cat([(a @ b).relu() * 2 + 1] * 2).t())
    assert torch.equal(f.get(), a[a > 0])


def test_pipelined_dependent_chain_and_gc(bob):
    x = torch.zeros(3).send(bob)
    one = torch.ones(3).send(bob)
    with sy.pipeline():
        for _ in range(500):
            x = x + one
    assert torch.equal(x.get(), torch.full((3,), 500.0))
    assert len(bob._objects) == 1  # every intermediate was freed; only `one` is left


def test_pipelined_inplace_keeps_the_pointer(bob):
    x = torch.zeros(2, 3).send(bob)
    with sy.pipeline():
        y = x.add_(1)
        x.unsqueeze_(0)
    assert y is x and x.shape == torch.Size([1, 2, 3])
    assert torch.equal(x.get(), torch.ones(1, 2, 3))


def test_pipelined_failure_is_raised_at_the_next_synchronising_call(bob):
    x = torch.ones(3).send(bob)
    missing = torch.ones(3).send(bob)
    bob.clear_objects()  # the worker forgets both; the pointers do not know yet
    with pytest.raises(sy.ObjectNotFoundError, match="has no object"):
        with sy.pipeline():
            y = x * 2          # returns at once: the failure is only known to the worker
            z = y + missing
            assert z.shape == torch.Size([3])
    # and the connection is usable afterwards
    assert torch.equal((torch.ones(2).send(bob) * 3).get(), torch.full((2,), 3.0))


def test_predictable_error_is_raised_immediately(bob):
    x = torch.ones(3).send(bob)
    with sy.pipeline():
        with pytest.raises(RuntimeError, match="must match the size"):
            x + torch.ones(4).send(bob)


def test_pipelined_autograd(bob):
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(bob)
    with sy.pipeline():
        loss = (w * w).sum()
        assert loss.requires_grad
        loss.backward()
        with torch.no_grad():
            frozen = w * 2
        assert frozen.requires_grad is False
    assert torch.equal(w.grad.get(), torch.tensor([2.0, 4.0, 6.0]))
