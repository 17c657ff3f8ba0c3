"""Secure multi-party computation, part 1: fixed precision, additive sharing across worker
processes, Beaver multiplication with a crypto-provider process (docs/smpc.md).

Owns the user layer's SMPC types; worker/mpc.py is the workers' side, ring.py the arithmetic
both share. Installs `PointerTensor`'s fix_precision/share (Note [Combining pointers] pattern:
this package builds on pointer.py, which cannot import it).
"""

from __future__ import annotations

from typing import Any

import torch

from ..pointer import PointerTensor
from . import autograd, compare, layers  # noqa: F401 - install requires_grad sharing; comparisons; CNN layers
from .additive import AdditiveSharingTensor, check_keywords, share_local
from .fixed import FixedPrecisionTensor, encode
from .autograd import AutogradTensor
from .nn import module_fix_precision, module_share, optimizer_fix_precision
from .remote import SharedPointer, fix_precision_remote, share_remote

__all__ = ["AdditiveSharingTensor", "AutogradTensor", "FixedPrecisionTensor", "SharedPointer",
           "module_fix_precision", "module_share", "optimizer_fix_precision", "tensor_fix_precision", "tensor_share"]

def tensor_fix_precision(self: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                         dtype: str = "long", **kwargs: Any) -> FixedPrecisionTensor:
    """`x.fix_precision()` / `x.fix_prec()`: x * base**precision_fractional as integers (PySyft)."""
    check_keywords("fix_precision", kwargs)
    if not self.is_floating_point():
        raise TypeError(f"fix_precision() encodes a float tensor, got {self.dtype}")
    torch_dtype = torch.int32 if dtype == "int" else torch.int64
    return FixedPrecisionTensor(encode(self, base, precision_fractional, torch_dtype), base, precision_fractional)


def tensor_share(self: torch.Tensor, *workers: Any, crypto_provider: Any = None, dtype: str = "long",
                 field: Any = None, protocol: str = "snn", **kwargs: Any) -> AdditiveSharingTensor:
    """`x.share(bob, alice, crypto_provider=james)`: one additive share per worker (PySyft)."""
    check_keywords("share", kwargs)
    if protocol != "snn":
        raise NotImplementedError(f"protocol={protocol!r}: only PySyft's default 'snn' is built")
    if dtype is None:
        dtype = "int" if field is not None and field <= 2 ** 32 else "long"
    return share_local(self, list(workers), crypto_provider, dtype, protocol)


def _pointer_fix_precision(pointer: PointerTensor, base: int, precision_fractional: int, kwargs: dict) -> Any:
    check_keywords("fix_precision", kwargs)
    return fix_precision_remote(pointer, base, precision_fractional)


def _pointer_share(pointer: PointerTensor, workers: tuple, crypto_provider: Any, dtype: str, kwargs: dict,
                   encoding: tuple | None = None) -> SharedPointer:
    check_keywords("share", kwargs)
    return share_remote(pointer, workers, crypto_provider, dtype, encoding)


PointerTensor._smpc_fix_precision = staticmethod(_pointer_fix_precision)
PointerTensor._smpc_share = staticmethod(_pointer_share)
