"""TorchHook: the one place simsyft touches torch.

`TorchHook(torch)` adds `Tensor.send` (PySyft 0.2's entry point); everything
else reaches simsyft through torch's own `__torch_function__` protocol on
PointerTensor. Nothing happens at import time; `unhook()` undoes it for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from . import workers

__all__ = ["TorchHook"]


def _tensor_send(self: torch.Tensor, worker: Any) -> Any:
    """Copy this tensor to `worker` and return a PointerTensor to the copy."""
    return workers.send(self, worker)


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
        self.local_worker = local_worker or workers.local_worker
        self.local_worker.hook = self
        if getattr(torch.Tensor, "send", None) is not _tensor_send:
            torch.Tensor.send = _tensor_send

    @staticmethod
    def unhook() -> None:
        """Remove what TorchHook added (for tests that need pristine torch)."""
        if getattr(torch.Tensor, "send", None) is _tensor_send:
            del torch.Tensor.send

    def __repr__(self) -> str:
        return "<TorchHook torch>"
