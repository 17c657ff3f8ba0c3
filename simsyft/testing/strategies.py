"""Hypothesis strategies for tensors and scalars: `tensors()`, `scalars()`, `shapes()`, `partners()`, `Meta`.

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from hypothesis import strategies as st




FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
DTYPES = FLOAT_DTYPES + INT_DTYPES + (torch.bool,)

_SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 2.0, -3.0, 1e-40, 65504.0, 1e30)
# Above this many elements values come from a seeded generator as random bit patterns
# (every NaN payload, subnormal and infinity can occur), not one hypothesis draw per element.
_BULK_ELEMENTS = 512


def _rarely(draw: Callable) -> bool:
    """True about one time in twenty; shrinks towards False."""
    return draw(st.integers(0, 19)) == 19


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 4) -> st.SearchStrategy[tuple]:
    """Tensor shapes: 0-d (`()`), empty (a 0 side) and small ones; shrinks towards `()`."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def _elements(dtype: torch.dtype) -> st.SearchStrategy:
    if dtype is torch.bool:
        return st.booleans()
    if dtype.is_floating_point:
        width = {torch.float16: 16, torch.float64: 64}.get(dtype, 32)  # bfloat16: float32 values, rounded
        return st.one_of(st.integers(-8, 8).map(float), st.sampled_from(_SPECIAL_FLOATS), st.floats(width=width))
    info = torch.iinfo(dtype)
    return st.one_of(st.integers(max(info.min, -8), min(info.max, 8)), st.integers(info.min, info.max))


def _as_strategy(value: Any, default: st.SearchStrategy) -> st.SearchStrategy:
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(value)


@st.composite
def tensors(draw: Callable, dtype: Any = None, shape: Any = None, *, contiguous: bool | None = None,
            requires_grad: bool | None = False, grad: bool | None = None, elements: st.SearchStrategy | None = None,
            max_dims: int = 3, max_side: int = 4) -> torch.Tensor:
    """Tensors of every dtype in DTYPES and every small shape (0-d and empty included).

    - `dtype`, `shape`: a value or a strategy (default: any dtype, `shapes(0, max_dims, 0, max_side)`).
    - Float values include nan, +-inf, -0.0, subnormals and float16's largest finite value;
      integers include their dtype's extremes. Tensors with more than 512 elements are
      filled with random bit patterns from a drawn seed (fast for megabyte tensors).
    - `contiguous=False` gives only non-contiguous layouts (transposed, stepped, expanded
      with a zero stride) or a storage offset; None (default) gives either.
    - `requires_grad=None` draws it (floating dtypes only); `grad=None` then draws
      whether the leaf carries a `.grad` of its own shape and dtype.

    Note: torch's float results can depend on memory layout (a strided reduction adds in
    another order than a contiguous one), and `send()` always transfers contiguous data,
    so compare a remote result with the local op applied to `t.contiguous()`
    (`run_program` does).
    """
    dtype = draw(_as_strategy(dtype, st.sampled_from(DTYPES)))
    shape = tuple(draw(_as_strategy(shape, shapes(0, max_dims, 0, max_side))))
    numel = math.prod(shape)
    if numel > _BULK_ELEMENTS:
        seed = draw(st.integers(0, 2**32 - 1))
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
        t = (raw[:numel] % 2).bool() if dtype is torch.bool else raw.view(dtype)
        t = t.reshape(shape)
    else:
        values = draw(st.lists(elements if elements is not None else _elements(dtype), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=dtype).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "strided"])) if contiguous is None else (
        "contiguous" if contiguous else "strided")
    if layout == "strided":
        t = _relayout(draw, t)
    wants_grad = draw(st.booleans()) if requires_grad is None else requires_grad
    if wants_grad and dtype.is_floating_point:
        t = t.detach().requires_grad_(True)  # a leaf, keeping the layout
        has_grad = draw(st.booleans()) if grad is None else grad
        if has_grad:
            t.grad = draw(tensors(dtype, shape, contiguous=None, requires_grad=False))
    return t


