"""Multi-pointers (PySyft 0.2's `x.send(bob, alice)`, `sy.combine_pointers`), each body run
against the in-process and the real-process backend."""

from __future__ import annotations

import copy
import gc
import re

import pytest
import torch

import simsyft as sy

PTR = r"\[PointerTensor \| me:(\d+) -> {}:(\d+)\]"


def same(remote, local):
    assert isinstance(remote, torch.Tensor), f"expected a tensor, got {type(remote).__name__}"
    assert remote.dtype == local.dtype and remote.shape == local.shape
    assert torch.equal(remote, local), (remote, local)


# -- building one ----------------------------------------------------------------

def test_send_to_several_workers(bob, alice):
    x = torch.tensor([1, 2, 3]).send(bob, alice)
    assert isinstance(x, sy.MultiPointerTensor)
    assert list(x.child) == ["bob", "alice"]
    assert all(type(p) is sy.PointerTensor for p in x.child.values())
    assert x.child["bob"].location is bob and x.child["alice"].location is alice
    assert x.locations == [bob, alice]
    # one copy on each worker, under the id its pointer names
    same(bob._objects[x.child["bob"].id_at_location], torch.tensor([1, 2, 3]))
    same(alice._objects[x.child["alice"].id_at_location], torch.tensor([1, 2, 3]))
    assert x.shape == torch.Size([3]) and x.dtype == torch.int64 and x.dim() == 1 and len(x) == 3
    # a list of workers too; one worker gives a plain pointer, as before
    y = torch.ones(2).send([alice, bob])
    assert isinstance(y, sy.MultiPointerTensor) and list(y.child) == ["alice", "bob"]
    assert type(torch.ones(2).send(bob)) is sy.PointerTensor
    assert type(torch.ones(2).send([bob])) is sy.PointerTensor


def test_repr_as_pysyft_printed_it(bob, alice):
    x = torch.tensor([1, 2]).send(bob, alice)
    bob_ptr, alice_ptr = x.child["bob"], x.child["alice"]
    expected = ("(Wrapper)>[MultiPointerTensor]"
                f"\n\t-> [PointerTensor | me:{bob_ptr.id} -> bob:{bob_ptr.id_at_location}]"
                f"\n\t-> [PointerTensor | me:{alice_ptr.id} -> alice:{alice_ptr.id_at_location}]")
    assert repr(x) == str(x) == expected
    assert re.fullmatch(r"\(Wrapper\)>\[MultiPointerTensor\]\n\t-> " + PTR.format("bob") + r"\n\t-> "
                        + PTR.format("alice"), repr(x + 1))
    # combine_pointers kept the wrappers it was given, and showed them
    p1, p2 = torch.tensor([1]).send(bob), torch.tensor([2]).send(alice)
    assert repr(sy.combine_pointers(p1, p2)) == f"(Wrapper)>[MultiPointerTensor]\n\t-> {p1!r}\n\t-> {p2!r}"


def test_combine_pointers_and_combine(bob, alice):
    p1, p2 = torch.tensor([1, 2]).send(bob), torch.tensor([10, 20]).send(alice)
    m = sy.combine_pointers(p1, p2)
    assert m.child == {"bob": p1, "alice": p2} and m.child["bob"] is p1
    # PySyft's p1.combine(p2) put the others first, self last
    c = p1.combine(p2)
    assert list(c.child) == ["alice", "bob"] and c.child["bob"] is p1 and c.child["alice"] is p2
    same(c.get(sum_results=True), torch.tensor([11, 22]))
    with pytest.raises(sy.ObjectNotFoundError):  # the same pointers: fetched through c
        p1.get()


# -- ops ----------------------------------------------------------------------------

def test_ops_run_on_every_worker(bob, alice):
    local = torch.tensor([[1.0, -2.0], [3.0, 4.5]])
    x = local.send(bob, alice)
    for op in (lambda t: t + 1, lambda t: 2 * t - t, lambda t: t @ t, lambda t: t[0], lambda t: -t,
               lambda t: torch.add(t, t, alpha=2), lambda t: torch.nn.functional.relu(t), lambda t: t.sum(dim=0),
               lambda t: t.T, lambda t: t.to(torch.float64), lambda t: (t > 0), lambda t: t.view(-1)):
        result = op(x)
        assert isinstance(result, sy.MultiPointerTensor) and list(result.child) == ["bob", "alice"]
        assert result.shape == op(local).shape and result.dtype == op(local).dtype
        fetched = result.get()
        assert len(fetched) == 2
        for value in fetched:
            same(value, op(local))


