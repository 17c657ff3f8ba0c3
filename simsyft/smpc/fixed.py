"""FixedPrecisionTensor: real numbers as integers scaled by base**precision_fractional.

Owns the encoding (`encode`, PySyft's `(x * base**precision).long()` with its range check),
the decoding (`float_precision`), PySyft's repr, and fixed-point arithmetic over any child
that computes with integers: a local tensor, a PointerTensor (the data stays on its worker)
or an AdditiveSharingTensor. A product carries the scale twice, so it is truncated by one
scale (Note [Truncation] in additive.py for shared children; division toward zero for the
others, as PySyft): |error| < ulp * (|x| + |y| + 2) for x * y, ulp = base**-precision.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch

from ..pointer import PointerTensor
from .additive import AdditiveSharingTensor, Shaped, check_keywords, check_parties, share_local

__all__ = ["FixedPrecisionTensor", "MaxResult", "encode"]

MaxResult = namedtuple("MaxResult", ["values", "indices"])  # what torch's max(dim=...) unpacks to


def encode(tensor: torch.Tensor, base: int, precision_fractional: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """PySyft's encoding: scale, then truncate to an integer (toward zero)."""
    scale = base ** precision_fractional
    limit = 2 ** (torch.iinfo(dtype).bits - 1)
    upscaled = tensor.detach().to(torch.float64) * scale
    if not bool((upscaled.abs() < limit).all()):  # checked before the cast, which would wrap silently
        raise ValueError(f"{tensor} cannot be correctly embedded: choose bigger field or a lower precision")
    return upscaled.to(dtype)


