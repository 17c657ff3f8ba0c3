"""Convolution and pooling on fixed-precision shared tensors, for encrypted inference (tutorial
Part 11): F.conv2d, F.max_pool2d, F.avg_pool2d, F.linear, reached through FixedPrecisionTensor's
__torch_function__ (a model's SharedParameter resolves to its shared value there).

Owns the window extraction (`_windows`: every k x k patch, by slicing each share, so it is local)
and the layers built on it: conv2d is one Beaver matmul of the weights with the patches,
max_pool2d a secure max over each window (smpc/compare.py), avg_pool2d a local sum and one
truncation. Installs them on FixedPrecisionTensor (this module builds on fixed.py).
"""

from __future__ import annotations

from typing import Any

import torch

from . import compare
from .additive import AdditiveSharingTensor
from .fixed import _TORCH_FUNCTIONS, FixedPrecisionTensor

__all__ = ["avg_pool2d", "conv2d", "linear", "max_pool2d"]


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _shared(x: Any, op: str) -> AdditiveSharingTensor:
    if not isinstance(x, FixedPrecisionTensor) or not isinstance(x.child, AdditiveSharingTensor):
        raise TypeError(f"{op}: this layer runs on a fixed precision shared tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    return x.child


def _windows(x: AdditiveSharingTensor, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    """(N, C, kh*kw, Ho, Wo): every window of x, each share sliced on its own worker."""
    if any(padding):
        ph, pw = padding
        x = x._map(lambda p: torch.nn.functional.pad(p, (pw, pw, ph, ph)))  # zeros: shares of 0
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel} is larger than the padded input ({h} x {w})")
    parts = [x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    return torch.stack(parts, dim=2), ho, wo


def conv2d(x: FixedPrecisionTensor, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> FixedPrecisionTensor:
    shares = _shared(x, "conv2d")
    if _pair(dilation) != (1, 1) or groups != 1 or isinstance(padding, str):
        raise NotImplementedError("conv2d on shared tensors: dilation 1, groups 1 and numeric padding only")
    out_c, in_c, kh, kw = weight.shape
    patches, ho, wo = _windows(shares, (kh, kw), _pair(stride), _pair(padding))
    n = patches.shape[0]
    columns = x._like(patches.reshape(n, in_c * kh * kw, ho * wo))  # C-major, then kernel rows: the weight's order
    out = weight.reshape(out_c, in_c * kh * kw).matmul(columns)  # (N, O, Ho*Wo), one Beaver matmul
    if bias is not None:
        out = out + bias.reshape(1, out_c, 1)
    return out.reshape(n, out_c, ho, wo)


def max_pool2d(x: FixedPrecisionTensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> FixedPrecisionTensor:
    shares = _shared(x, "max_pool2d")
    if any(_pair(padding)) or _pair(dilation) != (1, 1) or ceil_mode or return_indices:
        raise NotImplementedError("max_pool2d on shared tensors: no padding, dilation, ceil_mode or indices")
    kernel = _pair(kernel_size)
    windows, _, _ = _windows(shares, kernel, _pair(stride or kernel_size), (0, 0))
    return x._like(compare.max_values(windows, 2))


def avg_pool2d(x: FixedPrecisionTensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Any = None) -> FixedPrecisionTensor:
    shares = _shared(x, "avg_pool2d")
    if ceil_mode:
        raise NotImplementedError("avg_pool2d on shared tensors: no ceil_mode")
    kernel = _pair(kernel_size)
    windows, _, _ = _windows(shares, kernel, _pair(stride or kernel_size), _pair(padding))
    return x._like(windows.sum(2)) / int(divisor_override or kernel[0] * kernel[1])


def linear(x: FixedPrecisionTensor, weight: Any, bias: Any = None) -> FixedPrecisionTensor:
    out = x.matmul(weight.t())
    return out if bias is None else out + bias


def _install() -> None:
    F = torch.nn.functional
    for name, fn in (("conv2d", conv2d), ("max_pool2d", max_pool2d), ("avg_pool2d", avg_pool2d),
                     ("linear", linear)):
        setattr(FixedPrecisionTensor, name, fn)
        _TORCH_FUNCTIONS[getattr(F, name)] = name
    _TORCH_FUNCTIONS[torch.conv2d] = "conv2d"


_install()
