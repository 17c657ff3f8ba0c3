"""Comparing remote with local: `assert_same` (bitwise), `outcome`, `assert_same_outcome`.

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..pointer import PointerTensor



def _bits(t: torch.Tensor) -> torch.Tensor:
    # A fresh buffer: a one-element tensor with stride 0 counts as contiguous but cannot be viewed as bytes.
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1))
    return flat.view(torch.uint8)


def assert_same(remote: Any, local: Any, what: str = "result", *, grad: bool = True) -> None:
    """`remote` (a fetched tensor) is exactly `local`: dtype, shape, every bit of every
    element (NaN payloads and -0.0 included), `requires_grad`, and, with `grad`, the
    `.grad` of a leaf (or of a tensor that retains its grad), compared the same way.

    >>> assert_same(torch.tensor([1.0, -0.0]).send(bob).get(), torch.tensor([1.0, -0.0]))
    """
    if local is None:
        assert remote is None, f"{what}: expected None, got {remote!r}"
        return
    assert isinstance(remote, torch.Tensor), f"{what}: expected a tensor, got {type(remote).__name__}: {remote!r}"
    assert remote.dtype == local.dtype, f"{what}: dtype {remote.dtype} != local {local.dtype}"
    assert remote.shape == local.shape, f"{what}: shape {tuple(remote.shape)} != local {tuple(local.shape)}"
    if not torch.equal(_bits(remote), _bits(local)):
        diff = (_bits(remote).view(-1, local.element_size()) != _bits(local).view(-1, local.element_size())).any(1)
        first = int(diff.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {local.numel()} elements differ bitwise, first at flat index {first}: "
            f"remote {remote.detach().reshape(-1)[first].item()!r} vs local {local.detach().reshape(-1)[first].item()!r}\n"
            f"remote: {remote!r}\nlocal:  {local!r}"
        )
    assert remote.requires_grad == local.requires_grad, (
        f"{what}: requires_grad {remote.requires_grad} != local {local.requires_grad}")
    if grad and (local.is_leaf or local.retains_grad):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_same(remote.grad, local.grad, f"{what}.grad", grad=False)


@dataclass
class Outcome:
    """What running something gave: a value, or an exception's type and message.

    The exception object itself is not kept: its traceback would keep the
    frames' pointers alive, and a pointer that stays alive is never freed.
    """

    value: Any = None
    error: type | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        if self.ok:
            return f"Outcome(value={self.value!r})"
        return f"Outcome(error={self.error.__name__}, message={self.message!r})"


def outcome(fn: Callable, *args: Any, no_grad: bool = False) -> Outcome:
    """Run `fn(*args)` and return its Outcome; warnings are silenced so that `-W error`
    cannot make the local side raise where a worker process only warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                value = fn(*args)
        except Exception as exc:  # noqa: BLE001 - every exception is a result to compare
            return Outcome(error=type(exc), message=str(exc))
    return Outcome(value)


def assert_same_outcome(remote: Outcome, local: Outcome, what: str = "op") -> None:
    """Both raised the same exception type with the same message (the remote one may add
    " (raised on worker 'bob')"), or neither raised."""
    if local.ok and remote.ok:
        return
    if local.ok:
        raise AssertionError(f"{what}: remote raised {remote.error.__name__}: {remote.message}\n"
                             f"but locally it gave {local.value!r}")
    if remote.ok:
        raise AssertionError(f"{what}: locally raised {local.error.__name__}: {local.message}\n"
                             f"but remotely it gave {remote.value!r}")
    assert remote.error is local.error, (
        f"{what}: remote raised {remote.error.__name__}: {remote.message}\n"
        f"locally {local.error.__name__}: {local.message}")
    assert remote.message.startswith(local.message), (
        f"{what}: same type {local.error.__name__}, different message:\n"
        f"remote: {remote.message}\nlocal:  {local.message}")


def _same_value(remote: Any, local: Any) -> bool:
    if isinstance(local, float) and isinstance(remote, float):
        return math.copysign(1.0, remote) == math.copysign(1.0, local) and (
            remote == local or (math.isnan(remote) and math.isnan(local)))
    return type(remote) is type(local) and remote == local


def _pair_results(remote: Any, local: Any, r_ops: Sequence, l_ops: Sequence, what: str) -> list[tuple]:
    """Match a remote result with the local one, structure by structure.

    Returns the (pointer, tensor) pairs that are new objects. An output that is
    one of the operands locally (in-place ops, `out=`, `t.to(t.dtype)`) must be
    that same operand's pointer remotely, and the other way round.
    """
    if isinstance(local, torch.Tensor):
        assert isinstance(remote, PointerTensor), f"{what}: expected a pointer, got {type(remote).__name__}: {remote!r}"
        local_alias = [i for i, t in enumerate(l_ops) if t is local]
        remote_alias = [i for i, p in enumerate(r_ops) if p is remote]
        assert bool(local_alias) == bool(remote_alias), (
            f"{what}: locally the result {'is' if local_alias else 'is not'} operand {local_alias}, "
            f"remotely it {'is' if remote_alias else 'is not'} {remote_alias}")
        _check_meta(remote, local, what)
        return [] if local_alias else [(remote, local)]
    if local is None:
        if isinstance(remote, PointerTensor):  # PySyft returns a pointer to nothing for None
            assert remote.get() is None, f"{what}: a void pointer's get() must be None"
            return []
        assert remote is None, f"{what}: expected None, got {remote!r}"
        return []
    if isinstance(local, (tuple, list)):
        assert type(remote) is type(local), f"{what}: container {type(remote).__name__} != local {type(local).__name__}"
        assert len(remote) == len(local), f"{what}: {len(remote)} outputs != local {len(local)}"
        pairs = []
        for i, (r, l) in enumerate(zip(remote, local)):
            pairs += _pair_results(r, l, r_ops, l_ops, f"{what}[{i}]")
        return pairs
    assert _same_value(remote, local), f"{what}: value {remote!r} != local {local!r}"
    return []


def _check_meta(pointer: PointerTensor, local: torch.Tensor, what: str) -> None:
    # Cached from the Ack: no round trip.
    assert pointer.shape == local.shape, f"{what}: pointer shape {tuple(pointer.shape)} != local {tuple(local.shape)}"
    assert pointer.dtype == local.dtype, f"{what}: pointer dtype {pointer.dtype} != local {local.dtype}"
    assert pointer.requires_grad == local.requires_grad, (
        f"{what}: pointer requires_grad {pointer.requires_grad} != local {local.requires_grad}")


def _reference(t: torch.Tensor) -> torch.Tensor:
    """The local twin of what `t.send(worker)` leaves on the worker: a contiguous leaf copy
    with the same requires_grad and .grad (data crosses contiguous; see simsyft/wire/tensors.py)."""
    ref = t.detach().clone(memory_format=torch.contiguous_format)
    if t.requires_grad:
        ref.requires_grad_(True)
    if t.is_leaf and t.grad is not None:
        ref.grad = t.grad.detach().clone(memory_format=torch.contiguous_format)
    return ref