def test_ops_pair_by_worker(bob, alice):
    a = torch.tensor([1, 2]).send(bob, alice)
    b = sy.combine_pointers(torch.tensor([100, 200]).send(alice), torch.tensor([10, 20]).send(bob))  # other order
    c = a + b
    assert list(c.child) == ["bob", "alice"]
    bob_value, alice_value = c.get()
    same(bob_value, torch.tensor([11, 22]))
    same(alice_value, torch.tensor([101, 202]))


def test_get_sum_results_and_dtypes(bob, alice):
    for dtype in (torch.int64, torch.float32, torch.float64, torch.int32, torch.bool):
        local = torch.tensor([1, 0, 3]).to(dtype)
        x = local.send(bob, alice)
        values = x.get()
        assert [v.dtype for v in values] == [dtype, dtype]
        for v in values:
            same(v, local)
        y = local.send(bob, alice)
        same(y.get(sum_results=True), sum([local, local]))  # PySyft: Python's sum, so 0 + bool gives int64
    with pytest.raises(sy.ObjectNotFoundError, match="already fetched"):
        x.get()
    with pytest.raises(sy.ObjectNotFoundError, match="already fetched"):
        x + 1


def test_in_place_ops_keep_the_multi_pointer(bob, alice):
    x = torch.tensor([1.0, 2.0]).send(bob, alice)
    children = dict(x.child)
    y = x.add_(1)
    assert y is x and x.child == children
    x += 1
    x[0] = 10.0
    x.mul_(torch.tensor([2.0, 2.0]).send(bob, alice))
    for value in x.get():
        same(value, torch.tensor([20.0, 8.0]))


def test_multi_output_ops_and_values(bob, alice):
    x = torch.tensor([[3, 1], [2, 5]]).send(bob, alice)
    values, indices = torch.max(x, dim=0)
    assert isinstance(values, sy.MultiPointerTensor) and isinstance(indices, sy.MultiPointerTensor)
    assert type(torch.max(x, dim=0)).__name__ == "max"
    same(values.get()[1], torch.tensor([3, 5]))
    parts = torch.split(x, 1)
    assert type(parts) is tuple and len(parts) == 2 and all(isinstance(p, sy.MultiPointerTensor) for p in parts)
    # Python values every worker agrees on come back as the value
    assert x.is_contiguous() is True and torch.equal(x, x) is True and x.numel() == 4
    # ... and where the workers disagree, an error instead of one worker's answer
    m = sy.combine_pointers(torch.tensor([1]).send(bob), torch.tensor([1, 2]).send(alice))
    with pytest.raises(ValueError, match=r"shape differs .*bob: torch.Size\(\[1\]\), alice: torch.Size\(\[2\]\)"):
        m.shape
    with pytest.raises(ValueError, match="differs between the workers"):
        m.numel()
    for value, local in zip(m.get(), [torch.tensor([1]), torch.tensor([1, 2])]):
        same(value, local)


def test_remote_autograd(bob, alice):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(bob, alice)
    assert x.requires_grad is True and x.grad is None
    loss = (x * x).sum()
    void = loss.backward()
    assert void.get() == [None, None]
    grad = x.grad
    assert isinstance(grad, sy.MultiPointerTensor)
    for g in grad.get():
        same(g, torch.tensor([2.0, 4.0, 6.0]))
    for value in x.get():
        assert value.requires_grad and value.is_leaf
        same(value.grad, torch.tensor([2.0, 4.0, 6.0]))


def test_pipelined(bob, alice):
    x = torch.arange(4.0).send(bob, alice)
    with sy.pipeline():
        y = (x * 3).add_(1).sum()
    assert y.get(sum_results=True).item() == 2 * (3 * 6 + 4)


# -- freeing ------------------------------------------------------------------------

