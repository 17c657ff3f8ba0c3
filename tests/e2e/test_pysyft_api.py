"""PySyft 0.2's pointer API beyond Part 1 (issue 12): identities in chains, chain frees, remote_send,
in-place send/get, copies, Parameters, worker conveniences; each on real worker processes (and in-process)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn, optim

import simsyft as sy


def test_pointer_sent_on_keeps_its_id(bob, alice):
    x_ptr = torch.tensor([1, 2, 3, 4]).send(bob)
    pointer_to_x_ptr = x_ptr.send(alice)
    assert pointer_to_x_ptr.id_at_location == x_ptr.id  # alice stores it under x_ptr's own id
    held = alice._objects
    assert list(held) == [x_ptr.id]
    assert repr(held[x_ptr.id]) == f"(Wrapper)>[PointerTensor | alice:{x_ptr.id} -> bob:{x_ptr.id_at_location}]"
    back = pointer_to_x_ptr.get()
    assert repr(back) == f"(Wrapper)>[PointerTensor | me:{x_ptr.id} -> bob:{x_ptr.id_at_location}]"
    assert torch.equal(back.get(), torch.tensor([1, 2, 3, 4]))
    assert bob.object_count() == 0 and alice.object_count() == 0


@pytest.mark.parametrize("how", ["del head", "dropped at once", "op result"])
def test_dropping_the_head_of_a_chain_frees_every_link_at_once(bob, alice, how):
    if how == "del head":
        head = torch.tensor([1, 2, 3]).send(bob).send(alice)
        assert (bob.object_count(), alice.object_count()) == (1, 1)
        del head
    elif how == "dropped at once":
        torch.tensor([1, 2, 3]).send(bob).send(alice)
    else:
        head = torch.tensor([1, 2, 3]).send(bob).send(alice)
        y = head + head
        assert (bob.object_count(), alice.object_count()) == (2, 2)
        del head, y
    # Counted on bob first: nothing else has talked to alice since the drop.
    assert bob.object_count() == 0
    assert alice.object_count() == 0


def test_chain_arithmetic_as_part_3_shows(bob, alice):
    p2p2x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    y = p2p2x + p2p2x
    assert torch.equal(y.get().get(), torch.tensor([2, 4, 6, 8, 10]))
    assert bob.object_count() == 1 and alice.object_count() == 1
    assert torch.equal(p2p2x.get().get(), torch.tensor([1, 2, 3, 4, 5]))
    assert bob.object_count() == 0 and alice.object_count() == 0


def test_remote_send_moves_the_data_and_leaves_a_pointer(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5])
    ptr = x.send(bob)
    same = ptr.remote_send(alice)
    assert same is ptr and ptr.location is bob  # the client's pointer still points at bob
    held = bob._objects[ptr.id_at_location]
    assert isinstance(held, sy.PointerTensor) and held.location.id == "alice"
    assert list(alice._objects.values())[0].tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(ptr.get().get(), x)
    assert bob.object_count() == 0 and alice.object_count() == 0


def test_remote_get_on_a_plain_tensor_is_refused(bob):
    ptr = torch.tensor([1]).send(bob)
    with pytest.raises(sy.exceptions.InvalidTensorForRemoteGet, match="chain of pointer tensors"):
        ptr.remote_get()
    assert torch.equal(ptr.get(), torch.tensor([1]))  # nothing changed


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("end", ["move", "drop", "get"])
def test_trained_model_leaves_nothing_behind(bob, alice, steps, end):
    """Regression: after two optimizer steps a sent model's parameters stayed on the worker forever."""
    data, target = torch.randn(4, 2).send(bob), torch.randn(4, 1).send(bob)
    model = nn.Linear(2, 1).send(bob)
    opt = optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(data) - target) ** 2).sum()
        loss.backward()
        opt.step()
        loss = loss.get().data
    if end == "move":
        model.move(alice)
        assert alice.object_count() == 2
    elif end == "get":
        model.get()
    del model, opt
    gc.collect()
    assert bob.object_count() == 2  # data and target only
    assert alice.object_count() == 0