class FixedPrecisionTensor(Shaped):
    """`x.fix_precision()`: `x` scaled by base**precision_fractional and held as integers.

    >>> x = torch.tensor([0.1, 0.2, 0.3]).fix_prec()
    >>> x
    (Wrapper)>FixedPrecisionTensor>tensor([100, 200, 300])
    >>> (x * x).float_prec()
    tensor([0.0100, 0.0400, 0.0900])
    """

    def __init__(self, child: Any, base: int = 10, precision_fractional: int = 3) -> None:
        self.child = child
        self.base = base
        self.precision_fractional = precision_fractional
        self.scale = base ** precision_fractional

    def __repr__(self) -> str:
        if isinstance(self.child, PointerTensor):
            return repr(self.child)  # PySyft: a pointer to a FixedPrecisionTensor on the worker
        body = self.child._body() if isinstance(self.child, AdditiveSharingTensor) else str(self.child)
        return "(Wrapper)>FixedPrecisionTensor>" + body

    __str__ = __repr__

    def _like(self, child: Any) -> "FixedPrecisionTensor":
        return FixedPrecisionTensor(child, self.base, self.precision_fractional)

    @property
    def shape(self) -> torch.Size:
        return self.child.shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def location(self) -> Any:
        return getattr(self.child, "location", None)

    # -- decoding, fetching, sharing ------------------------------------------------------------
    def float_precision(self) -> Any:
        """Decode to a float tensor (on its worker, for a pointer's data)."""
        if isinstance(self.child, AdditiveSharingTensor):
            raise TypeError("a shared FixedPrecisionTensor is decoded after .get(): x.get().float_precision()")
        if isinstance(self.child, PointerTensor):
            return (self.child.double() / self.scale).float()  # stays on the worker
        return (self.child.to(torch.float64) / self.scale).to(torch.float32)

    float_prec = float_precision

    def get(self) -> "FixedPrecisionTensor":
        return self._like(self.child.get())

    def share(self, *workers: Any, crypto_provider: Any = None, dtype: str = "long", field: Any = None,
              protocol: str = "snn", **kwargs: Any) -> Any:
        if isinstance(self.child, AdditiveSharingTensor):
            raise TypeError("this FixedPrecisionTensor is already shared")
        if isinstance(self.child, PointerTensor):
            # smpc/remote.py (which builds on this module) installs it on PointerTensor.
            return PointerTensor._smpc_share(self.child, workers, crypto_provider, dtype, kwargs,
                                             (self.base, self.precision_fractional))
        requires_grad = kwargs.pop("requires_grad", False)
        check_keywords("share", kwargs)
        check_parties(workers, crypto_provider)
        shared = self._like(share_local(self.child, list(workers), crypto_provider, dtype, protocol))
        # smpc/autograd.py (which builds on this module) installs the wrapper.
        return FixedPrecisionTensor._autograd(shared) if requires_grad else shared

    # -- arithmetic ------------------------------------------------------------------------------
    def _operand(self, other: Any, op: str) -> tuple[Any, bool]:
        """(what to combine with the child, whether it carries the scale)."""
        if isinstance(other, FixedPrecisionTensor):
            if (other.base, other.precision_fractional) != (self.base, self.precision_fractional):
                raise ValueError(f"{op}: fixed precision tensors with different encodings "
                                 f"(base {self.base}, precision {self.precision_fractional} and base {other.base}, "
                                 f"precision {other.precision_fractional})")
            return other.child, True
        if isinstance(other, bool) or isinstance(other, int):
            return other, False
        if isinstance(other, float):
            return int(other * self.scale), True
        if isinstance(other, torch.Tensor) and not isinstance(other, PointerTensor):
            if other.is_floating_point():
                return encode(other, self.base, self.precision_fractional, self._int_dtype()), True
            return other.to(self._int_dtype()), False
        raise TypeError(f"{op}: unsupported operand {type(other).__name__} for a FixedPrecisionTensor")

    def _int_dtype(self) -> torch.dtype:
        child = self.child
        if isinstance(child, AdditiveSharingTensor):
            return child.torch_dtype
        return child.dtype

    def _truncate(self, value: Any, d: int) -> Any:
        if isinstance(value, AdditiveSharingTensor):
            return value.div(d)
        return torch.div(value, d, rounding_mode="trunc")

    def add(self, other: Any) -> "FixedPrecisionTensor":
        value, scaled = self._operand(other, "add")
        return self._like(self.child + (value if scaled else value * self.scale))

    __add__ = __radd__ = add

    def sub(self, other: Any) -> "FixedPrecisionTensor":
        value, scaled = self._operand(other, "sub")
        return self._like(self.child - (value if scaled else value * self.scale))

    __sub__ = sub

    def __rsub__(self, other: Any) -> "FixedPrecisionTensor":
        return (-self).add(other)

    def __neg__(self) -> "FixedPrecisionTensor":
        return self._like(-self.child)

    neg = __neg__

    def mul(self, other: Any) -> "FixedPrecisionTensor":
        value, scaled = self._operand(other, "mul")
        product = _mul(self.child, value)
        return self._like(self._truncate(product, self.scale) if scaled else product)

    __mul__ = __rmul__ = mul

    def matmul(self, other: Any) -> "FixedPrecisionTensor":
        value, scaled = self._operand(other, "matmul")
        product = _matmul(self.child, value)
        return self._like(self._truncate(product, self.scale) if scaled else product)

    mm = __matmul__ = matmul

    def div(self, other: Any) -> "FixedPrecisionTensor":
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            raise TypeError("a FixedPrecisionTensor divides by a public number")
        if isinstance(other, int) and other > 0:
            return self._like(self._truncate(self.child, other))
        return self.mul(1.0 / other)

    __truediv__ = div

    def sum(self, *args: Any, **kwargs: Any) -> "FixedPrecisionTensor":
        return self._like(self.child.sum(*args, **kwargs))

    def mean(self, *args: Any, **kwargs: Any) -> "FixedPrecisionTensor":
        if isinstance(self.child, AdditiveSharingTensor):
            return self._like(self.child.mean(*args, **kwargs))
        count = self.child.numel() // self.child.sum(*args, **kwargs).numel()
        return self._like(self._truncate(self.child.sum(*args, **kwargs), count))

    # -- comparisons (smpc/compare.py for shared children) ------------------------------------------
    def _compare(self, other: Any, op: str) -> "FixedPrecisionTensor":
        """PySyft's: the 0/1 result encoded, so that float_precision() gives 1.0 and 0.0."""
        value, scaled = self._operand(other, op)
        result = getattr(self.child, op)(value if scaled else value * self.scale)
        if isinstance(result, torch.Tensor) and result.dtype == torch.bool:
            result = result.to(self._int_dtype())
        return self._like(result * self.scale)

    def __gt__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compare(other, "gt")

    def __lt__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compare(other, "lt")

    def __ge__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compare(other, "ge")

    def __le__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compare(other, "le")

    def __eq__(self, other: Any) -> "FixedPrecisionTensor":  # type: ignore[override]
        return self._compare(other, "eq")

    def __ne__(self, other: Any) -> "FixedPrecisionTensor":  # type: ignore[override]
        return self._compare(other, "ne")

    gt, lt, ge, le, eq, ne = __gt__, __lt__, __ge__, __le__, __eq__, __ne__
    __hash__ = object.__hash__

    def relu(self, inplace: bool = False) -> "FixedPrecisionTensor":
        if isinstance(self.child, AdditiveSharingTensor):
            return self._like(self.child.relu())
        return self._like(self.child.clamp(min=0))

    def argmax(self, dim: Any = None, keepdim: bool = False) -> "FixedPrecisionTensor":
        """The index, encoded like every value under this wrapper (float_precision() gives it)."""
        index = self.child.argmax(dim=dim, keepdim=keepdim)
        return self._like(index.to(self._int_dtype()) * self.scale if isinstance(index, torch.Tensor)
                          else index * self.scale)

    def max(self, dim: Any = None, keepdim: bool = False) -> Any:
        if dim is None:
            return self._like(self.child.max())
        values, indices = self.child.max(dim, keepdim=keepdim) if isinstance(self.child, AdditiveSharingTensor) \
            else torch.max(self.child, dim, keepdim=keepdim)
        scaled = indices.to(self._int_dtype()) * self.scale if isinstance(indices, torch.Tensor) else \
            indices * self.scale
        return MaxResult(self._like(values), self._like(scaled))

    def view(self, *shape: Any) -> "FixedPrecisionTensor":
        return self._like(self.child.view(*shape))

    def reshape(self, *shape: Any) -> "FixedPrecisionTensor":
        return self._like(self.child.reshape(*shape))

    def t(self) -> "FixedPrecisionTensor":
        return self._like(self.child.t())

    def __getitem__(self, index: Any) -> "FixedPrecisionTensor":
        return self._like(self.child[index])

    @classmethod
    def __torch_function__(cls, func: Any, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.cat, torch.stack):
            items = list(args[0])
            first = items[0]
            for other in items[1:]:
                first._operand(other, func.__name__)
            return first._like(func([t.child for t in items], *args[1:], **kwargs))
        method = _TORCH_FUNCTIONS.get(func)
        if method is None:
            return NotImplemented
        # A model's SharedParameter (smpc/nn.py) stands for its encoded value.
        args = tuple(getattr(a, "_smpc_value", a) if isinstance(a, torch.nn.Parameter) else a for a in args)
        return getattr(args[0], method)(*args[1:], **kwargs)


_TORCH_FUNCTIONS = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.matmul: "matmul",
                    torch.mm: "mm", torch.sum: "sum", torch.mean: "mean", torch.neg: "neg",
                    torch.relu: "relu", torch.nn.functional.relu: "relu", torch.max: "max", torch.argmax: "argmax"}


def _mul(child: Any, value: Any) -> Any:
    if isinstance(value, AdditiveSharingTensor) and not isinstance(child, AdditiveSharingTensor):
        return value.mul(child)
    return child * value


def _matmul(child: Any, value: Any) -> Any:
    if isinstance(child, AdditiveSharingTensor) or isinstance(value, AdditiveSharingTensor) or \
            isinstance(child, PointerTensor):
        return child.matmul(value) if not isinstance(value, AdditiveSharingTensor) or \
            isinstance(child, AdditiveSharingTensor) else _left_public_matmul(child, value)
    return child.matmul(value)


def _left_public_matmul(public: Any, shared: AdditiveSharingTensor) -> AdditiveSharingTensor:
    values = shared._on_each(shared._public(public, "matmul"))
    return shared._like({name: values[name].matmul(p) for name, p in shared.child.items()})