def test_dropping_the_multi_pointer_frees_every_copy(bob, alice):
    x = torch.ones(3).send(bob, alice)
    y = x * 2
    assert len(bob._objects) == 2 and len(alice._objects) == 2
    del y
    gc.collect()
    assert [len(bob._objects), len(alice._objects)] == [1, 1]
    del x
    assert bob._objects == {} and alice._objects == {}
    # combined pointers the user still holds stay until they go too
    p1 = torch.ones(1).send(bob)
    m = p1.combine(torch.ones(1).send(alice))
    del m
    assert list(bob._objects) == [p1.id_at_location] and alice._objects == {}
    del p1
    assert bob._objects == {}
    # get() empties the workers
    z = torch.ones(2).send(bob, alice)
    z.get()
    assert bob._objects == {} and alice._objects == {}


def test_a_failed_op_frees_what_it_made(bob, alice):
    # m runs on alice first, then on bob (its .child's order)
    m = sy.combine_pointers(torch.tensor([4.0]).send(alice), torch.tensor([2.0, 3.0]).send(bob))
    with pytest.raises(RuntimeError, match="worker 'bob'"):
        m @ torch.ones(1).send(bob, alice)  # bob's (2,) @ (1,) fails after alice's (1,) @ (1,) succeeded
    gc.collect()
    # alice's result was freed with the operand sent for the call: only m's data is left
    assert list(alice._objects) == [m.child["alice"].id_at_location]
    assert list(bob._objects) == [m.child["bob"].id_at_location]


# -- errors -------------------------------------------------------------------------

def test_errors(bob, alice):
    x = torch.tensor([1, 2]).send(bob, alice)
    with pytest.raises(sy.LocationMismatchError, match=r"on \['bob', 'alice'\] and a pointer to 'bob'"):
        x + torch.tensor([1, 2]).send(bob)
    with pytest.raises(sy.LocationMismatchError, match="a local tensor on 'me'; send it to each of them"):
        x + torch.tensor([1, 2])
    with pytest.raises(sy.LocationMismatchError, match="a local tensor"):
        torch.tensor([1, 2]) + x
    with pytest.raises(sy.LocationMismatchError, match="a pointer to 'bob'"):
        torch.add(torch.tensor([1, 2]).send(bob), x)
    # the plain pointer on the left: its own dunder meets the multi-pointer first
    with pytest.raises(sy.LocationMismatchError, match=r"on \['bob', 'alice'\] and a pointer to 'bob'"):
        torch.tensor([1, 2]).send(bob) + x
    with pytest.raises(sy.LocationMismatchError, match="a pointer to 'bob'"):
        torch.tensor([1, 2]).send(bob).mul_(x)
    assert bob.object_count() == 1 and alice.object_count() == 1  # only x's copies: nothing was sent
    with pytest.raises(sy.LocationMismatchError, match=r"on \['bob', 'alice'\] and on \['bob'\]"):
        x + sy.combine_pointers(torch.tensor([1, 2]).send(bob))
    with pytest.raises(ValueError, match="worker 'bob' twice"):
        torch.ones(1).send(bob, bob)
    with pytest.raises(ValueError, match="two pointers to worker 'bob'"):
        sy.combine_pointers(torch.ones(1).send(bob), torch.ones(1).send(bob))
    with pytest.raises(TypeError, match="PointerTensors"):
        sy.combine_pointers(torch.ones(1).send(bob), torch.ones(1))
    with pytest.raises(sy.RemoteValueError, match=r"item\(\) needs the tensors' values"):
        x.item()
    with pytest.raises(sy.RemoteValueError):
        bool(x)
    with pytest.raises(AttributeError, match=r"\.locations"):
        x.location
    with pytest.raises(NotImplementedError, match="one worker at a time"):
        torch.nn.Linear(2, 1).send(bob, alice)
    with pytest.raises(NotImplementedError, match="one worker at a time"):
        torch.nn.Linear(2, 1).send([bob, alice])
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(x)
    with pytest.raises(TypeError, match="needs a VirtualWorker"):
        torch.ones(1).send(bob, "alice")
    # nothing was left behind by the failed calls
    gc.collect()
    assert list(bob._objects) == [x.child["bob"].id_at_location]
    assert list(alice._objects) == [x.child["alice"].id_at_location]