def _relayout(draw: Callable, t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous (or offset) tensor holding `t`'s shape."""
    shape = tuple(t.shape)
    ways = ["offset"]
    big = [d for d, n in enumerate(shape) if n > 1]
    if len(big) >= 2:
        ways.append("transpose")
    if shape and shape[0] >= 1:
        ways.append("step")  # also a one-element dim with stride 2: "contiguous" to torch, not dense
    if big:
        ways.append("expand")
    way = draw(st.sampled_from(ways))
    if way == "transpose":
        i, j = draw(st.sampled_from([(i, j) for i in big for j in big if i < j]))
        return t.transpose(i, j).contiguous().transpose(i, j)
    if way == "step":
        base = torch.zeros((2 * shape[0], *shape[1:]), dtype=t.dtype)
        base[::2] = t
        return base[::2]
    if way == "expand":
        d = draw(st.sampled_from(big))
        return t.narrow(d, 0, 1).expand(shape)  # stride 0 along d
    k = draw(st.integers(1, 3))
    flat = torch.zeros(t.numel() + k, dtype=t.dtype)
    flat[k:] = t.reshape(-1)
    return flat[k:].view(shape)


def scalars(dtype: torch.dtype | None = None) -> st.SearchStrategy:
    """Python numbers for `tensor op scalar`: small ints, int64 extremes and beyond (which
    torch refuses), floats with nan/inf/-0.0, and bools. `dtype` biases towards its kind."""
    ints = st.one_of(st.integers(-4, 4), st.sampled_from([2**31, -2**63, 2**63 - 1, 2**64]))
    floats = st.one_of(st.sampled_from([0.5, -1.5, 2.0, -0.0, math.nan, math.inf, -math.inf, 1e-3, 3.25]),
                       st.floats(width=32))
    if dtype is not None and dtype.is_floating_point:
        return st.one_of(floats, ints, st.booleans())
    return st.one_of(ints, floats, st.booleans())


@dataclass(frozen=True)
class Meta:
    """What an op's parameters depend on: shape, dtype, requires_grad (of a tensor or pointer)."""

    shape: tuple
    dtype: torch.dtype
    requires_grad: bool = False

    @classmethod
    def of(cls, x: Any) -> "Meta":
        if isinstance(x, Meta):
            return x
        return cls(tuple(x.shape), x.dtype, bool(x.requires_grad))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point


def _broadcast_shape(draw: Callable, shape: tuple) -> tuple:
    """A shape that broadcasts with `shape` (size-1 sides, fewer or more leading dims)."""
    out = list(shape[draw(st.integers(0, len(shape))):])
    out = [draw(st.sampled_from([n, 1])) if n != 1 else draw(st.sampled_from([1, 2, 3])) for n in out]
    if len(out) < 3 and draw(st.booleans()):
        out.insert(0, draw(st.integers(1, 2)))
    return tuple(out)


def _matmul_shape(draw: Callable, shape: tuple) -> tuple:
    """A right operand for `a @ b` when `a` has `shape`."""
    if not shape:
        return draw(shapes(0, 2, 1, 3))  # matmul refuses 0-d operands: the error is the point
    k, m = shape[-1], draw(st.integers(0, 3))
    options = [(k,), (k, m)]
    if len(shape) == 1:
        options.append((2, k, m))
    else:
        batch = shape[:-2]
        options += [(*batch, k, m), (1, *batch, k, m)] if batch else [(2, k, m)]
    return draw(st.sampled_from(options))


@st.composite
def partners(draw: Callable, a: Any, kind: str = "binary") -> torch.Tensor:
    """A second operand for `a` that fits `kind`: "binary"/"compare"/"inplace" (broadcastable,
    usually the same dtype), "matmul" (matmul-compatible), "join" (same shape, for cat/stack).
    About one time in twenty the shape is arbitrary, so mismatches are tested too."""
    m = Meta.of(a)
    if _rarely(draw):
        shape = draw(shapes())
    elif kind == "matmul":
        shape = _matmul_shape(draw, m.shape)
    elif kind == "join":
        shape = m.shape
    else:
        shape = _broadcast_shape(draw, m.shape)
    dtype = m.dtype if draw(st.integers(0, 3)) < 3 else draw(st.sampled_from(DTYPES))
    return draw(tensors(dtype, shape, requires_grad=None if m.floating and dtype.is_floating_point else False,
                        grad=False))
