"""Remote models: `model.send(bob)`, `model.get()`, `model.move(alice)`, in place.

Owns `RemoteParameter` / `RemoteBuffer`: what a module's own Parameter and
buffer objects become while their data lives on a worker. The objects stay
the same (an optimizer built before `send` keeps working), their class is
swapped to a subclass whose `__torch_function__` sends every op, property
read (`p.grad`, `p.data`) and property write (`p.grad = None`) to the worker
through the PointerTensor kept in the object. `get()` swaps the class back
and puts the fetched data and grad in place. Imports pointer.py.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import pointer as _pointer
from .errors import LocationMismatchError
from .pointer import PointerTensor

__all__ = ["RemoteBuffer", "RemoteParameter", "copy_module", "get_module", "module_location", "move_module",
           "send_module"]

# Facts a remote tensor answers locally, from the pointer's metadata.
_LOCAL: dict[Callable, Callable[[PointerTensor], Any]] = {
    torch.Tensor.shape.__get__: lambda p: p.shape,
    torch.Tensor.dtype.__get__: lambda p: p.dtype,
    torch.Tensor.device.__get__: lambda p: p.device,
    torch.Tensor.ndim.__get__: lambda p: p.ndim,
    torch.Tensor.requires_grad.__get__: lambda p: p.requires_grad,
    torch.Tensor.is_leaf.__get__: lambda p: True,
    torch.Tensor.grad_fn.__get__: lambda p: None,
    torch.Tensor.is_sparse.__get__: lambda p: False,
    torch.Tensor.is_cuda.__get__: lambda p: p.device.type == "cuda",
    torch.Tensor.layout.__get__: lambda p: torch.strided,
    torch.Tensor.size: lambda p, *dim: p.size(*dim),
    torch.Tensor.dim: lambda p: p.dim(),
    torch.Tensor.numel: lambda p: p.numel(),
    torch.Tensor.is_floating_point: lambda p: p.is_floating_point(),
    torch.Tensor.is_complex: lambda p: p.is_complex(),
}


def _remote_torch_function(cls: type, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
    kwargs = kwargs or {}
    if func is torch.Tensor.__repr__ or func is torch.Tensor.__str__ or func is torch.Tensor.__format__:
        return f"{'Parameter containing:' + chr(10) if isinstance(args[0], nn.Parameter) else ''}{args[0]._simsyft_pointer!r}"
    local = _LOCAL.get(func)
    if local is not None and args and _remote_pointer(args[0]) is not None:
        return local(_remote_pointer(args[0]), *args[1:])
    if func is torch.Tensor.requires_grad.__set__:
        _remote_pointer(args[0]).requires_grad = args[1]
        return None
    if getattr(func, "__name__", None) == "__set__":
        # torch drops, without a decref, whatever __torch_function__ returns for a property
        # setter (handle_torch_function_setter): returning the parameter's own pointer there
        # kept it alive forever, and with it the remote tensor (`opt.zero_grad()` sets p.grad).
        _pointer._call_remote(func, args, kwargs)
        return None
    return _pointer._call_remote(func, args, kwargs)


def _remote_pointer(obj: Any) -> PointerTensor | None:
    try:
        return obj.__dict__.get("_simsyft_pointer")
    except AttributeError:
        return None


class RemoteParameter(nn.Parameter):
    """A module's Parameter while its data lives on a worker; `p.data` and `p.grad` are pointers."""

    __torch_function__ = classmethod(_remote_torch_function)


class RemoteBuffer(torch.Tensor):
    """A module's buffer (e.g. BatchNorm running stats) while its data lives on a worker."""

    __torch_function__ = classmethod(_remote_torch_function)


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:  # tied weights are one object: send it once
            seen.add(id(tensor))
            yield tensor


def send_module(module: nn.Module, worker: Any) -> nn.Module:
    """Send every parameter and buffer to `worker`, in place; returns the module."""
    for tensor in _tensors(module):
        current = _remote_pointer(tensor)
        if current is not None:
            if current.location is not worker:
                current.move(worker)
            continue
        remote = worker.send_tensor(tensor.detach().requires_grad_(tensor.requires_grad) if tensor.grad is None
                                    else _with_grad(tensor))
        with torch.no_grad():
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)  # the data now lives remotely
        tensor.grad = None
        tensor.__class__ = RemoteParameter if isinstance(tensor, nn.Parameter) else RemoteBuffer
        tensor.__dict__["_simsyft_pointer"] = remote
    return module


def _with_grad(tensor: torch.Tensor) -> torch.Tensor:
    leaf = tensor.detach().requires_grad_(tensor.requires_grad)
    leaf.grad = tensor.grad.detach()
    return leaf


def get_module(module: nn.Module) -> nn.Module:
    """Bring every parameter and buffer home (with grads), in place; returns the module."""
    for tensor in _tensors(module):
        remote = _remote_pointer(tensor)
        if remote is None:
            continue
        value = remote.get()
        del tensor.__dict__["_simsyft_pointer"]
        tensor.__class__ = nn.Parameter if isinstance(tensor, RemoteParameter) else torch.Tensor
        with torch.no_grad():
            tensor.data = value.detach()
        tensor.grad = None if value.grad is None else value.grad.detach()
    return module


def move_module(module: nn.Module, worker: Any) -> nn.Module:
    """Move every remote parameter and buffer to `worker`, worker to worker; returns the module."""
    if getattr(worker, "is_local", False):
        return get_module(module)
    for tensor in _tensors(module):
        remote = _remote_pointer(tensor)
        if remote is None:
            send_module_tensor = worker.send_tensor(tensor.detach().requires_grad_(tensor.requires_grad))
            with torch.no_grad():
                tensor.data = torch.empty(0, dtype=tensor.dtype)
            tensor.__class__ = RemoteParameter if isinstance(tensor, nn.Parameter) else RemoteBuffer
            tensor.__dict__["_simsyft_pointer"] = send_module_tensor
        else:
            remote.move(worker)
    return module


def copy_module(module: nn.Module) -> nn.Module:
    """A local deep copy (PySyft's `model.copy()`); a remote module cannot be copied locally."""
    import copy

    if any(_remote_pointer(t) is not None for t in _tensors(module)):
        raise ValueError("copy() of a module whose data is on a worker: .get() it first")
    return copy.deepcopy(module)


def module_location(module: nn.Module) -> Any:
    """The worker holding the module's data (None if local); refuses a module split over workers."""
    pointers = [p for p in map(_remote_pointer, _tensors(module)) if p is not None]
    locations = {id(p.location): p.location for p in pointers}
    if len(locations) > 1:
        names = sorted(w.id for w in locations.values())
        raise LocationMismatchError(f"the module's parameters are on {names}; move them to one worker")
    return next(iter(locations.values()), None)
