"""The worker process: a ZeroMQ ROUTER socket, an object store, allowlisted ops.

Owns `WorkerCore` (store + message handling, no sockets: the in-process test
connection drives it directly) and `main()`, the process's loop. Never imports
the user layer (pointer, workers, hook): a worker holds tensors, not pointers.

One worker, one thread: messages are handled strictly in arrival order, which
is what makes fire-and-forget Free and (later) pipelined commands safe.

Run as ``python -m simsyft.worker '<json spec>'`` (simulation.py does this).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
import weakref
from typing import Any

import torch

from . import limits

from .wire import codec, messages, ops, segments, shm, tensors
from .wire.messages import Result

NEW, SAME, VALUE, NOTHING, SEQUENCE = Result.NEW, Result.SAME, Result.VALUE, Result.NOTHING, Result.SEQUENCE
from .config import REQUEST_TIMEOUT_S
from .connection import Connection, pid_alive
from .connection import _context as zmq_context
from .errors import LocationMismatchError, ObjectNotFoundError, ProtocolError, SimsyftError

__all__ = ["WorkerCore", "describe_meta", "main"]

_VALUE_TYPES = (bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)
_IN_SEGMENTS = tensors.IN_SEGMENTS  # non-empty once this process holds a tensor over a segment
_IN_FLIGHT = tensors.IN_FLIGHT
_TAKEN_MAX = 64  # tags kept of the objects last removed by a Fetch, in case the client gives one back


def describe_meta(tensor: torch.Tensor) -> tuple:
    """What a client caches about a remote tensor, so shape/dtype need no round trip."""
    return (tensors.dtype_name(tensor.dtype), tuple(tensor.shape), tensor.requires_grad,
            "cpu" if tensor.is_cpu else str(tensor.device))


class WorkerCore:
    """A worker's store and message handling, independent of any transport."""

    def __init__(self, name: str, namespace: str = "", device: str = "cpu", run_dir: str | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.name = name
        self.run_dir = run_dir  # where the other workers' endpoints are (pointer chains)
        self.request_timeout_s = request_timeout_s  # for those chains: the simulation's, as the client's
        self.memory_limit: int | None = None  # set by main() once limits.enforce() applied it
        self._peers: dict[str, Any] = {}
        self.namespace = namespace
        self.device = torch.device(device)
        self.store: dict[int, Any] = {}
        self.tags: dict[int, tuple[tuple[str, ...], str | None]] = {}  # id -> (tags, description)
        self._taken: dict[int, tuple[tuple[str, ...], str | None]] = {}  # tags of objects just fetched (Restore)
        self.messages_in = 0
        self.messages_out = 0
        self.started = time.time()
        self.running = True
        # Extra results of multi-output ops get ids here; never the global `random`, which user code reseeds.
        self._ids = random.Random(int.from_bytes(os.urandom(16), "little"))

    # -- transport-facing -------------------------------------------------
    def handle(self, frames: list) -> list | None:
        """One request's frames -> reply frames (None for messages that want no reply)."""
        self.messages_in += 1
        used: dict[int, Any] = {}
        # Note [Segment ownership]: a request that fails gives back the segments it received, so
        # the client can reclaim them, or the source of a move() re-import its segment.
        mark = _IN_FLIGHT.claims  # tensors.receiving(), inline
        _IN_FLIGHT.claims = claims = []
        ok = True
        try:
            try:
                msg = codec.decode(frames, resolve=lambda ref: self._resolve(ref, used), strict=True,
                                      namespace=self.namespace)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never kill the worker
                ok = False
                return self._error(codec.peek_seq(frames), exc)
            if not msg.wants_reply:
                self._free(msg)
                return None
            try:
                reply = self._dispatch(msg, used)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                # Only an Import stores nothing when it fails; a failed op may have stored results
                # over what it received, which then stays ours.
                ok = type(msg) is not messages.Import
                return self._error(msg.seq, exc)
        finally:
            _IN_FLIGHT.claims = mark
            if claims:
                tensors.settle(claims, ok)
        if type(msg) is messages.Command and not msg.reply:
            return None  # pipelined: only failures are answered
        try:
            frames = codec.encode(reply, self.namespace)
        except Exception as exc:  # noqa: BLE001 - a result we cannot send is an error, not a crash
            if type(msg) is messages.Fetch and msg.remove:
                try:
                    self._put_back(msg.id, reply.value)  # never sent: .get() can be retried
                except Exception:  # noqa: BLE001 - the error below still goes back; the object is lost
                    pass
            return self._error(msg.seq, exc)
        self.messages_out += 1
        return frames

    def _error(self, seq: int, exc: BaseException) -> list:
        self.messages_out += 1
        if self.memory_limit is not None:  # Note [Memory limit] (limits.py)
            exc = limits.refused(self.name, self.memory_limit, exc) or exc
        reply = messages.ErrorReply(
            seq, type(exc).__module__, type(exc).__qualname__, str(exc),
            "".join(traceback.format_exception(exc)), self.name,
        )
        return codec.encode(reply)

    def _resolve(self, object_id: int, used: dict[int, Any]) -> Any:
        try:
            obj = self.store[object_id]
        except KeyError:
            raise ObjectNotFoundError(
                f"worker {self.name!r} has no object {object_id}: it was already returned by .get() or freed"
            ) from None
        if _IN_SEGMENTS and type(obj) is not messages.RemoteRef:  # only while we hold a tensor in a segment
            try:  # ~0.25 us: is it (or can its .grad be) over a segment?
                if obj.untyped_storage().data_ptr() in _IN_SEGMENTS or obj.requires_grad:
                    self._check_segment(object_id, obj)
            except (RuntimeError, NotImplementedError):
                pass  # no plain storage (sparse): never over a segment
        used[object_id] = obj
        return obj

    def _check_segment(self, object_id: int, obj: torch.Tensor) -> None:
        """Refuse to read a stored tensor whose shared-memory segment was shrunk: that raises SIGBUS.

        Drops every object over that segment, which the truncation destroyed.
        """
        seg = tensors.shrunk(obj)
        if seg is None:
            return
        lost = [oid for oid, other in self.store.items() if isinstance(other, torch.Tensor) and tensors.over(other, seg)]
        for oid in lost:
            self._drop(oid)
        others = f" (and {len(lost) - 1} other object(s) over it, dropped too)" if len(lost) > 1 else ""
        raise ObjectNotFoundError(
            f"object {object_id} on worker {self.name!r} was lost: its shared-memory segment {seg.path} was "
            f"truncated by another process{others}; send the data again")

    # -- messages ---------------------------------------------------------
    def _dispatch(self, msg: messages.Message, used: dict[int, Any]) -> messages.Message:
        kind = type(msg)
        if kind is messages.Command:
            for object_id in msg.free:  # none of these can be among the args: their pointers are gone
                self._drop(object_id)
            for obj in used.values():
                if type(obj) is messages.RemoteRef:
                    return messages.Ack(msg.seq, self._forward(msg, used))
            if msg.grad_enabled == torch.is_grad_enabled():  # the usual case: no context manager to pay for
                result = ops.run(msg.op, msg.args, msg.kwargs)
            else:
                with torch.set_grad_enabled(msg.grad_enabled):
                    result = ops.run(msg.op, msg.args, msg.kwargs)
            return messages.Ack(msg.seq, self.describe(result, msg.result_id, used, msg.op))
        if kind is messages.Store:
            value = msg.value
            if not isinstance(value, torch.Tensor):
                raise ProtocolError(f"Store carries a {type(value).__name__}; only tensors can be stored")
            return messages.Ack(msg.seq, self._put(msg.id, value, msg.tags, msg.description))
        if kind is messages.Fetch:
            self._resolve(msg.id, used)
            if not msg.remove:
                return messages.Value(msg.seq, self.store[msg.id])
            used.clear()
            value = self.store.pop(msg.id)
            tags = self.tags.pop(msg.id, None)
            if tags is not None:  # kept a while: if the client cannot take the reply it gives it back (Restore)
                self._taken[msg.id] = tags
                if len(self._taken) > _TAKEN_MAX:
                    del self._taken[next(iter(self._taken))]
            handed = tensors.handover(value) if isinstance(value, torch.Tensor) else None
            if handed is not None:
                # Note [Segment ownership]: the client takes the segment itself, unless something
                # here still holds the tensor (autograd saved it for a backward pass).
                alive = weakref.ref(value)
                del value
                if alive() is None:
                    return messages.Value(msg.seq, handed)
                value = alive()
                tensors.take_back(handed)
            return messages.Value(msg.seq, value)
        if kind is messages.Objects:
            if msg.values:
                if _IN_SEGMENTS:
                    for object_id, obj in list(self.store.items()):
                        if isinstance(obj, torch.Tensor) and object_id in self.store:
                            self._check_segment(object_id, obj)
                return messages.Value(msg.seq, tuple(self.store.items()))
            return messages.Value(msg.seq, len(self.store))
        if kind is messages.Info:
            return messages.Value(msg.seq, self.info())
        if kind is messages.Clear:
            count = len(self.store)
            for object_id in list(self.store):
                self._drop(object_id)
            self.tags.clear()
            return messages.Value(msg.seq, count)
        if kind is messages.StorePointer:
            self.store[msg.id] = messages.RemoteRef(msg.id, msg.location, msg.id_at_location, msg.meta)
            return messages.Ack(msg.seq, (NEW, msg.id, *msg.meta))
        if kind is messages.RemoteGet:
            ref = self._resolve(msg.id, used)
            if type(ref) is not messages.RemoteRef:
                raise TypeError(f"remote_get(): object {msg.id} on worker {self.name!r} is already a tensor, "
                                "not a pointer")
            value = self._peer(ref.location).fetch(ref.id_at_location)  # on failure, the object stays there
            if type(value) is messages.RemoteRef:  # a longer chain: we now point where our target pointed
                value.id = msg.id
                self.store[msg.id] = value
                return messages.Ack(msg.seq, (NEW, msg.id, *value.meta))
            self.store[msg.id] = value
            return messages.Ack(msg.seq, (NEW, msg.id, *describe_meta(value)))
        if kind is messages.Export:
            value = self._resolve(msg.id, used)
            if type(value) is messages.RemoteRef:
                raise TypeError(f"cannot move object {msg.id} from worker {self.name!r}: it is a pointer to "
                                "another worker; call remote_get() first")
            descriptor = tensors.encode_tensor(value, [], self.namespace, -1)  # before removing: it may fail
            del self.store[msg.id]
            tags, description = self.tags.pop(msg.id, ((), None))
            return messages.Value(msg.seq, (descriptor, tags, description))
        if kind is messages.Import:
            value = tensors.decode_tensor(msg.descriptor, [], self.namespace)
            return messages.Ack(msg.seq, self._put(msg.id, value, msg.tags, msg.description))
        if kind is messages.Restore:
            return messages.Ack(msg.seq, self._restore(msg.id, msg.frames))
        if kind is messages.Aliases:
            return messages.Value(msg.seq, self.aliases(msg.id, used))
        if kind is messages.Search:
            return messages.Value(msg.seq, self.search(msg.query))
        if kind is messages.Shutdown:
            self.running = False
            return messages.Value(msg.seq, True)
        raise ProtocolError(f"a worker does not accept {kind.__name__} messages")

    def _free(self, msg: messages.Message) -> None:
        if type(msg) is messages.Free:
            for object_id in msg.ids:
                self._drop(object_id)

    def _put(self, object_id: int, value: torch.Tensor, tags: tuple, description: Any) -> tuple:
        """Store a tensor that arrived (Store, Import, Restore) on this worker's device; its Ack descriptor.

        Everything that can fail comes before the store: a failed Import must have stored nothing.
        """
        tagged = bool(tags) or description is not None
        if tagged:
            _check_tags(tags, description)
        if value.device != self.device:
            value = _to_device(value, self.device)
        self.store[object_id] = value
        if tagged:
            self.tags[object_id] = (tuple(tags), description)
        return (NEW, object_id, *describe_meta(value))

    def _restore(self, object_id: int, frames: tuple) -> tuple:
        """Put back an object whose Fetch reply (`frames`) its client could not take (Connection.fetch)."""
        if object_id in self.store:
            raise ProtocolError(f"cannot restore object {object_id} on worker {self.name!r}: the id is in use")
        if not all(type(frame) is bytes for frame in frames):
            raise ProtocolError("Restore carries frames that are not bytes")
        reply = codec.decode(list(frames), strict=True, namespace=self.namespace)
        value = reply.value if type(reply) is messages.Value else None
        tags, description = self._taken.pop(object_id, ((), None))
        if type(value) is messages.RemoteRef:
            value.id = object_id
            self.store[object_id] = value
            return (NEW, object_id, *value.meta)
        if not isinstance(value, torch.Tensor):
            raise ProtocolError(f"Restore of object {object_id} carries a {type(value).__name__}, not a tensor")
        return self._put(object_id, value, tags, description)

    def _put_back(self, object_id: int, value: Any) -> None:
        """Undo a Fetch(remove=True) whose reply could not be encoded."""
        if type(value) is tensors.Handover:
            value = tensors.reopen(value, self.namespace)
        self.store[object_id] = value
        tags = self._taken.pop(object_id, None)
        if tags is not None:
            self.tags[object_id] = tags

    def _drop(self, object_id: int) -> None:
        """Remove an object; a pointer we hold frees what it points to (only the newest pointer frees)."""
        obj = self.store.pop(object_id, None)
        self.tags.pop(object_id, None)
        if type(obj) is messages.RemoteRef:
            try:
                peer = self._peer(obj.location)
                peer.free(obj.id_at_location)
                # A round trip, so the free is done before we answer our client: otherwise the
                # client's next message to that worker could overtake it (different sockets).
                peer.request(lambda seq: messages.Objects(seq, False))
            except SimsyftError:
                pass  # the other worker is gone, and its objects with it

    def _peer(self, name: str) -> Any:
        """A client connection from this worker to worker `name` of the same simulation."""
        peer = self._peers.get(name)
        if peer is not None and peer.closed_reason is None:
            return peer
        if name == self.name:
            # A chain through ourselves (x.send(bob).send(bob)): a socket to ourselves would deadlock
            # our single thread, so the request is handled re-entrantly, still through the protocol.
            peer = self._peers[name] = _Loopback(self)
            return peer
        if self.run_dir is None:
            raise SimsyftError(f"worker {self.name!r} cannot reach worker {name!r}: pointer chains need "
                               "worker processes of one simulation")
        from .connection import ZmqConnection  # pyzmq only where a chain needs it

        pid = _peer_pid(self.run_dir, name)
        if pid is None:
            raise SimsyftError(f"worker {self.name!r} cannot reach worker {name!r}: no such worker in this simulation")
        peer = ZmqConnection(
            name, f"ipc://{self.run_dir}/{name}.sock", self.namespace,
            exit_status=lambda: None if pid_alive(pid) else -1,
            describe_exit=lambda: f"worker {name!r} (pid {pid}), reached through worker {self.name!r}, has exited",
            timeout_s=self.request_timeout_s, pid=pid,
        )
        self._peers[name] = peer
        return peer

    def _forward(self, msg: messages.Command, used: dict[int, Any]) -> tuple:
        """Run an op on pointers we hold: on the worker they point to, keeping pointers to the results."""
        refs = {oid: obj for oid, obj in used.items() if type(obj) is messages.RemoteRef}
        locations = sorted({ref.location for ref in refs.values()})
        if len(refs) != len(used) or len(locations) > 1:
            held = f"objects held by {self.name!r}" if len(refs) != len(used) else ""
            names = " and ".join([repr(n) for n in locations] + ([held] if held else []))
            raise LocationMismatchError(f"{msg.op} got pointers to {names}; move them to one place first")
        location = locations[0]

        def swap(value: Any) -> Any:
            kind = type(value)
            if kind is messages.RemoteRef:
                return messages.Ref(value.id_at_location)
            if kind is tuple or kind is list:
                return kind(swap(v) for v in value)
            if kind is dict:
                return {k: swap(v) for k, v in value.items()}
            return value

        remote_id = self._ids.getrandbits(63) or 1
        args, kwargs = swap(msg.args), swap(msg.kwargs)
        ack = self._peer(location).request(
            lambda seq: messages.Command(seq, msg.op, args, kwargs, remote_id, msg.grad_enabled, ()))
        by_remote = {ref.id_at_location: oid for oid, ref in refs.items()}
        return self._adopt(ack.result, msg.result_id, location, by_remote)

    def _adopt(self, desc: tuple, result_id: int, location: str, by_remote: dict[int, int]) -> tuple:
        kind = desc[0]
        if kind == NEW:
            self.store[result_id] = messages.RemoteRef(result_id, location, desc[1], tuple(desc[2:]))
            return (NEW, result_id, *desc[2:])
        if kind == SAME:
            local_id = by_remote[desc[1]]
            self.store[local_id].meta = tuple(desc[2:])
            return (SAME, local_id, *desc[2:])
        if kind == SEQUENCE:
            items = tuple(self._adopt(item, result_id if i == 0 else (self._ids.getrandbits(63) or 1), location,
                                      by_remote) for i, item in enumerate(desc[2]))
            return (SEQUENCE, desc[1], items)
        return desc

    def tag(self, object_id: int, tags: tuple, description: Any) -> None:
        _check_tags(tags, description)
        self.tags[object_id] = (tuple(tags), description)

    def search(self, query: tuple) -> tuple:
        """Objects carrying every tag in `query` (PySyft's worker.search)."""
        if not all(type(tag) is str for tag in query):  # str hashes are salted: no chosen collisions
            raise ProtocolError("a search query must be a tuple of tag strings")
        wanted = set(query)
        found = []
        for object_id, (tags, description) in self.tags.items():
            obj = self.store.get(object_id)
            if isinstance(obj, torch.Tensor) and wanted <= set(tags):
                found.append((object_id, describe_meta(obj), tags, description))
        return tuple(found)

    def aliases(self, object_id: int, used: dict[int, Any]) -> tuple:
        """Other stored tensors sharing object_id's memory (its base, its views), with their metadata."""
        target = self._resolve(object_id, used)
        address = target.untyped_storage().data_ptr() if isinstance(target, torch.Tensor) else 0
        if not address:
            return ()
        return tuple((oid, describe_meta(obj)) for oid, obj in self.store.items()
                     if oid != object_id and isinstance(obj, torch.Tensor)
                     and obj.device == target.device and obj.untyped_storage().data_ptr() == address)

    def load_data(self, items: list[dict]) -> None:
        """Load the config's data files into the store, tagged, before serving."""
        for item in items:
            value = torch.load(item["path"], map_location=self.device, weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"data item {item['key']!r} ({item['path']}) holds a {type(value).__name__}; "
                    "each data file must hold one tensor (torch.save(tensor, path))"
                )
            object_id = self._ids.getrandbits(63) or 1
            self.store[object_id] = value
            self.tag(object_id, tuple(item.get("tags") or ()), item.get("description"))

    def describe(self, result: Any, result_id: int, used: dict[int, Any], op: str) -> tuple:
        """Store a result and describe it for the client's Ack."""
        if isinstance(result, torch.Tensor):
            for object_id, obj in used.items():
                if obj is result:  # in-place op or out=: the caller's pointer stays the owner
                    return (SAME, object_id, *describe_meta(result))
            self.store[result_id] = result
            return (NEW, result_id, *describe_meta(result))
        if result is None:
            if (op == "torch.Tensor.__setitem__" or op.endswith(".__set__")) and used:
                # Mutated in place (x[0] = y, x.data = y): send back the target's fresh metadata.
                object_id, target = next(iter(used.items()))
                if isinstance(target, torch.Tensor):
                    return (SAME, object_id, *describe_meta(target))
            return (NOTHING,)
        if isinstance(result, _VALUE_TYPES):
            return (VALUE, result)
        if isinstance(result, (tuple, list)):
            kind = type(result)
            if kind is tuple or kind is list:
                type_name = kind.__name__
            elif kind.__module__ == "torch.return_types":
                type_name = f"torch.return_types.{kind.__name__}"
            else:
                type_name = "tuple"
            items = []
            for i, item in enumerate(result):
                item_id = result_id if i == 0 else self._ids.getrandbits(63) or 1
                items.append(self.describe(item, item_id, used, op))
            return (SEQUENCE, type_name, tuple(items))
        raise TypeError(f"{op} returned a {type(result).__name__}, which simsyft cannot point to or return")

    def info(self) -> dict:
        tensors = [v for v in self.store.values() if isinstance(v, torch.Tensor)]
        return {
            "name": self.name,
            "pid": os.getpid(),
            "device": str(self.device),
            "objects": len(self.store),
            "bytes": sum(t.numel() * t.element_size() for t in tensors),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "uptime": time.time() - self.started,
            "threads": torch.get_num_threads(),
            # Note [Views stay inside their storage] (ops.py): always empty; tests assert it.
            "views_outside_storage": sorted(oid for oid, v in self.store.items() if not _inside_storage(v)),
        }


class _Loopback(Connection):
    """A connection from a worker to itself, for chains that stay on one worker."""

    def __init__(self, core: WorkerCore) -> None:
        super().__init__(core.name, core.namespace)
        self.core = core
        self._replies: list = []

    def _send(self, frames: list) -> None:
        reply = self.core.handle([bytes(f) for f in frames])
        if reply is not None:
            self._replies.append([bytes(f) for f in reply])

    def _recv(self) -> list:
        return self._replies.pop(0)


def _inside_storage(value: Any) -> bool:
    """A stored tensor's view, and its .grad's, lie inside their storages (pointers trivially do)."""
    if not isinstance(value, torch.Tensor):
        return True
    grad = value.grad if value.is_leaf or value.retains_grad else None  # .grad of a non-leaf warns
    return ops.inside_storage(value) and (grad is None or ops.inside_storage(grad))
def _check_tags(tags: tuple, description: Any) -> None:
    if not all(isinstance(t, str) for t in tags) or not (description is None or isinstance(description, str)):
        raise ProtocolError("tags must be strings and a description a string or None")


def _peer_pid(run_dir: str, name: str) -> int | None:
    try:
        with open(os.path.join(run_dir, "pids.json")) as f:
            pid = json.load(f).get(name)
    except (OSError, ValueError):
        return None
    return int(pid) if pid is not None else None


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    grad = tensor.grad
    moved = tensor.detach().to(device).requires_grad_(tensor.requires_grad)
    if grad is not None:
        moved.grad = grad.to(device)
    return moved


def _cleanup_after_parent(spec: dict) -> None:
    # The owner died without shutting us down (kill -9): remove what it would have.
    # A worker started by an attached process must leave the owner's simulation alone.
    if spec.get("owns_run_dir", True):
        segments.sweep(spec["namespace"])
        shutil.rmtree(spec["run_dir"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import zmq

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    shm.raise_fd_limit()  # every segment it maps keeps two descriptors (shm.intact)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the user's terminal is the client's to handle
    torch.set_num_threads(int(spec.get("threads") or 1))
    if spec.get("cpus"):
        import psutil

        psutil.Process().cpu_affinity(list(spec["cpus"]))
    if spec.get("seed") is not None:
        torch.manual_seed(int(spec["seed"]))
    device = torch.device(spec.get("device") or "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if spec.get("gpu_memory_fraction"):
            torch.cuda.set_per_process_memory_fraction(float(spec["gpu_memory_fraction"]), device)
    core = WorkerCore(spec["name"], spec["namespace"], str(device), run_dir=spec["run_dir"],
                      request_timeout_s=float(spec.get("request_timeout_s", REQUEST_TIMEOUT_S)))
    core.load_data(spec.get("data") or [])
    parent = int(spec.get("parent_pid") or 0)
    memory_limit = int(spec.get("memory_limit") or 0)
    if memory_limit:
        import psutil

        me = psutil.Process()

    ctx = zmq_context()  # the one pointer chains' connections use: no IO thread to start later
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 250)
    sock.bind(spec["endpoint"])
    more = int(zmq.SNDMORE)  # a plain int: or-ing zmq's enum flags costs ~1 us a send
    try:
        if memory_limit and device.type == "cpu" and sys.platform == "linux":
            problem = limits.enforce(core.name, memory_limit, int(spec.get("threads") or 1))
            if problem is not None:
                print(f"simsyft worker {core.name!r}: {problem}; stopping", file=sys.stderr, flush=True)
                return 3
            core.memory_limit = memory_limit
        while core.running:
            try:
                # Copies: frames are small (tensor data above INLINE_MAX travels in segments),
                # and bytes are cheaper to make than zmq Frames.
                frames = sock.recv_multipart()
            except zmq.Again:
                if parent and os.getppid() != parent:
                    _cleanup_after_parent(spec)
                    return 0
                continue
            reply = core.handle(frames[1:])
            if reply is not None:
                sock.send(frames[0], more)
                if len(reply) == 1:
                    sock.send(reply[0])
                else:
                    sock.send_multipart(reply, copy=False)
            # The backstop of Note [Memory limit]. RSS also counts the pages of shared-memory
            # segments the worker touched (tensors sent to it), which the limit does not: only
            # when RSS alone is over is /proc read to leave them out.
            if memory_limit and me.memory_info().rss > memory_limit:
                used = limits.private_resident() or me.memory_info().rss
                if used > memory_limit:
                    print(f"simsyft worker {core.name!r}: memory limit exceeded: {used} bytes resident "
                          f"(not counting shared-memory segments) > memory_limit {memory_limit} bytes; stopping",
                          file=sys.stderr, flush=True)
                    return 3
    finally:
        sock.close(0)
        for peer in core._peers.values():
            peer.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
