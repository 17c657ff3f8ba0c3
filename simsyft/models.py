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

__all__ = ["RemoteBuffer", "RemoteParameter", "copy_module", "get_inplace", "get_module", "module_location",
           "move_module", "send_inplace", "send_module"]

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
        return repr(args[0]._simsyft_pointer)  # nn.Parameter's own __repr__ adds "Parameter containing:"
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


class _InPlaceRemote:
    """What a tensor turned into a pointer in place answers besides torch ops (PySyft's wrapper)."""

    __torch_function__ = classmethod(_remote_torch_function)

    @property
    def location(self) -> Any:
        return self.__dict__["_simsyft_pointer"].location

    @property
    def id_at_location(self) -> int:
        return self.__dict__["_simsyft_pointer"].id_at_location

    @property
    def is_pointer(self) -> bool:
        return True

    @property
    def child(self) -> PointerTensor:
        return self.__dict__["_simsyft_pointer"]

    def get_(self) -> torch.Tensor:
        """Bring the data home into this very object (PySyft's `get_`); returns it."""
        return get_inplace(self)

    get = get_  # the object itself comes back, as PySyft's wrapper did

    def move(self, worker: Any, **kwargs: Any) -> torch.Tensor:
        self.__dict__["_simsyft_pointer"].move(worker, **kwargs)
        return self

    def send(self, worker: Any, **kwargs: Any) -> PointerTensor:
        """Send the pointer on (a pointer to a pointer), as `ptr.send(worker)` does."""
        return self.__dict__["_simsyft_pointer"].send(worker, **kwargs)

    def send_(self, worker: Any, **kwargs: Any) -> torch.Tensor:
        raise ValueError(f"send_(): this tensor already lives on worker {self.location.id!r}; use move()")


class RemoteParameter(_InPlaceRemote, nn.Parameter):
    """A module's Parameter while its data lives on a worker; `p.data` and `p.grad` are pointers."""


class RemoteBuffer(_InPlaceRemote, torch.Tensor):
    """A tensor whose data lives on a worker: a module's buffer (BatchNorm's running stats), or a
    tensor sent in place with `t.send_(bob)`."""


def send_inplace(tensor: torch.Tensor, worker: Any, **kwargs: Any) -> torch.Tensor:
    """Send `tensor` to `worker` and turn the object itself into a pointer (PySyft's `send_`).

    Its class becomes RemoteParameter / RemoteBuffer, so every op, `.grad` and `.data` runs on
    the worker, and references to it elsewhere (an optimizer's list) follow the data.
    """
    if _remote_pointer(tensor) is not None:
        raise ValueError(f"send_(): this tensor already lives on worker {tensor.location.id!r}; use move()")
    if not tensor.is_leaf:
        raise ValueError("send_() turns a tensor into a pointer in place, which autograd allows only for a leaf "
                         "tensor; use send() for a tensor computed from others")
    remote = worker.send_tensor(tensor.detach().requires_grad_(tensor.requires_grad) if tensor.grad is None
                                else _with_grad(tensor), **kwargs)
    with torch.no_grad():
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)  # the data now lives remotely
    tensor.grad = None
    tensor.__class__ = RemoteParameter if isinstance(tensor, nn.Parameter) else RemoteBuffer
    tensor.__dict__["_simsyft_pointer"] = remote
    return tensor


def parameter_from_pointer(pointer: PointerTensor, requires_grad: bool = True) -> nn.Parameter:
    """`nn.Parameter(ptr)`: a leaf on ptr's worker, sharing its storage, held by a local Parameter."""
    pointer._check_live()
    leaf = pointer.detach()
    if requires_grad:
        leaf.requires_grad_(True)
    param = nn.Parameter(torch.empty(0, dtype=pointer.dtype), requires_grad=requires_grad)
    param.__class__ = RemoteParameter
    param.__dict__["_simsyft_pointer"] = leaf
    return param


def get_inplace(tensor: torch.Tensor) -> torch.Tensor:
    """Bring a tensor sent in place home, with its grad, into the same object; returns it."""
    remote = _remote_pointer(tensor)
    if remote is None:
        return tensor
    value = remote.get()
    del tensor.__dict__["_simsyft_pointer"]
    tensor.__class__ = nn.Parameter if isinstance(tensor, RemoteParameter) else torch.Tensor
    with torch.no_grad():
        tensor.data = value.detach()
    tensor.grad = None if value.grad is None else value.grad.detach()
    return tensor


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
        send_inplace(tensor, worker)
    return module


def _with_grad(tensor: torch.Tensor) -> torch.Tensor:
    leaf = tensor.detach().requires_grad_(tensor.requires_grad)
    leaf.grad = tensor.grad.detach()
    return leaf


def get_module(module: nn.Module) -> nn.Module:
    """Bring every parameter and buffer home (with grads), in place; returns the module."""
    tensors = list(_tensors(module))
    for tensor in tensors:
        get_inplace(tensor)
    # PySyft gave parameters a backward pass never reached a zero grad, not None (their
    # grads crossed with the rest). Only once some backward reached the module.
    if any(t.grad is not None for t in tensors):
        for tensor in tensors:
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad and tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
    return module


def move_module(module: nn.Module, worker: Any) -> nn.Module:
    """Move every remote parameter and buffer to `worker`, worker to worker; returns the module."""
    if getattr(worker, "is_local", False):
        return get_module(module)
    for tensor in _tensors(module):
        remote = _remote_pointer(tensor)
        if remote is None:
            send_inplace(tensor, worker)
        else:
            remote.move(worker)
    return module


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy (PySyft's `model.copy()`); a sent module is copied where its data is."""
    import copy

    memo: dict[int, Any] = {}
    for tensor in _tensors(module):
        remote = _remote_pointer(tensor)
        if remote is not None:
            # The copy's data is a fresh leaf on the same worker; the bytes never come here.
            clone = remote.detach().clone()
            if remote.requires_grad:
                clone.requires_grad_(True)
            twin = nn.Parameter(torch.empty(0, dtype=tensor.dtype), requires_grad=remote.requires_grad) \
                if isinstance(tensor, nn.Parameter) else torch.empty(0, dtype=tensor.dtype)
            twin.__class__ = RemoteParameter if isinstance(tensor, nn.Parameter) else RemoteBuffer
            twin.__dict__["_simsyft_pointer"] = clone
            memo[id(tensor)] = twin  # deepcopy puts the twin wherever the module refers to the original
    return copy.deepcopy(module, memo)


def module_location(module: nn.Module) -> Any:
    """The worker holding the module's data (None if local); refuses a module split over workers."""
    pointers = [p for p in map(_remote_pointer, _tensors(module)) if p is not None]
    locations = {id(p.location): p.location for p in pointers}
    if len(locations) > 1:
        names = sorted(w.id for w in locations.values())
        raise LocationMismatchError(f"the module's parameters are on {names}; move them to one worker")
    return next(iter(locations.values()), None)
