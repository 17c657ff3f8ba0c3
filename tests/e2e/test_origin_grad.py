"""`send(..., requires_grad=True)` and `move(..., requires_grad=True)`: a remote backward() continues
where the data came from, as in PySyft 0.2 (each body on the in-process and real-process backends)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import simsyft as sy
from simsyft.testing import in_process_worker


def local_and_remote_grads(fn, values, worker):
    """x.grad after fn(x).backward() locally, and after the same on a copy sent with requires_grad."""
    local = values.clone().requires_grad_(True)
    fn(local).backward()
    x = values.clone().requires_grad_(True)
    fn(x.send(worker, requires_grad=True)).backward()
    return local.grad, x.grad


def test_remote_backward_fills_the_origins_grad(bob):
    values = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]])
    for fn in (lambda t: (t * t).sum(), lambda t: torch.tanh(t @ t.T).mean(), lambda t: t.abs().max()):
        local, remote = local_and_remote_grads(fn, values, bob)
        assert remote is not None and torch.allclose(remote, local)


def test_the_copy_requires_grad_and_the_grad_accumulates(bob):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x_ptr = x.send(bob, requires_grad=True)
    assert x_ptr.requires_grad
    (x_ptr * 2).sum().backward()
    assert torch.equal(x.grad, torch.tensor([2.0, 2.0, 2.0]))
    (x_ptr * x_ptr).sum().backward()  # accumulates, as torch does
    assert torch.equal(x.grad, torch.tensor([4.0, 6.0, 8.0]))
    assert x_ptr.grad.get().tolist() == [4.0, 6.0, 8.0]  # the copy's own grad, on bob


def test_an_origin_that_does_not_require_grad_gets_its_grad(bob):
    x = torch.tensor([1.0, -2.0])
    (x.send(bob, requires_grad=True) * 3).sum().backward()
    assert not x.requires_grad and torch.equal(x.grad, torch.tensor([3.0, 3.0]))


def _split_models():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU()), torch.nn.Linear(6, 2)


def test_split_learning_matches_plain_torch(bob):
    """Segment one here, segment two on bob: two SGD steps give plain torch's parameters."""
    data, target = torch.randn(8, 4), torch.randn(8, 2)
    ref_a, ref_b = _split_models()
    seg_a, seg_b = _split_models()
    opt_ra = torch.optim.SGD(ref_a.parameters(), lr=0.1)
    opt_rb = torch.optim.SGD(ref_b.parameters(), lr=0.1)
    seg_b.send(bob)
    opt_a = torch.optim.SGD(seg_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(seg_b.parameters(), lr=0.1)
    target_ptr = target.send(bob)
    for _ in range(2):
        for opt in (opt_ra, opt_rb, opt_a, opt_b):
            opt.zero_grad()
        torch.nn.functional.mse_loss(ref_b(ref_a(data)), target).backward()
        # one line, as users write it: the pointer to the activations is dropped at once
        loss = torch.nn.functional.mse_loss(seg_b(seg_a(data).send(bob, requires_grad=True)), target_ptr)
        gc.collect()
        loss.backward()
        for p, ref in zip(seg_a.parameters(), ref_a.parameters()):
            assert p.grad is not None and torch.allclose(p.grad, ref.grad, atol=1e-6)
        for opt in (opt_ra, opt_rb, opt_a, opt_b):
            opt.step()
    seg_b.get()
    for p, ref in zip(list(seg_a.parameters()) + list(seg_b.parameters()),
                      list(ref_a.parameters()) + list(ref_b.parameters())):
        assert torch.allclose(p.detach(), ref.detach(), atol=1e-6)


def test_move_with_requires_grad_sends_the_grad_worker_to_worker(bob, alice):
    """bob's segment, then alice's: alice's backward continues on bob, then here."""
    values, w_values = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])
    x, w = values.clone().requires_grad_(True), w_values.clone().requires_grad_(True)
    ((x * w).tanh() * 3).pow(2).sum().backward()
    local_x, local_w = x.grad, w.grad

    x = values.clone().requires_grad_(True)
    w_ptr = w_values.clone().requires_grad_(True).send(bob)
    x_ptr = x.send(bob, requires_grad=True)
    h = (x_ptr * w_ptr).tanh().move(alice, requires_grad=True)
    assert h.location is alice and h.requires_grad
    assert set(bob._objects) == {w_ptr.id_at_location, x_ptr.id_at_location}  # the origin is kept out of sight
    (h * 3).pow(2).sum().backward()
    assert torch.allclose(w_ptr.grad.get(), local_w)
    assert torch.allclose(x.grad, local_x)


