"""Comparisons on shared tensors: `> < >= <= ==`, `relu`, `max`, `argmax` (docs/smpc.md).

Owns the client's side of the comparison protocol (binary.py, Note [Most significant bit]):
`msb` deals the provider's tensors and steps each party through the rounds (worker/mpc.py's
Step, Note [Who talks when]); everything else here is arithmetic on its result. Installs the
methods on AdditiveSharingTensor (this module builds on additive.py, which cannot import it).

Note [Range of comparisons]
    x < y is msb(x - y) in the ring: exact whenever x - y does not wrap, i.e. |x - y| < 2^63 in
    the 2^64 ring (2^31 in 2^32). Every pair of values below 2^62 in magnitude qualifies; for
    fixed precision (scale 10^3) that is |v| < 4.6e15. The shares hide whether an input is out
    of range, so only public operands are checked (ValueError).

Note [Ties in argmax]
    i beats j when x_i > x_j, or x_i == x_j and i < j: a strict total order, so exactly one entry
    beats every other one, and max = sum(x * one_hot) is exact even with ties (PySyft's pairwise
    argmax marks every tied maximum, and its max then adds them up). The first maximum wins,
    as in torch.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import binary
from ..ids import new_id
from ..pointer import PointerTensor
from ..wire import messages
from .additive import _TORCH_FUNCTIONS, AdditiveSharingTensor, free_dealt
from .fixed import MaxResult

__all__ = ["argmax", "max_", "msb", "relu"]


def msb(x: AdditiveSharingTensor) -> AdditiveSharingTensor:
    """Shares of 1 where x is negative (as a signed ring element), 0 elsewhere."""
    provider = x.crypto_provider
    if provider is None:
        raise AttributeError("For comparisons a crypto_provider must be passed.")
    names = list(x.child)
    handles = [x.child[n].location for n in names]
    parties = tuple(names)
    tag = new_id()
    size = binary.deal_size(x.torch_dtype)
    deals = [tuple(new_id() for _ in range(size)) for _ in names]
    results = {name: new_id() for name in names}
    shape = tuple(x.shape)
    try:
        if getattr(provider, "is_local", False):  # the client deals, and knows the randomness (PySyft's "me")
            for handle, ids, values in zip(handles, deals, binary.deal_msb(shape, x.torch_dtype, len(names))):
                handle.connection.request(lambda seq, ids=ids, v=values: messages.Triple(seq, ids, v))
        else:
            provider.connection.request(lambda seq: messages.Deal(seq, "msb", (shape,), x.dtype, parties,
                                                                  tuple(deals)))
        done: dict = {}
        for _ in range(binary.levels(x.torch_dtype) + 3):  # rounds + the step that finishes
            for name, handle, deal in zip(names, handles, deals):
                share = x.child[name]
                share._check_live()
                ack = handle.connection.request(lambda seq, s=share, d=deal, r=results[name]: messages.Step(
                    seq, tag, "msb", (s.id_at_location,), d, r, parties))
                if ack.result[0] == messages.Result.NEW:
                    done[name] = PointerTensor(handle, results[name], handle.owner, ack.result[2:])
            if len(done) == len(names):
                return x._like({name: done[name] for name in names})
        raise RuntimeError(f"comparison {tag} did not finish on {sorted(set(names) - set(done))}")
    except BaseException:
        free_dealt(handles, deals)  # leave no dealt tensor behind on the live parties
        raise


def _checked(x: AdditiveSharingTensor, other: Any, op: str) -> Any:
    """Note [Range of comparisons]: a public operand must keep x - other from wrapping."""
    if isinstance(other, AdditiveSharingTensor):
        x._check_same(other, op)
        return other
    value = x._public(other, op)
    limit = 2 ** (torch.iinfo(x.torch_dtype).bits - 2)
    big = (value.to(torch.float64).abs() >= limit).any() if isinstance(value, torch.Tensor) else abs(value) >= limit
    if bool(big):
        raise ValueError(f"{op}: a public operand beyond ±2^{torch.iinfo(x.torch_dtype).bits - 2} can make the "
                         "difference wrap around the ring; comparisons are exact below it")
    return value


def lt(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    return msb(x - _checked(x, other, "lt"))


def gt(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    return msb((-x).add(_checked(x, other, "gt")))


def ge(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    return 1 - lt(x, other)


def le(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    return 1 - gt(x, other)


def eq(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    """x == y: neither x < y nor y < x, both signs in one protocol run."""
    diff = x - _checked(x, other, "eq")
    signs = msb(torch.stack([diff, -diff]))
    return 1 - signs[0] - signs[1]


def ne(x: AdditiveSharingTensor, other: Any) -> AdditiveSharingTensor:
    return 1 - eq(x, other)


def relu(x: AdditiveSharingTensor, inplace: bool = False) -> AdditiveSharingTensor:
    """x * (x >= 0): one comparison and one Beaver multiplication."""
    return x * (1 - msb(x))


def _one_hot(x: AdditiveSharingTensor, dim: int) -> AdditiveSharingTensor:
    """Shares of the one-hot argmax along `dim`, moved to the last dim (Note [Ties in argmax])."""
    v = x.transpose(dim, -1)
    n = v.shape[-1]
    if n == 0:
        raise IndexError("argmax/max of an empty dimension")
    diff = v.unsqueeze(-1) - v.unsqueeze(-2)  # [..., i, j] = v_i - v_j
    # j < i: i beats j only strictly, so subtract 1 there (integers: a > b iff a - b - 1 >= 0).
    losses = msb(diff - torch.ones(n, n, dtype=x.torch_dtype).tril(-1)).sum(-1)
    return msb(losses - 1)  # no loss at all: losses - 1 = -1


def _reduce_dim(x: AdditiveSharingTensor, dim: Any) -> tuple[AdditiveSharingTensor, int]:
    if dim is None:
        return x.reshape(-1), 0
    return x, dim % max(x.dim(), 1)


def argmax(x: AdditiveSharingTensor, dim: Any = None, keepdim: bool = False,
           one_hot: bool = False) -> AdditiveSharingTensor:
    """The index of the first maximum (over all values, or along `dim`), still shared."""
    v, d = _reduce_dim(x, dim)
    hot = _one_hot(v, d)
    if one_hot:
        hot = hot.transpose(d, -1).contiguous()
        return hot.reshape(*x.shape) if dim is None else hot
    index = (hot * torch.arange(hot.shape[-1], dtype=x.torch_dtype)).sum(-1)
    index = index.unsqueeze(-1).transpose(d, -1).squeeze(d).contiguous() if index.dim() else index
    return index.unsqueeze(d) if keepdim and dim is not None else index


def max_values(x: AdditiveSharingTensor, dim: int) -> AdditiveSharingTensor:
    """The maxima along `dim`, in the layout of x without `dim` (no indices: max_pool2d's)."""
    hot = _one_hot(x, dim)
    values = (x.transpose(dim, -1) * hot).sum(-1)
    return values.unsqueeze(-1).transpose(dim, -1).squeeze(dim).contiguous() if values.dim() else values


def max_(x: AdditiveSharingTensor, dim: Any = None, keepdim: bool = False) -> Any:
    """`x.max()`: the largest value; `x.max(dim)`: (values, indices), as torch and Part 9 unpack it."""
    v, d = _reduce_dim(x, dim)
    hot = _one_hot(v, d)
    values = (v.transpose(d, -1) * hot).sum(-1)
    if dim is None:
        return values
    index = (hot * torch.arange(hot.shape[-1], dtype=x.torch_dtype)).sum(-1)
    if values.dim():  # back to the layout of x without `dim`
        values = values.unsqueeze(-1).transpose(d, -1).squeeze(d).contiguous()
        index = index.unsqueeze(-1).transpose(d, -1).squeeze(d).contiguous()
    if keepdim:
        values, index = values.unsqueeze(d), index.unsqueeze(d)
    return MaxResult(values, index)


def _install() -> None:
    cls = AdditiveSharingTensor
    cls.lt = cls.__lt__ = lt
    cls.gt = cls.__gt__ = gt
    cls.ge = cls.__ge__ = ge
    cls.le = cls.__le__ = le
    cls.eq = cls.__eq__ = eq
    cls.ne = cls.__ne__ = ne
    cls.__hash__ = object.__hash__  # defining __eq__ would drop it: shared tensors stay usable as keys
    cls.relu = relu
    cls.argmax = argmax
    cls.max = max_
    _TORCH_FUNCTIONS.update({torch.relu: "relu", torch.nn.functional.relu: "relu", torch.max: "max",
                             torch.argmax: "argmax", torch.lt: "lt", torch.gt: "gt", torch.ge: "ge",
                             torch.le: "le", torch.eq: "eq", torch.ne: "ne"})


_install()
