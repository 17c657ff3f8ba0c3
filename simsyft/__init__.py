"""simsyft: PySyft 0.2's pointer API on real worker processes.

>>> import torch, simsyft as sy
>>> hook = sy.TorchHook(torch)
>>> bob = sy.VirtualWorker(hook, id="bob")        # a worker process
>>> x_ptr = torch.tensor([1, 2, 3]).send(bob)      # data crosses via shared memory or a frame
>>> (x_ptr + x_ptr).get()
tensor([2, 4, 6])
"""

# First, before torch: a worker template importing torch beside this process (Note [Prewarmed
# template], backends/template.py). Neither module imported here imports torch.
from .backends.template import prewarm as _prewarm

_prewarm()
del _prewarm

from .errors import (
    ConfigError,
    LocationMismatchError,
    MemoryLimitError,
    ObjectNotFoundError,
    OpNotAllowedError,
    ProtocolError,
    RemoteError,
    RemoteValueError,
    SimsyftError,
    ViewOutsideStorageError,
    WorkerCrashedError,
    WorkerShutdownError,
    WorkerTimeoutError,
    WorkerUnavailableError,
)
from . import exceptions
from .hook import TorchHook
from .simulation import Simulation, connect, launch, measure, shutdown, traffic
from .pipelining import pipeline
from .pointer import PointerTensor
from .handles import PrivateGridNetwork, VirtualWorker, local_worker
from .federated import BaseDataset, FederatedDataLoader, FederatedDataset
from .multipointer import MultiPointerTensor, combine_pointers
from .smpc import AdditiveSharingTensor, FixedPrecisionTensor

__version__ = "0.1.0"

__all__ = [
    "AdditiveSharingTensor",
    "BaseDataset",
    "ConfigError",
    "FederatedDataLoader",
    "FederatedDataset",
    "FixedPrecisionTensor",
    "LocationMismatchError",
    "MemoryLimitError",
    "MultiPointerTensor",
    "ObjectNotFoundError",
    "OpNotAllowedError",
    "PointerTensor",
    "PrivateGridNetwork",
    "ProtocolError",
    "RemoteError",
    "RemoteValueError",
    "SimsyftError",
    "Simulation",
    "TorchHook",
    "ViewOutsideStorageError",
    "VirtualWorker",
    "WorkerCrashedError",
    "WorkerShutdownError",
    "WorkerTimeoutError",
    "WorkerUnavailableError",
    "combine_pointers",
    "connect",
    "launch",
    "local_worker",
    "measure",
    "pipeline",
    "shutdown",
    "traffic",
]
