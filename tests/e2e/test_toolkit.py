"""Part 3's toolkit (chains, move, remote_get, copy, search) and remote models, on real processes."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import torch
from torch import nn, optim

import simsyft as sy

CHAIN = re.compile(r"\(Wrapper\)>\[PointerTensor \| alice:(\d+) -> bob:(\d+)\]")


@pytest.fixture
def bob(process_bob):
    process_bob.clear_objects()
    yield process_bob
    process_bob.clear_objects()


@pytest.fixture
def alice(process_alice):
    process_alice.clear_objects()
    yield process_alice
    process_alice.clear_objects()


def stores(*workers):
    return [sorted(w._objects) for w in workers]


# -- pointer chains ---------------------------------------------------------------

def test_pointer_to_pointer(bob, alice):
    x_ptr = torch.tensor([1, 2, 3, 4]).send(bob)
    pointer_to_x_ptr = x_ptr.send(alice)
    assert pointer_to_x_ptr.location is alice
    assert list(bob._objects) == [x_ptr.id_at_location]
    (held_id, held), = alice._objects.items()
    assert held_id == pointer_to_x_ptr.id_at_location
    m = CHAIN.fullmatch(repr(held))
    assert m and int(m.group(1)) == held_id and int(m.group(2)) == x_ptr.id_at_location
    del held
    # ops run on bob, through alice, and give pointers to pointers
    doubled = pointer_to_x_ptr * 2
    assert doubled.location is alice and len(bob._objects) == 2 and len(alice._objects) == 2
    inner = doubled.get()
    assert inner.location is bob and inner.owner is sy.local_worker
    assert torch.equal(inner.get(), torch.tensor([2, 4, 6, 8]))
    x_ptr_back = pointer_to_x_ptr.get()
    assert alice._objects == {}
    assert torch.equal(x_ptr_back.get(), torch.tensor([1, 2, 3, 4]))
    assert bob._objects == {}


def test_only_the_newest_pointer_frees(bob, alice):
    x_ptr = torch.tensor([1.0]).send(bob)
    chain = x_ptr.send(alice)
    del x_ptr  # the old pointer no longer owns the data
    alice._objects
    assert len(bob._objects) == 1
    del chain  # the chain does: alice drops its pointer, which frees bob's tensor
    assert alice._objects == {}
    assert bob._objects == {}


def test_chains_through_one_worker(bob):
    p2p2x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(bob).send(bob).send(bob).send(bob)
    assert len(bob._objects) == 5
    assert torch.equal((p2p2x + 1).get().get().get().get().get(), torch.tensor([2, 3, 4, 5, 6]))
    value = p2p2x
    for _ in range(4):
        value = value.get()
        assert isinstance(value, sy.PointerTensor) and value.location is bob
    assert torch.equal(value.get(), torch.tensor([1, 2, 3, 4, 5]))
    assert bob._objects == {}


def test_remote_get_brings_data_to_the_middle_worker(bob, alice):
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    assert x.remote_get() is x
    assert bob._objects == {}
    (value,) = alice._objects.values()
    assert torch.equal(value, torch.tensor([1, 2, 3, 4, 5]))
    assert torch.equal(x.get(), torch.tensor([1, 2, 3, 4, 5]))


def test_chain_op_mixing_locations_is_refused(bob, alice):
    chain = torch.ones(2).send(bob).send(alice)
    local_on_alice = torch.ones(2).send(alice)
    before = stores(bob, alice)
    with pytest.raises(sy.LocationMismatchError, match="'bob' and objects held by 'alice'"):
        chain + local_on_alice
    assert stores(bob, alice) == before


# -- move, copy, clear, search ---------------------------------------------------

def test_move_goes_worker_to_worker(bob, alice):
    data = torch.randn(512, 1024)  # 2 MB: a shared-memory transfer
    x = data.tag("#moved").send(bob)
    sent_before, recv_before = alice.traffic()["bytes_sent"], bob.traffic()["bytes_received"]
    assert x.move(alice) is x
    assert x.location is alice and bob._objects == {}
    assert alice.traffic()["bytes_sent"] - sent_before < 4096  # only a segment name went by
    assert bob.traffic()["bytes_received"] - recv_before < 4096
    assert [p.id_at_location for p in alice.search("#moved")] == [x.id_at_location]
    assert x.move(alice) is x
    assert torch.equal(x.move(sy.local_worker), data)


def test_move_to_a_dead_worker_leaves_the_data(hook, bob):
    doomed = sy.VirtualWorker(hook, id="doomed")
    x = torch.tensor([1.0, 2.0]).send(bob)
    os.kill(doomed.pid, signal.SIGKILL)
    time.sleep(0.1)
    with pytest.raises(sy.WorkerCrashedError, match="'doomed'"):
        x.move(doomed)
    assert x.location is bob and list(bob._objects) == [x.id_at_location]
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))


def test_copy_is_remote_and_independent(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    c = x.copy()
    assert c.location is bob and c.id_at_location != x.id_at_location
    assert torch.equal(c.get(), torch.tensor([1.0, 2.0]))
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))


def test_search_pointers_never_free(bob):
    torch.tensor([1.0]).tag("#a").describe("one").send(bob)  # the sending pointer is dropped at once...
    found = bob.search("#a")
    assert found == [] or len(found) == 1  # ...which frees it (PySyft: the pointer owned it)
    keep = torch.tensor([1.0]).tag("#b").send(bob)
    found = bob.search("#b")
    del found
    assert list(bob._objects) == [keep.id_at_location]


# -- models ------------------------------------------------------------------------

def test_model_send_get_keeps_parameters_and_optimizer(bob):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    reference = nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    params = list(model.parameters())
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    x_ptr, y_ptr = x.send(bob), y.send(bob)
    assert model.send(bob) is model
    assert model.location is bob
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert isinstance(model.weight.data, sy.PointerTensor)
    assert model.weight.shape == torch.Size([1, 3])
    for _ in range(3):
        opt.zero_grad()
        loss = ((model(x_ptr) - y_ptr) ** 2).mean()
        loss.backward()
        assert isinstance(model.weight.grad, sy.PointerTensor)
        opt.step()
        ref_opt.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        ref_opt.step()
    model.get()
    assert type(model.weight) is nn.Parameter and model.location is None
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert torch.allclose(model.bias, reference.bias, atol=1e-6)
    assert torch.allclose(model.weight.grad, reference.weight.grad, atol=1e-6)
    assert len(bob._objects) == 5  # data (2), the last loss, SGD's two momentum buffers (remote state)
    del loss, opt
    assert len(bob._objects) == 2  # only the data: parameters and grads came home


def test_model_move_and_split_model_error(bob, alice):
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    model.send(bob)
    model.move(alice)
    assert model.location is alice and model.weight.data.location is alice
    assert len(bob._objects) == 0
    model.weight.__dict__["_simsyft_pointer"].move(bob)  # split it on purpose
    with pytest.raises(sy.LocationMismatchError, match="'alice'.*'bob'|'bob'.*'alice'"):
        model(torch.ones(1, 2).send(alice))
    with pytest.raises(sy.LocationMismatchError):
        model.location
    model.get()
    assert torch.equal(model.weight.detach(), before)


def test_model_under_no_grad_and_zero_grad(bob):
    model = nn.Linear(2, 2).send(bob)
    x = torch.ones(1, 2).send(bob)
    with torch.no_grad():
        out = model(x)
    assert out.requires_grad is False
    model(x).sum().backward()
    optim.SGD(model.parameters(), lr=1.0).zero_grad()
    assert model.weight.grad is None
    model.get()
