"""Every exception simsyft raises on purpose, rooted at SimsyftError.

Imports nothing from simsyft. Where the meaning matches a builtin, the class
also inherits it, so ``except ValueError`` keeps working for bad config and
``except LookupError`` for missing objects::

    SimsyftError
    ├── ConfigError(ValueError)           bad config file or bad worker spec
    ├── ProtocolError(ValueError)         a frame that cannot be decoded safely
    ├── OpNotAllowedError(PermissionError) op outside the executor allowlist
    ├── ObjectNotFoundError(LookupError)  id not in a worker's store, or pointer already fetched
    ├── LocationMismatchError(ValueError) one op given pointers to different places
    ├── NotATensorError(TypeError)        torch code took a pointer for a non-tensor (iterated it)
    ├── MemoryLimitError(MemoryError, RuntimeError) an op would pass the worker's memory_limit
    ├── RemoteValueError(ValueError)      a value exists only remotely (item(), bool(), ...)
    ├── InvalidTensorForRemoteGet(TypeError) remote_get() on a pointer to a tensor, not to a pointer
    ├── WorkerCrashedError(RuntimeError)  the worker process died
    ├── WorkerShutdownError(RuntimeError) the worker was shut down on purpose
    ├── WorkerTimeoutError(TimeoutError)  no answer within request_timeout_s (or a start-up timeout)
    ├── WorkerUnavailableError(ConnectionError) the call reached the worker in one of its offline windows
    ├── ViewOutsideStorageError(RuntimeError) an op left or made a view reaching outside its storage
    └── RemoteError(RuntimeError)         a remote exception of a type we do not rebuild
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidTensorForRemoteGet",
    "LocationMismatchError",
    "MemoryLimitError",
    "NotATensorError",
    "ObjectNotFoundError",
    "OpNotAllowedError",
    "ProtocolError",
    "RemoteError",
    "RemoteValueError",
    "SimsyftError",
    "ViewOutsideStorageError",
    "WorkerCrashedError",
    "WorkerShutdownError",
    "WorkerTimeoutError",
    "WorkerUnavailableError",
    "unknown_worker",
]


class SimsyftError(Exception):
    """Root of every error simsyft raises on purpose."""


class ConfigError(SimsyftError, ValueError):
    """A config file or worker spec is invalid; the message names file, key and reason."""


class ProtocolError(SimsyftError, ValueError):
    """A message frame is truncated, oversized, mistyped or names something not allowed."""


class OpNotAllowedError(SimsyftError, PermissionError):
    """A worker was asked to run something outside the op allowlist in simsyft/wire/ops.py."""


class ObjectNotFoundError(SimsyftError, LookupError):
    """A worker has no object with that id, or the pointer was already fetched with .get()."""


class LocationMismatchError(SimsyftError, ValueError):
    """One op received pointers to different workers, or a pointer and a local tensor."""


class MemoryLimitError(SimsyftError, MemoryError, RuntimeError):
    """An allocation on a worker would pass its memory_limit; the op failed, the worker lives on.

    A MemoryError by meaning, and a RuntimeError because that is what torch raises when its CPU
    allocator fails, so ``except RuntimeError`` around a big op keeps working.
    """


class RemoteValueError(SimsyftError, ValueError, RuntimeError):
    """A Python value (item(), bool(), tolist()) was asked of data that lives on a worker.

    A RuntimeError too, as PySyft 0.2 raised for ``ptr.item()`` (and torch raises for ``bool()``
    of a many-element tensor); a ValueError as torch raises for ``float()`` of one.
    """


class NotATensorError(SimsyftError, TypeError):
    """Torch code was given a pointer and treated it as something other than a tensor.

    A PointerTensor is not a torch.Tensor, so torch's Python functions that branch on
    ``isinstance(x, torch.Tensor)`` (``clip_grad_norm_``, ``autograd.grad``...) take it for an
    iterable of tensors and iterate it; that would compute a wrong answer, so iterating a
    pointer from torch's own code raises this instead. The message names the function and the
    worker. See Note [Torch code iterating a pointer] in pointer.py.
    """


class WorkerCrashedError(SimsyftError, RuntimeError):
    """The worker process died; the message names it, its pid, exit status and last log lines."""


class WorkerShutdownError(SimsyftError, RuntimeError):
    """The worker was shut down with .shutdown() or sy.shutdown() and cannot be used."""


class WorkerTimeoutError(SimsyftError, TimeoutError):
    """A worker did not answer within ``[simulation] request_timeout_s`` (or did not start in time).

    The connection stays usable: if the worker resumes, the late answer is dropped.
    """


class WorkerUnavailableError(SimsyftError, ConnectionError):
    """A call reached a worker inside one of its ``offline`` windows (simulated seconds, config
    ``[workers.<name>] offline``); the worker did nothing with it. Retry after the window."""


class ViewOutsideStorageError(SimsyftError, RuntimeError):
    """An op returned after leaving a tensor viewing memory outside its storage (the tensor was
    put back as it was), or returned such a view (not stored). See executor.py's Note [Views stay
    inside their storage]."""


class RemoteError(SimsyftError, RuntimeError):
    """A remote exception whose type simsyft does not rebuild locally; keeps type name and text."""

    def __init__(self, message: str, type_name: str = "Exception") -> None:
        super().__init__(message)
        self.type_name = type_name


class InvalidTensorForRemoteGet(SimsyftError, TypeError):
    """remote_get() on a pointer whose worker holds the tensor itself (PySyft's name and message)."""


def unknown_worker(simulation: str, name: str, known) -> KeyError:
    """The KeyError for a worker `simulation` does not have, naming the ones it does."""
    return KeyError(f"simulation {simulation!r} has no worker {name!r} (workers: {', '.join(known) or 'none'})")
