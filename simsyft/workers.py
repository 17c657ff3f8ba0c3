"""Worker handles: `VirtualWorker`, the local worker "me", and the default simulation.

Owns the handle objects users hold (`bob`), their registry (one handle per
worker name per simulation, so `VirtualWorker(hook, id="bob")` twice reaches
the same process), `send` of a tensor, the `_objects` view, and `shutdown`.
Builds handles on top of simulation.py, which knows only processes.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

import torch

from . import protocol
from .errors import WorkerShutdownError
from .pointer import PointerTensor, new_id
from .simulation import Simulation

__all__ = ["VirtualWorker", "default_simulation", "local_worker", "send", "shutdown"]

_lock = threading.RLock()
_default: Simulation | None = None
_handles: dict[tuple[int, str], "VirtualWorker"] = {}


def _check_name(name: Any) -> str:
    try:
        from .config import check_worker_name
    except ImportError:  # config.py arrives with the config-file issue
        check_worker_name = None
    if not isinstance(name, str):
        raise TypeError(f"worker id must be a string, got {type(name).__name__} {name!r}")
    if check_worker_name is not None:
        check_worker_name(name)
    return name


def default_simulation() -> Simulation:
    """The implicit simulation `sy.VirtualWorker` starts workers in (created on first use)."""
    global _default
    with _lock:
        if _default is None or _default.closed:
            _default = Simulation("default")
            atexit.register(_default.shutdown)
        return _default


class VirtualWorker:
    """A handle on a worker process (PySyft 0.2's VirtualWorker, made real).

    >>> bob = sy.VirtualWorker(hook, id="bob")   # starts process "bob" (or reuses it)
    >>> x_ptr = torch.tensor([1, 2, 3]).send(bob)
    >>> bob._objects
    {5752283563812345: tensor([1, 2, 3])}
    """

    def __new__(cls, hook: Any = None, id: str = "worker", data: Any = (), *,
                simulation: Simulation | None = None, **kwargs: Any) -> "VirtualWorker":
        _check_name(id)
        with _lock:
            sim = simulation or default_simulation()
            key = (builtin_id(sim), id)
            handle = _handles.get(key)
            if handle is not None and handle._alive_or_restartable():
                return handle
            handle = object.__new__(cls)
            handle._init(hook, id, sim, {"name": id, **kwargs.pop("spec", {})})
            _handles[key] = handle
        for tensor in data or ():
            handle.send_tensor(tensor)
        return handle

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # all set up in __new__, so a repeated VirtualWorker(...) does not reset the handle

    def _init(self, hook: Any, name: str, sim: Simulation | None, spec: dict | None) -> None:
        self.id = name
        self.hook = hook
        self.simulation = sim
        self.owner = None  # set below; the local worker owns every pointer
        self.is_local = sim is None
        self._process = sim.start_worker(spec) if sim is not None else None
        self._connection = None
        self._local_objects: dict[int, Any] = {}
        self.owner = local_worker if sim is not None else self

    def _alive_or_restartable(self) -> bool:
        # A crashed worker is not reused: VirtualWorker(hook, id="bob") then starts a fresh process.
        if self._process is None or self.simulation.workers.get(self.id) is not self._process:
            return False
        if self._process.exit_code() is not None:
            self.simulation.stop_worker(self.id)
            return False
        return True

    # -- process facts ----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @classmethod
    def over(cls, connection: Any, name: str) -> "VirtualWorker":
        """A handle on a worker reached through `connection` (used by simsyft.testing)."""
        _check_name(name)
        handle = object.__new__(cls)
        handle._init(None, name, None, None)
        handle.is_local = False
        handle.owner = local_worker
        handle._connection = connection
        return handle

    @property
    def connection(self):
        if self._connection is not None:
            return self._connection
        if self._process is None:
            raise WorkerShutdownError(f"worker {self.id!r} is the local worker or was shut down")
        return self._process.connection

    def traffic(self) -> dict[str, int]:
        """Bytes and messages this client exchanged with the worker (protocol layer)."""
        return self.connection.traffic()

    def info(self) -> dict:
        """The worker's own account: pid, device, objects, bytes held, messages, uptime."""
        return self.connection.request(lambda seq: protocol.Info(seq)).value

    # -- the store ----------------------------------------------------------------
    @property
    def _objects(self) -> dict[int, Any]:
        """A snapshot of the worker's store as {id: tensor}, in insertion order."""
        if self.is_local:
            return self._local_objects
        items = self.connection.request(lambda seq: protocol.Objects(seq, True)).value
        return dict(items)

    def object_count(self) -> int:
        if self.is_local:
            return len(self._local_objects)
        return self.connection.request(lambda seq: protocol.Objects(seq, False)).value

    def clear_objects(self) -> "VirtualWorker":
        """Drop every object the worker holds (its pointers then find nothing); returns self."""
        if self.is_local:
            self._local_objects.clear()
        else:
            self.connection.request(lambda seq: protocol.Clear(seq))
        return self

    def send_tensor(self, tensor: torch.Tensor) -> PointerTensor:
        """Copy `tensor` to this worker; returns the pointer that owns the remote copy."""
        if self.is_local:
            raise ValueError("sending to the local worker 'me' is a no-op in PySyft; keep the tensor")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"only tensors can be sent, got {type(tensor).__name__}")
        object_id = new_id()
        reply = self.connection.request(lambda seq: protocol.Store(seq, object_id, tensor))
        return PointerTensor(self, object_id, self.owner, reply.result[2:])

    # -- lifecycle ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop this worker's process; its pointers then raise WorkerShutdownError."""
        if self._connection is not None:
            self._connection.close("shut down")
        if self._process is not None and self.simulation is not None:
            self.simulation.stop_worker(self.id)

    def __repr__(self) -> str:
        try:
            count = self.object_count()
        except Exception:  # noqa: BLE001 - a repr must not raise; show why instead
            return f"<VirtualWorker id:{self.id} (not running)>"
        return f"<VirtualWorker id:{self.id} #objects:{count}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"a worker handle ({self.id!r}) cannot be pickled")


def builtin_id(obj: Any) -> int:
    return id(obj)


local_worker: VirtualWorker = object.__new__(VirtualWorker)
local_worker._init(None, "me", None, None)


def send(tensor: torch.Tensor, worker: VirtualWorker) -> PointerTensor:
    """`tensor.send(worker)`, as TorchHook installs it."""
    if not isinstance(worker, VirtualWorker):
        raise TypeError(f"send() needs a VirtualWorker, got {type(worker).__name__}")
    return worker.send_tensor(tensor)


def shutdown() -> None:
    """Stop every worker of the default simulation; leaves no process and no segment."""
    global _default
    with _lock:
        sim, _default = _default, None
        for key in [k for k in _handles if sim is not None and k[0] == builtin_id(sim)]:
            del _handles[key]
    if sim is not None:
        sim.shutdown()
