"""No silent wrong answers (issue 12): torch code handed a pointer gives the local result or a
clear error. Each body runs on the in-process and the real-process backend.

tests/property/test_torch_functions.py checks every torch function; these are the cases the
issue names, end to end.
"""

from __future__ import annotations

import numpy
import pytest
import torch

import simsyft as sy
from simsyft.errors import NotATensorError


def leaf_with_grad() -> torch.Tensor:
    t = torch.tensor([3.0, -4.0, 12.0], requires_grad=True)
    t.grad = torch.tensor([6.0, -8.0, 24.0])  # norm 26
    return t


def test_clip_grad_norm_on_a_pointer_raises_naming_function_and_worker(bob):
    ptr = leaf_with_grad().send(bob)
    with pytest.raises(NotATensorError, match=r"clip_grad_norm_ iterated a pointer .* on worker 'bob'") as info:
        torch.nn.utils.clip_grad_norm_(ptr, 2)
    assert isinstance(info.value, TypeError)
    # Nothing was clipped behind the error: the grad is still the one sent.
    assert torch.equal(ptr.get().grad, torch.tensor([6.0, -8.0, 24.0]))


@pytest.mark.parametrize("call", [
    lambda p: torch.nn.utils.clip_grad_value_(p, 1.0),
    lambda p: torch.nn.utils.get_total_norm(p),
    lambda p: torch.nn.utils.parameters_to_vector(p),
], ids=["clip_grad_value_", "get_total_norm", "parameters_to_vector"])
def test_torch_utilities_taking_a_tensor_or_tensors_raise(bob, call):
    ptr = leaf_with_grad().send(bob)
    with pytest.raises(NotATensorError, match="on worker 'bob'"):
        call(ptr)
    assert torch.equal(ptr.get().grad, torch.tensor([6.0, -8.0, 24.0]))


@pytest.mark.parametrize("call", [
    lambda p: torch.autograd.grad(p.sum(), p),
    lambda p: torch.autograd.backward(p.sum()),
], ids=["autograd.grad", "autograd.backward"])
def test_autograd_functions_reach_the_allowlist(bob, call):
    """These dispatch through __torch_function__; the worker refuses them (use ptr.backward())."""
    ptr = leaf_with_grad().send(bob)
    with pytest.raises(sy.OpNotAllowedError, match="raised on worker 'bob'"):
        call(ptr)
    assert torch.equal(ptr.get().grad, torch.tensor([6.0, -8.0, 24.0]))


def test_clip_grad_norm_on_a_list_of_pointers_raises_too(bob):
    """Decided: not run remotely. torch.nn.utils never reaches __torch_function__, and its
    C helper (_group_tensors_by_device_and_dtype) refuses what is not a torch.Tensor."""
    ptr = leaf_with_grad().send(bob)
    with pytest.raises(TypeError, match="PointerTensor .* -> bob:"):
        torch.nn.utils.clip_grad_norm_([ptr], 2)
    assert torch.equal(ptr.get().grad, torch.tensor([6.0, -8.0, 24.0]))


def test_the_same_clipping_written_with_ops_runs_remotely(bob):
    """What to do instead: the ops clip_grad_norm_ is made of run on the worker, same result."""
    local = leaf_with_grad()
    expected = torch.nn.utils.clip_grad_norm_(local, 2)
    ptr = leaf_with_grad().send(bob)
    norm = torch.linalg.vector_norm(ptr.grad, 2)
    ptr.grad.mul_(torch.clamp(2 / (norm + 1e-6), max=1.0))
    assert torch.equal(norm.get(), expected)
    assert torch.allclose(ptr.get().grad, local.grad)


def test_item_raises_a_runtime_error_with_todays_message(bob):
    ptr = torch.tensor([3.0]).send(bob)
    with pytest.raises(RuntimeError) as info:
        ptr.item()
    assert isinstance(info.value, sy.RemoteValueError) and isinstance(info.value, ValueError)
    assert str(info.value) == ("item() needs the tensor's value, which lives on worker 'bob': "
                               "call .get() first (e.g. ptr.get().item())")
    for attempt in (ptr.tolist, ptr.numpy, lambda: bool(ptr), lambda: float(ptr), lambda: int(ptr),
                    lambda: complex(ptr), lambda: [0, 1][ptr]):
        with pytest.raises(RuntimeError, match=r"on worker 'bob': call \.get\(\) first"):
            attempt()
    assert torch.equal(ptr.get(), torch.tensor([3.0]))  # refusing changed nothing


def test_conversions_to_local_arrays_raise(bob):
    for data in (torch.zeros(0, 2), torch.ones(2, 2)):
        ptr = data.send(bob)
        for convert in (numpy.asarray, torch.tensor, torch.as_tensor, torch.asarray):
            with pytest.raises(sy.RemoteValueError, match="on worker 'bob': call .get"):
                convert(ptr)


def test_user_code_still_iterates_rows(bob):
    t = torch.arange(6.0).reshape(3, 2)
    ptr = t.send(bob)
    rows = list(ptr)
    assert len(rows) == 3 and all(isinstance(r, sy.PointerTensor) for r in rows)
    assert all(torch.equal(r.get(), l) for r, l in zip(rows, t))
    assert torch.equal(reversed(ptr).get(), reversed(t))  # torch's reversed() is flip(0)
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(torch.tensor(1.0).send(bob))
