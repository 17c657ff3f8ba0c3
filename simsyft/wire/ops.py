"""The op allowlist: which torch callables a worker may run, by wire name.

Owns the table {op name -> torch callable} and op names. Knows no sockets and
no messages; imports torch and simsyft.errors only.

Wire names are `torch.overrides.resolve_name(func)` ("torch.add",
"torch.Tensor.sum", "torch.Tensor.grad.__get__"). The table starts from
torch's own list of overridable functions (tensor ops by construction: no
factories, no I/O), then removes everything that is not pure tensor compute:
private names, serialization, raw storage and pointer access, hooks (they take
callables) and NumPy/DLPack export. A name is never walked with getattr, so
nothing outside the table can be reached.

The table is built on first use (a client that never asks pays nothing at
import); worker/execute.py runs ops from it. A new op is usually already here
(torch's overridable list); docs/architecture.md says what to check.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch.overrides import get_overridable_functions, resolve_name

from ..errors import OpNotAllowedError

__all__ = ["OPERATOR_DUNDERS", "is_allowed", "lookup", "op_name", "op_name_or_repr", "ops", "table"]

_NAMESPACES = (
    "torch.",
    "torch.functional.",
    "torch.nn.functional.",
    "torch.linalg.",
    "torch.fft.",
    "torch.special.",
    "torch.Tensor.",
)

# Dunders a pointer forwards: operators, indexing. Everything else starting with "_" is refused.
OPERATOR_DUNDERS = (
    "__abs__", "__add__", "__and__", "__div__", "__eq__", "__floordiv__", "__ge__", "__getitem__",
    "__gt__", "__iadd__", "__iand__", "__idiv__", "__ifloordiv__", "__ilshift__", "__imod__",
    "__imul__", "__invert__", "__ior__", "__ipow__", "__irshift__", "__isub__", "__itruediv__",
    "__ixor__", "__le__", "__lshift__", "__lt__", "__matmul__", "__mod__", "__mul__", "__ne__",
    "__neg__", "__or__", "__pos__", "__pow__", "__radd__", "__rand__", "__rdiv__", "__rfloordiv__",
    "__rlshift__", "__rmatmul__", "__rmod__", "__rmul__", "__ror__", "__rpow__", "__rrshift__",
    "__rshift__", "__rsub__", "__rtruediv__", "__rxor__", "__setitem__", "__sub__", "__truediv__",
    "__xor__",
)

# Attributes read (and, for three, written) through a pointer.
_PROPERTIES = ("data", "grad", "H", "imag", "is_leaf", "mH", "mT", "real", "requires_grad", "retains_grad", "T")
_SETTABLE = ("data", "grad", "requires_grad")

# Not tensor compute: serialization, raw memory, hooks taking callables, exporters, global state.
_DENIED = re.compile(
    r"(save|load|file|numpy|tolist|item|dlpack|storage|data_ptr|share_memory|is_shared|set_|hook"
    r"|pin_memory|autocast|print|seed|thread|default|deterministic|apply_|map_|map2_|module_load"
    r"|grad_fn|_version|record_stream|__array|__cuda_array_interface__)"
)


# Factories are not in torch's overridable list (they take no tensor). These run for
# `bob.remote.torch.zeros(3)`: they make a new tensor from sizes and scalars only.
_FACTORIES = ("arange", "eye", "full", "linspace", "logspace", "ones", "rand", "randint", "randn", "randperm",
              "tensor", "zeros")


def _build() -> dict[str, Callable]:
    table: dict[str, Callable] = {}
    for funcs in get_overridable_functions().values():
        for func in funcs:
            name = resolve_name(func)
            if name is None or not name.startswith(_NAMESPACES):
                continue
            attr = name.removeprefix("torch.Tensor.") if name.startswith("torch.Tensor.") else name.rsplit(".", 1)[-1]
            if attr.endswith(".__get__"):
                if attr.removesuffix(".__get__") not in _PROPERTIES:
                    continue
            elif attr.startswith("_") and attr not in OPERATOR_DUNDERS:
                continue
            if _DENIED.search(name):
                continue
            table[name] = func
    for dunder in OPERATOR_DUNDERS:  # some (e.g. __neg__) are not in torch's overridable list
        method = getattr(torch.Tensor, dunder, None)
        if method is not None:
            table.setdefault(f"torch.Tensor.{dunder}", method)
    for name in _FACTORIES:
        table[f"torch.{name}"] = getattr(torch, name)
    for prop in _PROPERTIES:
        table[f"torch.Tensor.{prop}.__get__"] = getattr(torch.Tensor, prop).__get__
    for prop in _SETTABLE:
        table[f"torch.Tensor.{prop}.__set__"] = getattr(torch.Tensor, prop).__set__
    return table


_TABLE: dict[str, Callable] | None = None  # built on first use: Note in the module docstring


def table() -> dict[str, Callable]:
    """The allowlist {op name -> callable}, built once."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _build()
    return _TABLE


def ops() -> frozenset[str]:
    """Every op name a worker accepts."""
    return frozenset(_TABLE or table())


_NAMES: dict[Any, str | None] = {}


def op_name(func: Any) -> str | None:
    """Wire name of a torch callable (None if torch cannot name it); cached, as it runs per op."""
    try:
        return _NAMES[func]
    except KeyError:
        name = resolve_name(func)
        if name is not None:  # only torch's own callables: caching anything else would keep it alive
            _NAMES[func] = name
        return name
    except TypeError:  # unhashable: not a torch callable anyway
        return resolve_name(func)


def op_name_or_repr(func: Any) -> str:
    """Wire name of a torch callable, or its qualified name (for messages) if torch has none."""
    return op_name(func) or getattr(func, "__qualname__", repr(func))


def is_allowed(name: str) -> bool:
    return name in (_TABLE or table())


def lookup(name: str) -> Callable:
    try:
        return (_TABLE or table())[name]
    except (KeyError, TypeError):
        raise OpNotAllowedError(f"{name!r} is not in simsyft's op allowlist (simsyft/wire/ops.py)") from None
