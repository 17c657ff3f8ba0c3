"""Pipelined mode: ops are sent without waiting, their results' metadata predicted locally.

Owns `Pipeline`, the one object holding pipelined mode's state (how deep the
`with` blocks nest, the links each posted to, the prediction cache), and
`pipeline`, the context manager users write (`with sy.pipeline():`). Imports
torch and wire; never pointer.py, which sits above it and tells `PIPELINE`
its pointer class when imported. Speed is guarded by bench/ (row "chain").
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .wire import args as wire_args
from .wire import tensors
from .wire.messages import Result

__all__ = ["PIPELINE", "Pipeline", "pipeline"]

NEW, SAME = Result.NEW, Result.SAME
_PROBE_MAX_ELEMENTS = 4096


class Pipeline:
    """Pipelined mode's state, and the prediction of what a pipelined op returns.

    A prediction runs the op on "meta" tensors (no data) standing in for its pointers,
    so a pointer comes back at once with the shape, dtype and requires_grad torch would
    give (and whether the op returns one of its arguments, as in-place ops do).
    Predictions are cached per op and argument signature, so a loop pays for one meta
    computation.
    """

    MAX_PREDICTIONS = 4096

    def __init__(self) -> None:
        self.depth = 0  # nested `with sy.pipeline():` blocks open
        self.blocks: list[pipeline] = []
        self.predictions: dict[tuple, tuple | None] = {}
        self.pointer_type: type = type(None)  # PointerTensor, set by pointer.py

    def post(self, link: Any, make: Callable[[int, tuple], Any]) -> None:
        """Send a command without waiting; the innermost block syncs `link` when it ends."""
        self.blocks[-1].links[id(link)] = link
        link.post(make)

    def predict(self, func: Callable, args: tuple, kwargs: dict, flat: bool) -> tuple | None:
        """The result's metadata: (NEW, None, meta) for a new tensor, (SAME, pointer, meta) when the
        op returns one of its arguments (in-place, out=), or None when the op cannot be predicted
        so (data-dependent shapes, device changes, non-tensor results, ops that would raise): it
        then runs synchronously."""
        pointer_type = self.pointer_type
        pointers: list = []
        grad_enabled = torch.is_grad_enabled()
        try:
            if flat:  # pointers and scalars only (pointer.py's walk_flat): inline, as this runs per
                # pipelined op (a call per arg cost ~1 us an op)
                key_parts: list = [func, grad_enabled, len(args)]
                for value in args:
                    if type(value) is pointer_type:
                        key_parts.append((value._shape, value._dtype, value._requires_grad))
                        pointers.append(value)
                    else:
                        key_parts.append((type(value), value))
                key = tuple(key_parts)
            else:
                key = (func, grad_enabled, self._signature(args, pointers), self._signature(kwargs, pointers))
            hash(key)
        except TypeError:
            return None
        predictions = self.predictions
        if key in predictions:
            cached = predictions[key]
        else:
            with torch.set_grad_enabled(grad_enabled):  # whatever the op does to the mode stays in here
                cached = self._meta_run(func, args, kwargs, pointers)
            if len(predictions) >= self.MAX_PREDICTIONS:
                predictions.clear()
            predictions[key] = cached
        if cached is None:
            return None
        alias_index, dtype, shape, requires_grad = cached
        meta = (dtype, shape, requires_grad, pointers[0]._device)
        return (SAME, pointers[alias_index], meta) if alias_index is not None else (NEW, None, meta)

    # -- internals ------------------------------------------------------------------------
    def _signature(self, value: Any, pointers: list) -> Any:
        """A hashable key for op arguments; pointers contribute their metadata (and are collected)."""
        def pointer_key(pointer: Any) -> tuple:
            pointers.append(pointer)
            return (pointer._shape, pointer._dtype, pointer._requires_grad)

        def leaf(value: Any) -> Any:
            if isinstance(value, torch.Tensor):  # a sent module's parameter (models.py)
                return pointer_key(value.__dict__["_simsyft_pointer"])
            return (type(value), value)

        return wire_args.walk(value, {self.pointer_type: pointer_key}, leaf, freeze=True)

    def _stand_in(self, value: Any, make: Callable[[Any], torch.Tensor]) -> Any:
        """`value` with every pointer (and sent module parameter) replaced by `make(pointer)`."""
        def leaf(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return make(value.__dict__["_simsyft_pointer"])
            return value

        return wire_args.walk(value, {self.pointer_type: make}, leaf)

    def _meta_run(self, func: Callable, args: tuple, kwargs: dict, pointers: list) -> tuple | None:
        metas: list[int] = []

        def to_meta(pointer: Any) -> torch.Tensor:
            meta = torch.empty(pointer._shape, dtype=pointer._dtype, device="meta")
            if pointer._requires_grad:
                meta.requires_grad_(True)
            metas.append(id(meta))
            return meta

        try:
            result = func(*self._stand_in(args, to_meta), **self._stand_in(kwargs, to_meta))
        except Exception:  # noqa: BLE001 - unpredictable here; the synchronous path gives the real answer
            return None
        if not isinstance(result, torch.Tensor) or result.device.type != "meta":
            return None
        alias = metas.index(id(result)) if id(result) in metas else None
        dtype = self._cpu_dtype(func, args, kwargs, pointers, result.dtype)
        return (alias, tensors.dtype_name(dtype), tuple(result.shape), result.requires_grad)

    def _cpu_dtype(self, func: Callable, args: tuple, kwargs: dict, pointers: list,
                   meta_dtype: torch.dtype) -> torch.dtype:
        """The result dtype the CPU kernel gives (the worker's), probed on zero tensors.

        Meta kernels can promote differently from CPU ones (bool ** False is int64 on meta, bool on
        the CPU), and CPU kernels can depend on sizes (an empty int8 einsum sums to int64). So small
        operands are probed at their real shape; large ones with every size 1, which matches
        everywhere the suite has looked. If the probe cannot run, the meta kernel's dtype is kept.
        """
        real = all(math.prod(p._shape) <= _PROBE_MAX_ELEMENTS for p in pointers)

        def to_probe(pointer: Any) -> torch.Tensor:
            return torch.zeros(pointer._shape if real else [1] * len(pointer._shape), dtype=pointer._dtype)

        try:
            with torch.no_grad():
                probe = func(*self._stand_in(args, to_probe), **self._stand_in(kwargs, to_probe))
        except Exception:  # noqa: BLE001 - the probe is only a cross-check
            return meta_dtype
        return probe.dtype if isinstance(probe, torch.Tensor) else meta_dtype


PIPELINE = Pipeline()


class pipeline:
    """Pipelined mode: ops are sent without waiting for the worker's answer.

    >>> with sy.pipeline():
    ...     for _ in range(10_000):
    ...         x = x + 1          # returns at once; shape and dtype are predicted locally
    >>> x.get()                    # a synchronising call

    The client predicts each result's shape, dtype and aliasing by running the
    op on "meta" tensors (no data), so pointers come back at once with the
    metadata torch would give. Ops whose result cannot be predicted that way
    (data-dependent shapes, device changes, non-tensor results, ops that would
    raise) run synchronously as usual.

    Note [Errors in pipelined mode]: the worker answers a pipelined op only if
    it fails. Such a failure is raised, with its own type and message, at the
    next synchronising call on that worker: `get()`, `_objects`, any op that
    ran synchronously, or at the latest when the `with` block ends.
    """

    def __enter__(self) -> "pipeline":
        self.links: dict[int, Any] = {}
        PIPELINE.depth += 1
        PIPELINE.blocks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        PIPELINE.depth -= 1
        PIPELINE.blocks.remove(self)
        if exc[0] is None:
            for link in self.links.values():
                if link.posted:
                    link.sync()
