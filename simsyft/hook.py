"""TorchHook: the one place simsyft touches torch.

`TorchHook(torch)` adds `Tensor.send` (PySyft 0.2's entry point) and
`Tensor.tag` / `Tensor.describe` (metadata carried by send), and
`nn.Module.send/get/move/copy/location` (models.py), and
`torch.utils.data.Dataset.federate` (federated/dataset.py, where PySyft put it); everything
else reaches simsyft through torch's own `__torch_function__` protocol on
PointerTensor. Nothing happens at import time; `unhook()` undoes it for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from . import handles, models, multipointer, smpc
from .federated.dataset import dataset_federate
from .pointer import PointerTensor

__all__ = ["TorchHook"]


def _tensor_send(self: torch.Tensor, *workers: Any, **kwargs: Any) -> Any:
    """Copy this tensor to `worker` and return a PointerTensor to the copy; given several workers
    (`x.send(bob, alice)`, or a list), a MultiPointerTensor holding one pointer per copy.

    Keywords (PySyft's): `requires_grad` (a remote backward fills this tensor's .grad) and
    `garbage_collect_data` (False: dropping the pointer leaves the copy on the worker).
    """
    if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
        workers = tuple(workers[0])
    if len(workers) == 1:
        return handles.send(self, workers[0], **kwargs)
    return multipointer.send_many(self, workers, **kwargs)


def _tensor_tag(self: torch.Tensor, *tags: str) -> torch.Tensor:
    """Add tags (e.g. "#mnist"); they travel with `send` and are found by `worker.search`."""
    current = list(getattr(self, "tags", None) or ())
    current += [tag for tag in tags if tag not in current]
    self.tags = current
    return self


def _tensor_describe(self: torch.Tensor, description: str) -> torch.Tensor:
    """Attach a description; it travels with `send`."""
    self.description = description
    return self


def _tensor_send_(self: torch.Tensor, worker: Any, **kwargs: Any) -> torch.Tensor:
    """Send this tensor to `worker` and turn this very object into a pointer (PySyft's `send_`)."""
    return models.send_inplace(self, worker, **kwargs)


def _tensor_copy(self: torch.Tensor) -> torch.Tensor:
    """A copy (PySyft's hook method); on a tensor sent in place, a copy on its worker."""
    return self.clone()


_ADDED = {"send": _tensor_send, "send_": _tensor_send_, "copy": _tensor_copy, "tag": _tensor_tag,
          "describe": _tensor_describe}
_ADDED.update(fix_precision=smpc.tensor_fix_precision, fix_prec=smpc.tensor_fix_precision,  # smpc/
              share=smpc.tensor_share)


def _module_send(self: torch.nn.Module, worker: Any, *more: Any) -> torch.nn.Module:
    """Send the module's parameters and buffers to `worker`, in place (PySyft's `model.send`)."""
    if more or isinstance(worker, (list, tuple)):
        raise NotImplementedError("a model is sent to one worker at a time: send a copy to each "
                                  "(model.copy().send(bob), model.copy().send(alice))")
    return models.send_module(self, worker)


def _module_get(self: torch.nn.Module) -> torch.nn.Module:
    """Bring the module's data (and grads) home, in place."""
    return models.get_module(self)


def _module_move(self: torch.nn.Module, worker: Any) -> torch.nn.Module:
    """Move the module's data to `worker`, worker to worker, in place."""
    return models.move_module(self, worker)


def _module_copy(self: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a local module (PySyft's `model.copy()`)."""
    return models.copy_module(self)


_MODULE_ADDED = {
    "send": _module_send,
    "get": _module_get,
    "move": _module_move,
    "copy": _module_copy,
    "location": property(models.module_location),
    "fix_precision": smpc.module_fix_precision, "fix_prec": smpc.module_fix_precision,  # smpc/nn.py
    "share": smpc.module_share,
}


_PARAMETER_NEW = torch.nn.Parameter.__new__


def _parameter_new(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
    """`nn.Parameter(ptr)`: a Parameter whose data is on ptr's worker (sharing ptr's storage there,
    as `nn.Parameter(t)` shares t's)."""
    if isinstance(data, PointerTensor):
        return models.parameter_from_pointer(data, requires_grad)
    return _PARAMETER_NEW(cls, data, requires_grad)


class TorchHook:
    """Make `tensor.send(worker)` available, as PySyft's hook did.

    >>> hook = sy.TorchHook(torch)
    >>> bob = sy.VirtualWorker(hook, id="bob")
    >>> torch.tensor([1, 2]).send(bob)
    (Wrapper)>[PointerTensor | me:... -> bob:...]
    """

    def __init__(self, torch_module: Any = torch, local_worker: Any = None, is_client: bool = True,
                 verbose: bool = False) -> None:
        if torch_module is not torch:
            raise TypeError("TorchHook expects the torch module: sy.TorchHook(torch)")
        self.torch = torch_module
        self.local_worker = local_worker or handles.local_worker
        self.local_worker.hook = self
        for name, method in _ADDED.items():
            if getattr(torch.Tensor, name, None) is not method:
                setattr(torch.Tensor, name, method)
        for name, method in _MODULE_ADDED.items():
            if torch.nn.Module.__dict__.get(name) is not method:
                setattr(torch.nn.Module, name, method)
        torch.nn.Parameter.__new__ = _parameter_new
        torch.utils.data.Dataset.federate = dataset_federate
        torch.optim.Optimizer.fix_precision = smpc.optimizer_fix_precision

    @staticmethod
    def unhook() -> None:
        """Remove what TorchHook added (for tests that need pristine torch)."""
        for name, method in _ADDED.items():
            if getattr(torch.Tensor, name, None) is method:
                delattr(torch.Tensor, name)
        for name, method in _MODULE_ADDED.items():
            if torch.nn.Module.__dict__.get(name) is method:
                delattr(torch.nn.Module, name)
        torch.nn.Parameter.__new__ = _PARAMETER_NEW
        if torch.utils.data.Dataset.__dict__.get("federate") is dataset_federate:
            del torch.utils.data.Dataset.federate
        if torch.optim.Optimizer.__dict__.get("fix_precision") is smpc.optimizer_fix_precision:
            del torch.optim.Optimizer.fix_precision

    def __repr__(self) -> str:
        return "<TorchHook torch>"