def test_copies_moved_both_ways(bob, alice):
    """bob -> alice -> bob: each hop sends its gradient back in turn, without the workers waiting on each other."""
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = (x.send(bob, requires_grad=True) * 2).move(alice, requires_grad=True)
    z = (y * 3).move(bob, requires_grad=True)
    (z * z).sum().backward()
    local = torch.tensor([1.0, -2.0], requires_grad=True)
    ((local * 6) ** 2).sum().backward()
    assert torch.equal(x.grad, local.grad)


def test_integer_tensors_cannot_require_grad(bob, alice):
    with pytest.raises(RuntimeError) as local:
        torch.tensor([1, 2]).requires_grad_(True)
    with pytest.raises(RuntimeError) as sent:
        torch.tensor([1, 2]).send(bob, requires_grad=True)
    assert str(sent.value) == str(local.value)
    assert bob._objects == {}  # nothing was sent
    ptr = torch.tensor([1, 2]).send(bob)
    with pytest.raises(RuntimeError) as moved:
        ptr.move(alice, requires_grad=True)
    assert str(moved.value) == str(local.value)
    assert ptr.location is bob and ptr.get().tolist() == [1, 2]  # nothing moved


def test_an_origin_is_kept_while_its_copy_lives_then_released(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    alive = weakref.ref(x)
    y_ptr = x.send(bob, requires_grad=True) * 2  # the pointer to the copy is gone; the graph keeps the copy
    del x
    gc.collect()
    assert alive() is not None  # y's graph still reaches the copy: its gradient needs the origin
    y_ptr.sum().backward()
    assert alive().grad.tolist() == [2.0, 2.0]
    del y_ptr
    gc.collect()
    other = torch.ones(1, requires_grad=True)
    (other.send(bob, requires_grad=True) * 1).sum().backward()  # the next collection hears of the release
    assert alive() is None and other.grad.tolist() == [1.0]


def test_workers_without_tracked_copies_pay_nothing():
    """Only workers sent or moved a tracked copy are asked for gradients after a backward pass."""
    carol = in_process_worker("carol")
    try:
        w = torch.ones(3, requires_grad=True).send(carol)
        before = carol.traffic()["messages_sent"]
        (w * 2).sum().backward()
        assert carol.traffic()["messages_sent"] - before == 3  # mul, sum, backward: no collection
        x = torch.ones(3, requires_grad=True)
        x_ptr = x.send(carol, requires_grad=True)
        before = carol.traffic()["messages_sent"]
        (x_ptr * 2).sum().backward()
        assert carol.traffic()["messages_sent"] - before == 4  # and one Grads round trip
        assert x.grad.tolist() == [2.0, 2.0, 2.0]
    finally:
        carol.shutdown()


def test_backward_in_pipelined_mode_still_fills_the_grad(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    x_ptr = x.send(bob, requires_grad=True)
    with sy.pipeline():
        loss = (x_ptr * 3).sum()
        loss.backward()  # synchronous where tracked copies live: the gradients come back with it
        assert x.grad.tolist() == [3.0, 3.0]


def test_backward_through_a_pointer_chain_reaches_the_origin(bob, alice):
    """The pass runs on bob, asked through alice's pointer: the client still collects from bob."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y_chain = (x.send(bob, requires_grad=True) * 5).send(alice)
    y_chain.sum().backward()
    assert x.grad.tolist() == [5.0, 5.0]