def test_send_and_get_in_place(bob):
    t = torch.tensor([1.0, 2.0, 3.0])
    same = t.send_(bob)
    assert same is t and t.location is bob and bob.object_count() == 1
    assert "PointerTensor" in repr(t)
    assert torch.equal((t * 2).get(), torch.tensor([2.0, 4.0, 6.0]))
    assert t.get_() is t and type(t) is torch.Tensor
    assert torch.equal(t, torch.tensor([1.0, 2.0, 3.0])) and bob.object_count() == 0


def test_parameter_sent_in_place_keeps_its_optimizer(bob):
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.5)
    p.send_(bob)
    assert isinstance(p, nn.Parameter)
    (p * p).sum().backward()
    opt.step()
    p.get_()
    assert type(p) is nn.Parameter
    assert torch.allclose(p.data, torch.tensor([0.0, 0.0])) and torch.equal(p.grad, torch.tensor([2.0, -4.0]))


def test_local_copy():
    t = torch.rand(5, 3)
    copied = t.copy()
    assert copied is not t and torch.equal(copied, t)


def test_remote_model_copy_stays_on_the_worker(bob):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).send(bob)
    before = bob.object_count()
    twin = model.copy()
    assert bob.object_count() == 2 * before and twin.location is bob
    with torch.no_grad():
        model[0].weight.add_(torch.ones(2, 2).send(bob))
    twin.get()
    model.get()
    assert torch.equal(model[0].weight.data, twin[0].weight.data + 1)
    assert twin[0].weight.is_leaf and twin[0].weight.requires_grad


def test_parameter_of_a_pointer(bob):
    p = nn.Parameter(torch.tensor([1.0, 2.0]).send(bob))
    assert isinstance(p, nn.Parameter) and p.requires_grad and p.location is bob
    (p * p).sum().backward()
    assert torch.equal(p.grad.get(), torch.tensor([2.0, 4.0]))
    frozen = nn.Parameter(torch.ones(2).send(bob), requires_grad=False)
    assert not frozen.requires_grad


def test_unreached_parameters_come_back_with_zero_grad(bob):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(2, 1), nn.Linear(2, 1)

        def forward(self, x):
            return self.used(x)

    model = Two().send(bob)
    model(torch.ones(3, 2).send(bob)).sum().backward()
    model.get()
    assert torch.equal(model.unused.weight.grad, torch.zeros(1, 2))
    assert model.used.weight.grad is not None and model.used.weight.grad.abs().sum() > 0
    fresh = Two().send(bob).get()
    assert fresh.used.weight.grad is None  # no backward at all: None, as in torch


def test_worker_data_tags_and_tensors_alias(hook, process_bob):
    bob = process_bob.clear_objects()
    t1, t2 = torch.tensor([1, 2]).tag("#a"), torch.tensor([3.0]).tag("#a", "#b")
    w = sy.VirtualWorker(hook, id="bob", data=[t1, t2])  # the running bob, given data
    gc.collect()
    assert w is bob
    assert [v.tolist() for v in bob._tensors.values()] == [[1, 2], [3.0]]
    assert len(bob.search("#a")) == 2 and len(bob.search("#b")) == 1
    grid = sy.PrivateGridNetwork(bob)
    found = grid.search("#b")
    assert list(found) == [bob.id] and found[bob.id][0].get().tolist() == [3.0]
    assert grid.search("#nothing") == {}
    bob.clear_objects()


def test_remote_factories(bob):
    z = bob.remote.torch.zeros(3)
    assert z.location is bob and torch.equal(z.get(), torch.zeros(3))
    r = bob.remote.torch.arange(4, dtype=torch.float64)
    assert r.dtype == torch.float64 and torch.equal(r.get(), torch.arange(4, dtype=torch.float64))
    with pytest.raises(sy.OpNotAllowedError, match="torch.save"):
        bob.remote.torch.save(torch.zeros(1), "f")
