"""Worker handles: `VirtualWorker`, the local worker "me", and the default simulation.

Owns the handle objects users hold (`bob`), their registry (one handle per
worker name per cluster, so `VirtualWorker(hook, id="bob")` twice reaches the
same process), `send` of a tensor, the `_objects` view, `search`, and
`shutdown`. Builds handles on top of simulation.py, which knows only processes.

The default simulation is created on first use, unless the environment names
a running one (`simsyft run CONFIG -- python script.py` sets SIMSYFT_RUN_DIR):
then `VirtualWorker(hook, id="bob")` reaches that simulation's bob.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

import torch

from .wire import messages
from .errors import WorkerShutdownError
from .pointer import LIVE, OBSERVER, PointerTensor, from_remote_ref, new_id
from .simulation import RUN_DIR_ENV, Cluster, WorkerProcess

__all__ = ["VirtualWorker", "adopt_default", "default_simulation", "handle_for", "local_worker", "release_default",
           "send", "shutdown"]

_lock = threading.RLock()
# The default simulation is the top of a stack: launch()/connect() push theirs, and
# shutting one down uncovers the one below (the implicit simulation, usually).
_stack: list[Cluster] = []
_handles: dict[tuple[int, str], "VirtualWorker"] = {}


def _check_name(name: Any) -> str:
    from .config import check_worker_name

    if not isinstance(name, str):
        raise TypeError(f"worker id must be a string, got {type(name).__name__} {name!r}")
    check_worker_name(name)
    return name


def default_simulation() -> Cluster:
    """The simulation `sy.VirtualWorker` uses: the latest launched or connected one, else the
    one named by $SIMSYFT_RUN_DIR, else an implicit one started on first use."""
    with _lock:
        while _stack and _stack[-1].closed:
            _stack.pop()
        if not _stack:
            run_dir = os.environ.get(RUN_DIR_ENV)
            cluster = Cluster(run_dir=run_dir) if run_dir else Cluster("implicit")
            atexit.register(_close_at_exit, cluster)
            _stack.append(cluster)
        return _stack[-1]


def adopt_default(cluster: Cluster) -> None:
    """Make `cluster` the default simulation until it shuts down."""
    with _lock:
        _stack.append(cluster)
        atexit.register(_close_at_exit, cluster)


def _close_at_exit(cluster: Cluster) -> None:
    """At interpreter exit: an attached process frees what its still-live pointers own (the
    workers outlive it), then detaches; an owner just stops its workers."""
    if not cluster.owner and not cluster.closed:
        import gc

        for obj in gc.get_objects():
            if type(obj) is PointerTensor and obj._state == LIVE:
                location = obj.location
                if getattr(location, "simulation", None) is cluster:
                    try:
                        location.connection.free(obj.id_at_location)
                    except Exception:  # noqa: BLE001 - best effort at exit; the worker may be gone
                        pass
                obj._state = OBSERVER  # freed once, here; its __del__ must not queue it again
    cluster.shutdown()


def release_default(cluster: Cluster) -> None:
    with _lock:
        if cluster in _stack:
            _stack.remove(cluster)


def handle_for(cluster: Cluster, name: str, hook: Any = None, start: bool = True) -> "VirtualWorker":
    """The one handle on worker `name` of `cluster`.

    With `start` (what `VirtualWorker(...)` does), a worker that is not running,
    or has crashed, is started afresh. Without it (`sim["bob"]`), the existing
    handle is returned even if its process died, so its calls report the crash.
    """
    with _lock:
        key = (id(cluster), name)
        handle = _handles.get(key)
        if handle is not None and (not start or handle._usable()):
            return handle
        process = cluster.workers.get(name)
        if start:
            if process is not None and process.exit_code() is not None:
                cluster.stop_worker(name)  # crashed: a new handle gets a fresh process
                process = None
            if process is None:
                process = cluster.start_worker({"name": name})
        elif process is None:
            raise KeyError(f"simulation {cluster.name!r} has no worker {name!r}")
        handle = object.__new__(VirtualWorker)
        handle._init(hook, name, cluster, process)
        _handles[key] = handle
        return handle


def register(cluster: Cluster, handle: "VirtualWorker") -> None:
    with _lock:
        _handles[(id(cluster), handle.id)] = handle


def forget(cluster: Cluster) -> None:
    with _lock:
        for key in [k for k in _handles if k[0] == id(cluster)]:
            del _handles[key]


class VirtualWorker:
    """A handle on a worker process (PySyft 0.2's VirtualWorker, made real).

    >>> bob = sy.VirtualWorker(hook, id="bob")   # starts process "bob" (or reuses it)
    >>> x_ptr = torch.tensor([1, 2, 3]).send(bob)
    >>> bob._objects
    {5752283563812345: tensor([1, 2, 3])}
    """

    def __new__(cls, hook: Any = None, id: str = "worker", data: Any = (), **kwargs: Any) -> "VirtualWorker":
        _check_name(id)
        handle = handle_for(default_simulation(), id, hook)
        if hook is not None and handle.hook is None:
            handle.hook = hook
        for tensor in data or ():
            handle.send_tensor(tensor)
        return handle

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # all set up in __new__, so a repeated VirtualWorker(...) does not reset the handle

    def _init(self, hook: Any, name: str, cluster: Cluster | None, process: WorkerProcess | None) -> None:
        self.id = name
        self.hook = hook
        self.simulation = cluster
        self.is_local = cluster is None
        self._process = process
        self._connection = None
        self._local_objects: dict[int, Any] = {}
        self.owner = self if self.is_local else local_worker

    def _usable(self) -> bool:
        # A crashed or stopped worker is not reused: VirtualWorker(hook, id="bob") then starts a fresh process.
        current = self.simulation.workers.get(self.id)
        return current is not None and current is self._process and current.exit_code() is None

    def _rebind(self, process: WorkerProcess) -> None:
        """Point this handle at a restarted process (Simulation.restart)."""
        self._process = process

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

    # -- process facts ----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def connection(self):
        if self._connection is not None:
            return self._connection
        if self._process is None:
            raise WorkerShutdownError(f"worker {self.id!r} is the local worker and has no connection")
        return self._process.connection

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

    def peer(self, name: str) -> "VirtualWorker":
        """The handle on worker `name` of this worker's simulation."""
        if self.simulation is None:
            raise WorkerShutdownError(f"worker {self.id!r} is not part of a simulation; it cannot reach {name!r}")
        return handle_for(self.simulation, name, start=False)

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

    def send_tensor(self, tensor: torch.Tensor) -> PointerTensor:
        """Copy `tensor` to this worker; returns the pointer that owns the remote copy."""
        if self.is_local:
            raise ValueError("cannot send to the local worker 'me': the tensor is already here")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"only tensors can be sent, got {type(tensor).__name__}")
        object_id = new_id()
        tags = tuple(getattr(tensor, "tags", None) or ())
        description = getattr(tensor, "description", None)
        reply = self.connection.request(lambda seq: messages.Store(seq, object_id, tensor, tags, description))
        pointer = PointerTensor(self, object_id, self.owner, reply.result[2:])
        if tags or description is not None:
            pointer.tags, pointer.description = set(tags), description
        return pointer

    # -- lifecycle ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop this worker's process; its pointers then raise WorkerShutdownError."""
        if self._connection is not None:
            self._connection.close("shut down")
        elif self._process is not None and self.simulation is not None:
            if self.simulation.workers.get(self.id) is self._process:
                self.simulation.stop_worker(self.id)

    def __repr__(self) -> str:
        try:
            count = self.object_count()
        except Exception:  # noqa: BLE001 - a repr must not raise; show why instead
            return f"<VirtualWorker id:{self.id} (not running)>"
        return f"<VirtualWorker id:{self.id} #objects:{count}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"a worker handle ({self.id!r}) cannot be pickled")


local_worker: VirtualWorker = object.__new__(VirtualWorker)
local_worker._init(None, "me", None, None)


def send(tensor: torch.Tensor, worker: VirtualWorker) -> PointerTensor:
    """`tensor.send(worker)`, as TorchHook installs it."""
    if not isinstance(worker, VirtualWorker):
        raise TypeError(f"send() needs a VirtualWorker, got {type(worker).__name__}")
    return worker.send_tensor(tensor)


def shutdown() -> None:
    """Stop every simulation this process started (detach from attached ones): no process,
    no segment remains."""
    with _lock:
        clusters = list(reversed(_stack))
        _stack.clear()
        for cluster in clusters:
            forget(cluster)
    for cluster in clusters:
        cluster.shutdown()
