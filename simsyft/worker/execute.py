"""Running an allowlisted op on a worker, and keeping every tensor's view inside its storage.

Owns `run` (look the op up in wire/ops.py's allowlist and call it) and the
guard of Note [Views stay inside their storage]; `inside_storage` is that
check, for the worker's `info()`. Imports torch, wire.ops and simsyft.errors.
Hot path: bench/simsyft_rows.py (small op, pipelined) guards its cost.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from ..errors import ViewOutsideStorageError
from ..wire import ops
from ..wire.args import walk

__all__ = ["inside_storage", "is_guarded", "run"]

# Note [Views stay inside their storage]
#     A strided tensor is a view (sizes, strides, storage offset) over a storage, and torch's
#     kernels read and write through the view without checking it against the storage: a view
#     reaching past the storage's end reads the worker's heap, overwrites it, or segfaults. torch
#     keeps views inside, except where an op that changes a tensor's geometry in place fails
#     halfway or overflows: resize_ / resize_as_ set the new sizes and then fail to allocate (or to
#     grow a shared-memory storage, which cannot grow), an `out=` tensor is resized the same way,
#     as_strided_ leaves the sizes it refused, and accepts strides whose reach overflows int64.
#     So `run` snapshots the tensor arguments of every op that may move a view (`is_guarded`:
#     torch's own `inplace_view` tag, any call with `out=`, property setters, Python functions
#     taking `out` or **kwargs) and afterwards, returned or raised, puts any that reaches outside
#     back as it was; their results, and as_strided's (the one view op whose geometry the caller
#     picks), are checked too. Nothing else is (the common op pays a set lookup, ~0.05 us): a fresh
#     result fits the storage torch just made for it, a view torch made by view/select/slice/
#     expand/unfold/... picks elements of an input that lies inside (overflowing sizes and
#     steps fuzzed: torch refuses them), and storages never shrink through allowlisted ops (set_
#     and storage access are refused), so a tensor no op moved stays inside.
#     WorkerCore.info()["views_outside_storage"] lists offenders: tests assert it stays empty.

# In-place dunders have no aten schema of their own; these are the ops they run.
_INPLACE_DUNDERS = {
    "__iadd__": "add_", "__isub__": "sub_", "__imul__": "mul_", "__itruediv__": "div_", "__idiv__": "div_",
    "__ifloordiv__": "floor_divide_", "__imod__": "remainder_", "__ipow__": "pow_", "__iand__": "__iand__",
    "__ior__": "__ior__", "__ixor__": "__ixor__", "__ilshift__": "__ilshift__", "__irshift__": "__irshift__",
}


def _needs_guard(name: str, func: Callable) -> bool:
    attr = name.rsplit(".", 1)[-1]
    if attr == "__set__":
        return True  # x.data = y gives x y's storage and geometry
    if "as_strided" in attr:
        return True  # the caller picks the geometry (and as_strided_ lets an overflowing one through)
    python = inspect.unwrap(func)
    if inspect.isfunction(python):  # Python-level: `out` may come positionally, or hide in **kwargs
        params = inspect.signature(python).parameters.values()
        return any(p.name == "out" or p.kind is p.VAR_KEYWORD for p in params)
    in_place = (attr.endswith("_") and not attr.startswith("__")) or attr in _INPLACE_DUNDERS
    if not in_place:
        return False  # functional: writes no argument, except out= (checked per call)
    if "resize" in attr:
        return True  # sparse_resize_* and resize_as_sparse_ lack the tag
    packet = getattr(torch.ops.aten, _INPLACE_DUNDERS.get(attr, attr), None)
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return True  # in place, and torch says no more: assume the worst
    return any(torch.Tag.inplace_view in getattr(packet, overload).tags for overload in packet.overloads())


_GUARDED: frozenset[str] | None = None  # built with the allowlist, on first use


def _guarded() -> frozenset[str]:
    global _GUARDED
    if _GUARDED is None:
        _GUARDED = frozenset(name for name, func in ops.table().items() if _needs_guard(name, func))
    return _GUARDED


def is_guarded(name: str) -> bool:
    """Whether `run` guards op `name` (Note [Views stay inside their storage]); any call with out= is too."""
    return name in (_GUARDED or _guarded())


def run(name: str, args: tuple, kwargs: dict) -> Any:
    """Run allowlisted op `name`; anything it raises propagates unchanged.

    No tensor argument or result is left viewing outside its storage (Note [Views stay
    inside their storage]): an argument the op moved outside is put back as it was (and the
    op's own error raised, or ViewOutsideStorageError if it returned); an outside result is
    never returned.
    """
    func = ops.lookup(name)
    if name in (_GUARDED or _guarded()) or "out" in kwargs:
        return _run_guarded(name, func, args, kwargs)
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        # torch's tags say this op moves no view; should one have moved anyway, no snapshot
        # exists to put it back, so _settle empties it rather than leave it outside. Costs
        # nothing unless the op raised.
        _settle(name, [(t, None, 0, (), ()) for t in _tensors((args, kwargs), [])], exc)
        raise


def inside_storage(tensor: torch.Tensor) -> bool:
    """Whether every element `tensor` views lies inside its storage (an empty view always does)."""
    if tensor.layout is not torch.strided:
        return True  # sparse and other layouts have no single storage for one view to overrun
    first = last = tensor.storage_offset()
    empty = False
    for size, stride in zip(tensor.size(), tensor.stride()):
        if size <= 0:
            if size < 0:
                return False  # a failed resize_(-n) leaves a negative size behind
            empty = True
        elif stride > 0:
            last += (size - 1) * stride  # Python ints: a reach that overflows int64 is still seen
        elif stride < 0:
            first += (size - 1) * stride
    if empty:
        return True
    return first >= 0 and (last + 1) * tensor.element_size() <= tensor.untyped_storage().nbytes()


def _tensors(value: Any, found: list) -> list:
    """Append the strided tensors in an op's arguments or result (nested tuples, lists, dict values)."""
    def collect(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            if leaf.layout is torch.strided:
                found.append(leaf)
        elif isinstance(leaf, tuple):  # torch.return_types are tuples of their own type
            walk(tuple(leaf), {}, collect)
        return leaf

    walk(value, {}, collect)
    return found


def _run_guarded(name: str, func: Callable, args: tuple, kwargs: dict) -> Any:
    tensors = _tensors(args, [])
    if kwargs:
        _tensors(kwargs, tensors)
    before = [(t, t.untyped_storage(), t.storage_offset(), t.size(), t.stride()) for t in tensors]
    try:
        result = func(*args, **kwargs)
    except Exception as exc:
        _settle(name, before, exc)
        raise
    _settle(name, before, None)
    if isinstance(result, torch.Tensor) and any(result is t for t in tensors):
        return result  # in place or out=: settled above
    for item in _tensors(result, []):
        if not any(item is t for t in tensors) and not inside_storage(item):
            raise _outside_result(name, item)
    return result


def _settle(name: str, before: list, exc: Exception | None) -> None:
    """Put back every tensor the op left outside its storage; then fail if it returned.

    `before` holds (tensor, storage, offset, sizes, strides), or (tensor, None, ...) where no
    geometry was taken (then an outside tensor is emptied, there being nothing to go back to).
    """
    moved = []
    for tensor, storage, offset, size, stride in before:
        if (storage is not None and tensor.storage_offset() == offset and tensor.size() == size
                and tensor.stride() == stride and tensor.untyped_storage()._cdata == storage._cdata):
            continue  # untouched, and it was inside: ~0.4 us, half a full check
        if inside_storage(tensor):
            continue
        bad = _describe(tensor)
        version = tensor._version  # as the op left it: putting the geometry back is not a write
        with torch.no_grad():
            if storage is None:
                tensor.set_(tensor.untyped_storage(), 0, (0,), (1,))
            else:
                tensor.set_(storage, offset, size, stride)
        _set_version(tensor, version)
        moved.append((bad, list(tensor.shape), storage is None))
    if not moved:
        return
    what = "; ".join(f"{bad} was {'emptied (no earlier geometry known)' if emptied else f'put back to shape {shape}'}"
                     for bad, shape, emptied in moved)
    if exc is not None:
        exc.add_note(f"simsyft: {name} failed after moving a tensor's view outside its storage: {what}")
        return
    raise ViewOutsideStorageError(
        f"{name} left a tensor viewing memory outside its storage: {what}; the op is refused, "
        "check its sizes, strides and offset")


def _outside_result(name: str, tensor: torch.Tensor) -> ViewOutsideStorageError:
    return ViewOutsideStorageError(
        f"{name} returned a tensor viewing memory outside its storage ({_describe(tensor)}); "
        "it is not stored, check the op's sizes, strides and offset")


def _describe(tensor: torch.Tensor) -> str:
    storage = tensor.untyped_storage().nbytes() if tensor.layout is torch.strided else 0
    return (f"sizes {list(tensor.shape)}, strides {list(tensor.stride())}, storage offset "
            f"{tensor.storage_offset()} over a {storage}-byte storage")


def _set_version(tensor: torch.Tensor, version: int) -> None:
    reset = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if reset is not None and tensor._version != version:
        reset((tensor,), (version,))
