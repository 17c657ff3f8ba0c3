"""Models and optimizers over shared tensors: `model.fix_precision().share(bob, alice,
crypto_provider=james, requires_grad=True)` and `optim.SGD(model.parameters(), lr).fix_precision()`
(PySyft 0.2, tutorial Parts 11 and 12).

Owns SharedParameter, the parameter a module keeps for a value that is encoded or shared: an
nn.Parameter (so torch's optimizers and `model.parameters()` accept it) whose own data is a meta
tensor, with no values on the client, standing for `_smpc_value`; torch's functions called with
one (F.linear, F.conv2d) reach the shared tensors' __torch_function__, which resolve it. Owns
FixedPrecisionSGD, the SGD step done securely on the parameters' shares.
"""

from __future__ import annotations

from typing import Any

import torch

from .additive import AdditiveSharingTensor, check_keywords
from .autograd import AutogradTensor, resolve
from .fixed import FixedPrecisionTensor, encode

__all__ = ["FixedPrecisionSGD", "SharedParameter", "module_fix_precision", "module_share", "optimizer_fix_precision"]


class SharedParameter(torch.nn.Parameter):
    """A module parameter standing for `_smpc_value` (a FixedPrecisionTensor, maybe shared, maybe
    in an AutogradTensor); its own data is a meta tensor of the same shape, which holds no values."""

    _smpc_value: Any

    def __repr__(self) -> str:
        return "Parameter containing:\n" + repr(self._smpc_value)


def _shell(value: Any, requires_grad: bool) -> SharedParameter:
    shell = SharedParameter(torch.empty(tuple(value.shape), device="meta"), requires_grad=requires_grad)
    shell._smpc_value = value
    return shell


def _parameters(module: torch.nn.Module):
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                yield sub, name, param


def module_fix_precision(module: torch.nn.Module, base: int = 10, precision_fractional: int = 3,
                         **kwargs: Any) -> torch.nn.Module:
    """Encode every parameter, in place (PySyft's `model.fix_precision()`); buffers are refused."""
    check_keywords("fix_precision", kwargs)
    if any(b is not None for b in module.buffers()):
        raise NotImplementedError("fix_precision() of a module with buffers (batch norm statistics) is not built")
    for sub, name, param in list(_parameters(module)):
        if isinstance(param, SharedParameter):
            raise TypeError(f"parameter {name!r} is already encoded")
        if getattr(param, "is_pointer", False) or not param.is_floating_point():
            raise TypeError(f"fix_precision() encodes a local float parameter; {name!r} is not one")
        fixed = FixedPrecisionTensor(encode(param.detach(), base, precision_fractional), base, precision_fractional)
        sub._parameters[name] = _shell(fixed, param.requires_grad)
    return module


def module_share(module: torch.nn.Module, *workers: Any, crypto_provider: Any = None,
                 requires_grad: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Share every encoded parameter between `workers`, in place (PySyft's `model.share(...)`)."""
    params = list(_parameters(module))
    for _, name, param in params:
        value = resolve(param)
        if not isinstance(value, FixedPrecisionTensor) or isinstance(value.child, AdditiveSharingTensor):
            raise TypeError(f"share() of a module shares its fixed precision parameters: call model.fix_precision() "
                            f"first ({name!r} is {type(value).__name__})")
    for _, _, param in params:
        param._smpc_value = param._smpc_value.share(*workers, crypto_provider=crypto_provider,
                                                    requires_grad=requires_grad, **kwargs)
    return module


class FixedPrecisionSGD:
    """`optim.SGD(params, lr).fix_precision()`: p <- p - lr * p.grad on the shares, lr encoded."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if type(optimizer) is not torch.optim.SGD:
            raise NotImplementedError(f"fix_precision() of {type(optimizer).__name__}: only SGD is built")
        for group in optimizer.param_groups:
            if group["momentum"] or group["weight_decay"] or group["maximize"]:
                raise NotImplementedError("fix_precision() of SGD with momentum, weight decay or maximize is not built")
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups

    def _values(self):
        for group in self.param_groups:
            for param in group["params"]:
                value = resolve(param)
                if not isinstance(value, AutogradTensor):
                    raise TypeError("a fixed precision optimizer steps parameters shared with requires_grad=True")
                yield group, value

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, value in self._values():
            value.grad = None

    def step(self) -> None:
        for group, value in self._values():
            if value.grad is not None:
                value.child = value.child - value.grad.child * float(group["lr"])

    def __repr__(self) -> str:
        return "FixedPrecision" + repr(self.optimizer)


def optimizer_fix_precision(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> FixedPrecisionSGD:
    return FixedPrecisionSGD(optimizer)
