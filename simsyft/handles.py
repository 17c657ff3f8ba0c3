"""Worker handles: `VirtualWorker`, the local worker "me", and `send`.

Owns the handle objects users hold (`bob`): `send` of a tensor, the `_objects`
view, `search`, `info`, `traffic`, `shutdown`, and the link a pointer talks
through (`connection`). A handle knows its `simulation` and its worker's name,
nothing about where the worker runs: the simulation's backend gives the link.

Note [The default simulation]
    `sy.VirtualWorker(hook, id="bob")` reaches worker bob of the *default*
    simulation, which simulation.py owns (the latest launched or connected
    one, else the one `simsyft run` names, else an implicit one). simulation.py
    sits above this module, so it installs `default_simulation` here when it is
    imported (simsyft/__init__.py imports it), rather than this module
    reaching up for it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import origins
from .errors import OpNotAllowedError, WorkerShutdownError
from .gradients import check_can_require_grad
from .ids import new_id
from .pointer import LIVE, OBSERVER, PointerTensor, call_on, from_remote_ref
from .wire import messages, ops

__all__ = ["PrivateGridNetwork", "VirtualWorker", "local_worker", "release_pointers", "send"]


def _no_default() -> Any:
    raise RuntimeError("simsyft.simulation was not imported: `import simsyft` first")


# Note [The default simulation]: set by simulation.py.
default_simulation: Callable[[], Any] = _no_default


def _check_name(name: Any) -> str:
    from .config import check_worker_name

    if not isinstance(name, str):
        raise TypeError(f"worker id must be a string, got {type(name).__name__} {name!r}")
    check_worker_name(name)
    return name


class VirtualWorker:
    """A handle on a worker (PySyft 0.2's VirtualWorker, made real: a process of its own).

    >>> bob = sy.VirtualWorker(hook, id="bob")   # starts worker "bob" (or reuses it)
    >>> x_ptr = torch.tensor([1, 2, 3]).send(bob)
    >>> bob._objects
    {5752283563812345: tensor([1, 2, 3])}
    """

    def __new__(cls, hook: Any = None, id: str = "worker", data: Any = (), **kwargs: Any) -> "VirtualWorker":
        _check_name(id)
        handle = default_simulation().handle(id, hook, start=True,
                                             message_pending_time=kwargs.get("message_pending_time"))
        for tensor in data or ():
            # The worker owns what it starts with (PySyft's `data=`): no pointer frees it.
            handle.send_tensor(tensor)._state = OBSERVER
        return handle

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # all set up in __new__, so a repeated VirtualWorker(...) does not reset the handle

    @classmethod
    def _over(cls, simulation: Any, name: str, hook: Any = None) -> "VirtualWorker":
        """The handle on worker `name` of `simulation` (Simulation.handle makes exactly one)."""
        handle = object.__new__(cls)
        handle._init(hook, name, simulation)
        return handle

    def _init(self, hook: Any, name: str, simulation: Any) -> None:
        self.id = name
        self.hook = hook
        self.simulation = simulation
        self.is_local = simulation is None
        self._link = None
        self.holds_pointers = False  # set once it is sent a pointer: its frees may free a chain (pointer.py)
        self.holds_origins = False  # set once it is sent a copy with requires_grad=True (origins.py)
        self._local_objects: dict[int, Any] = {}
        self.owner = self if self.is_local else local_worker

    # -- process facts ----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The worker's process id, where it is a process of this machine."""
        if self.simulation is None or self.id not in self.simulation.backend.names():
            return None
        return self.simulation.backend.pid(self.id)

    @property
    def connection(self):
        """The link to this worker (refreshed after a restart; a stopped worker's raises on use)."""
        link = self._link
        if link is None or link.closed_reason is not None:
            if self.simulation is None:
                raise WorkerShutdownError(f"worker {self.id!r} is the local worker and has no connection")
            backend = self.simulation.backend
            if self.id in backend.names():
                link = self._link = backend.link(self.id)
            elif link is None:
                raise WorkerShutdownError(f"worker {self.id!r} is shut down; start it again to use it")
        return link

    def traffic(self) -> dict[str, int]:
        """Bytes and messages this client exchanged with the worker (protocol layer)."""
        return self.connection.traffic()

    def info(self) -> dict:
        """The worker's own account: pid, device, objects, bytes held, messages, uptime."""
        return self.connection.request(lambda seq: messages.Info(seq)).value

    # -- the store ----------------------------------------------------------------
    @property
    def _objects(self) -> dict[int, Any]:
        """A snapshot of the worker's store as {id: tensor}, in insertion order."""
        if self.is_local:
            return self._local_objects
        items = self.connection.request(lambda seq: messages.Objects(seq, True)).value
        # Pointers this worker holds show as pointers owned by it; they only observe (never free).
        return {key: from_remote_ref(value, self, self, OBSERVER) if type(value) is messages.RemoteRef else value
                for key, value in items}

    @property
    def _tensors(self) -> dict[int, Any]:
        """PySyft's other name for `_objects`."""
        return self._objects

    @property
    def remote(self) -> "_RemoteCall":
        """`bob.remote.torch.zeros(3)`: run an allowlisted torch function on this worker; a pointer back."""
        return _RemoteCall(self, "")

    def peer(self, name: str) -> "VirtualWorker":
        """The handle on worker `name` of this worker's simulation."""
        if self.simulation is None:
            raise WorkerShutdownError(f"worker {self.id!r} is not part of a simulation; it cannot reach {name!r}")
        return self.simulation.handle(name)

    def object_count(self) -> int:
        if self.is_local:
            return len(self._local_objects)
        return self.connection.request(lambda seq: messages.Objects(seq, False)).value

    def clear_objects(self) -> "VirtualWorker":
        """Drop every object the worker holds (its pointers then find nothing); returns self."""
        if self.is_local:
            self._local_objects.clear()
        else:
            self.connection.request(lambda seq: messages.Clear(seq))
        return self

    def search(self, *query: str) -> list[PointerTensor]:
        """Pointers to the objects tagged with every tag in `query` (PySyft's `worker.search`).

        These pointers only observe: dropping them never frees the data.
        """
        if len(query) == 1 and isinstance(query[0], (list, tuple)):
            query = tuple(query[0])
        found = self.connection.request(lambda seq: messages.Search(seq, tuple(query))).value
        pointers = []
        for object_id, meta, tags, description in found:
            pointer = PointerTensor(self, object_id, self.owner, meta, state=OBSERVER)
            pointer.tags, pointer.description = set(tags), description
            pointers.append(pointer)
        return pointers

    def send_tensor(self, tensor: torch.Tensor, requires_grad: bool = False,
                    garbage_collect_data: bool = True) -> PointerTensor:
        """Copy `tensor` to this worker; returns the pointer that owns the remote copy.

        With `requires_grad`, the copy requires grad and a remote backward pass that reaches it
        continues here, from `tensor` (its .grad fills; a graph upstream of it gets gradients).
        Without `garbage_collect_data`, dropping the pointer leaves the copy on the worker.
        """
        if self.is_local:
            raise ValueError("cannot send to the local worker 'me': the tensor is already here")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"only tensors can be sent, got {type(tensor).__name__}")
        if requires_grad:
            check_can_require_grad(tensor)  # torch's error, before anything is sent
        object_id = new_id()
        tags = tuple(getattr(tensor, "tags", None) or ())
        description = getattr(tensor, "description", None)
        reply = self.connection.request(lambda seq: messages.Store(seq, object_id, tensor, tags, description))
        # Owns the copy from here: if tracking fails below, dropping it frees the copy.
        pointer = PointerTensor(self, object_id, self.owner, reply.result[2:])
        if requires_grad:
            origin_id = origins.hold(self, tensor)
            try:
                reply = self.connection.request(
                    lambda seq: messages.TrackOrigin(seq, object_id, "me", origin_id))
            except BaseException:
                origins.forget(self, origin_id)
                raise
            pointer._set_meta(reply.result[2:])
        if not garbage_collect_data:
            pointer.garbage_collection = False
        if tags or description is not None:
            pointer.tags, pointer.description = set(tags), description
        return pointer

    # -- lifecycle ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop this worker; its pointers then raise WorkerShutdownError."""
        if self.simulation is not None:
            self.connection  # keep the link: its "shut down" is what later calls report
            self.simulation.stop(self.id)

    def __repr__(self) -> str:
        try:
            count = self.object_count()
        except Exception:  # noqa: BLE001 - a repr must not raise; show why instead
            return f"<VirtualWorker id:{self.id} (not running)>"
        return f"<VirtualWorker id:{self.id} #objects:{count}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"a worker handle ({self.id!r}) cannot be pickled")


class _RemoteCall:
    """A dotted path under `worker.remote`; calling it runs that op on the worker (checked there too)."""

    __slots__ = ("_worker", "_path")

    def __init__(self, worker: VirtualWorker, path: str) -> None:
        self._worker, self._path = worker, path

    def __getattr__(self, name: str) -> "_RemoteCall":
        if name.startswith("_"):
            raise AttributeError(name)
        return _RemoteCall(self._worker, f"{self._path}.{name}" if self._path else name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._worker.is_local:
            raise ValueError("the local worker 'me' runs torch directly; call it without .remote")
        if not ops.is_allowed(self._path):
            raise OpNotAllowedError(f"{self._path!r} is not in simsyft's op allowlist (simsyft/wire/ops.py); "
                                    f"worker {self._worker.id!r} cannot run it")
        return call_on(self._worker, ops.lookup(self._path), args, kwargs)

    def __repr__(self) -> str:
        return f"<remote {self._path or 'namespace'} on {self._worker.id!r}>"


class PrivateGridNetwork:
    """A set of workers searched together (PySyft's `sy.PrivateGridNetwork(bob, alice)`)."""

    def __init__(self, *workers: VirtualWorker) -> None:
        self.workers = list(workers)

    def search(self, *query: str) -> dict[str, list[PointerTensor]]:
        """{worker id: pointers tagged with every tag in `query`}, for workers with a match."""
        results = {}
        for worker in self.workers:
            found = worker.search(*query)
            if found:
                results[worker.id] = found
        return results

    def __repr__(self) -> str:
        return f"<PrivateGridNetwork {[w.id for w in self.workers]}>"


local_worker: VirtualWorker = object.__new__(VirtualWorker)
local_worker._init(None, "me", None)


def send(tensor: torch.Tensor, worker: VirtualWorker, requires_grad: bool = False,
         garbage_collect_data: bool = True) -> PointerTensor:
    """`tensor.send(worker, requires_grad=False, garbage_collect_data=True)`, as TorchHook installs it."""
    if not isinstance(worker, VirtualWorker):
        raise TypeError(f"send() needs a VirtualWorker, got {type(worker).__name__}")
    return worker.send_tensor(tensor, requires_grad=requires_grad, garbage_collect_data=garbage_collect_data)


def release_pointers(simulation: Any) -> None:
    """Free what this process's live pointers own on `simulation`'s workers, now (an attached
    process leaving: the workers outlive it). Each pointer then only observes."""
    import gc

    for obj in gc.get_objects():
        if type(obj) is PointerTensor and obj._state == LIVE:
            location = obj.location
            if getattr(location, "simulation", None) is simulation:
                try:
                    location.connection.free(obj.id_at_location)
                except Exception:  # noqa: BLE001 - best effort at exit; the worker may be gone
                    pass
            obj._state = OBSERVER  # freed once, here; its __del__ must not queue it again
