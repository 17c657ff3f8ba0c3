"""A worker's store and message handling, independent of any transport.

Owns `WorkerCore`: the object store (tensors, and pointers the worker holds),
tags, and one handler per message kind (`_HANDLERS`, a table keyed by the kinds
of wire/messages.py). No sockets: worker/main.py drives it from a ZeroMQ
socket, backends/inprocess.py in the client's own process. Reaches other
workers only through its `peers` (worker/peers.py), links the backend gives it.
Never imports the user layer (pointer, handles, hook): a worker holds tensors,
not pointers.

One worker, one thread: messages are handled strictly in arrival order, which
is what makes fire-and-forget Free and pipelined commands safe.
"""

from __future__ import annotations

import os
import time
import traceback
import weakref
from typing import Any, Callable

import torch

from ..errors import InvalidTensorForRemoteGet, LocationMismatchError, ObjectNotFoundError, ProtocolError, SimsyftError
from ..gradients import check_can_require_grad
from ..ids import new_id
from ..wire import args, codec, messages, tensors
from ..wire.messages import Result
from . import execute, limits, mpc
from .origins import CLIENT, Origins
from .peers import Peers

__all__ = ["WorkerCore", "describe_meta"]

NEW, SAME, VALUE, NOTHING, SEQUENCE = Result.NEW, Result.SAME, Result.VALUE, Result.NOTHING, Result.SEQUENCE

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

    def __init__(self, name: str, namespace: str = "", device: str = "cpu", peers: Peers | None = None) -> None:
        self.name = name
        self.namespace = namespace  # the simulation's: names the segments it sends, and the ones it accepts
        self.memory_limit: int | None = None  # set by worker/main.py once limits.enforce() applied it
        self.peers = peers if peers is not None else Peers()  # links to the other workers (chains, move)
        self.peers.bind(self)
        self.device = torch.device(device)
        self.store: dict[int, Any] = {}
        self.tags: dict[int, tuple[tuple[str, ...], str | None]] = {}  # id -> (tags, description)
        self._taken: dict[int, tuple[tuple[str, ...], str | None]] = {}  # tags of objects just fetched (Restore)
        self.origins = Origins(name)  # gradients back to where tensors came from (requires_grad=True)
        self.mpc = mpc.MpcState()  # openings between the two steps of a Beaver multiplication
        self.messages_in = 0
        self.messages_out = 0
        self.started = time.time()
        self.running = True
        # Set by a transport that can take in one-way deliveries while a handler waits for them
        # (worker/main.py; Note [One-way deals] in worker/mpc.py): pump(seconds) serves at most one.
        self.pump: Callable[[float], bool] | None = None

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
                # Only a Store stores nothing when it fails (so its sender, a client or a worker
                # moving data, keeps its segment); a failed op may have stored results over what
                # it received, which then stays ours.
                ok = type(msg) is not messages.Store
                return self._error(msg.seq, exc)
        finally:
            _IN_FLIGHT.claims = mark
            if claims:
                tensors.settle(claims, ok)
        if (type(msg) is messages.Command or type(msg) is messages.Triple) and not msg.reply:
            return None  # pipelined, or a one-way deal: only failures are answered
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

    # -- messages: one handler per kind, in _HANDLERS ------------------------------------------
    def _dispatch(self, msg: messages.Message, used: dict[int, Any]) -> messages.Message:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise ProtocolError(f"a worker does not accept {type(msg).__name__} messages")
        return handler(self, msg, used)

    def _on_command(self, msg: messages.Command, used: dict[int, Any]) -> messages.Message:
        for object_id in msg.free:  # none of these can be among the args: their pointers are gone
            self._drop(object_id)
        for obj in used.values():
            if type(obj) is messages.RemoteRef:
                return messages.Ack(msg.seq, self._forward(msg, used))
        if msg.grad_enabled == torch.is_grad_enabled():  # the usual case: no context manager to pay for
            result = execute.run(msg.op, msg.args, msg.kwargs)
        else:
            with torch.set_grad_enabled(msg.grad_enabled):
                result = execute.run(msg.op, msg.args, msg.kwargs)
        return messages.Ack(msg.seq, self.describe(result, msg.result_id, used, msg.op))

    def _on_store(self, msg: messages.Store, used: dict[int, Any]) -> messages.Message:
        value = msg.value
        if not isinstance(value, torch.Tensor):
            raise ProtocolError(f"Store carries a {type(value).__name__}; only tensors can be stored")
        return messages.Ack(msg.seq, self._put(msg.id, value, msg.tags, msg.description))

    def _on_fetch(self, msg: messages.Fetch, used: dict[int, Any]) -> messages.Message:
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

    def _on_objects(self, msg: messages.Objects, used: dict[int, Any]) -> messages.Message:
        if msg.values:
            if _IN_SEGMENTS:
                for object_id, obj in list(self.store.items()):
                    if isinstance(obj, torch.Tensor) and object_id in self.store:
                        self._check_segment(object_id, obj)
            return messages.Value(msg.seq, tuple(self.store.items()))
        return messages.Value(msg.seq, len(self.store))

    def _on_info(self, msg: messages.Info, used: dict[int, Any]) -> messages.Message:
        return messages.Value(msg.seq, self.info())

    def _on_clear(self, msg: messages.Clear, used: dict[int, Any]) -> messages.Message:
        count = len(self.store)
        for object_id in list(self.store):
            self._drop(object_id)
        self.tags.clear()
        return messages.Value(msg.seq, count)

    def _on_store_pointer(self, msg: messages.StorePointer, used: dict[int, Any]) -> messages.Message:
        self.store[msg.id] = messages.RemoteRef(msg.id, msg.location, msg.id_at_location, msg.meta)
        return messages.Ack(msg.seq, (NEW, msg.id, *msg.meta))

    def _on_remote_get(self, msg: messages.RemoteGet, used: dict[int, Any]) -> messages.Message:
        ref = self._resolve(msg.id, used)
        if type(ref) is not messages.RemoteRef:
            raise InvalidTensorForRemoteGet(
                "Tensor does not have attribute child. You remote get should be called on a chain of pointer "
                f"tensors, instead you called it on object {msg.id} of worker {self.name!r}, a tensor.")
        value = self.peers.get(ref.location).fetch(ref.id_at_location)  # on failure, the object stays there
        if type(value) is messages.RemoteRef:  # a longer chain: we now point where our target pointed
            value.id = msg.id
            self.store[msg.id] = value
            return messages.Ack(msg.seq, (NEW, msg.id, *value.meta))
        self.store[msg.id] = value
        return messages.Ack(msg.seq, (NEW, msg.id, *describe_meta(value)))

    def _on_transfer(self, msg: messages.Transfer, used: dict[int, Any]) -> messages.Message:
        value = self._resolve(msg.id, used)
        if type(value) is messages.RemoteRef:
            raise TypeError(f"cannot move object {msg.id} from worker {self.name!r}: it is a pointer to "
                            "another worker; call remote_get() first")
        if msg.destination == self.name:
            raise ValueError(f"object {msg.id} is already on worker {self.name!r}")
        if msg.requires_grad:
            check_can_require_grad(value)  # before anything moves
        tags, description = self.tags.get(msg.id, ((), None))
        # On the link to the destination: the bytes (a frame, or a segment) go worker to worker.
        peer = self.peers.get(msg.destination)
        ack = peer.request(lambda seq: messages.Store(seq, msg.new_id, value, tags, description))
        if msg.requires_grad:
            try:
                ack = peer.request(lambda seq: messages.TrackOrigin(seq, msg.new_id, self.name, msg.id))
            except Exception:
                peer.free(msg.new_id)  # the copy cannot send gradients back: it must not stay
                raise
            self.origins.hold(msg.id, value)  # out of the store: only gradients reach it now
        self.store.pop(msg.id)
        self.tags.pop(msg.id, None)
        if msg.keep_pointer:
            self.store[msg.id] = messages.RemoteRef(msg.id, msg.destination, msg.new_id, tuple(ack.result[2:]))
        return messages.Ack(msg.seq, ack.result)

    def _on_track_origin(self, msg: messages.TrackOrigin, used: dict[int, Any]) -> messages.Message:
        tensor = self._resolve(msg.id, used)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"object {msg.id} on worker {self.name!r} is a pointer; only a tensor can send "
                            "gradients back to its origin")
        self.origins.track(tensor, msg.origin, msg.id_at_origin)
        return messages.Ack(msg.seq, (NEW, msg.id, *describe_meta(tensor)))

    def _on_grads(self, msg: messages.Grads, used: dict[int, Any]) -> messages.Message:
        # Note [Gradients go back through the client's round trips] (worker/origins.py)
        reached = []
        for name in self.origins.waiting():
            grads, released = self.origins.take(name)
            try:
                self.peers.get(name).request(lambda seq: messages.OriginGrads(seq, grads, released))
            except SimsyftError:
                if grads:
                    self.origins.put_back(name, grads, released)
                    raise
                continue  # only releases, for a worker that is gone: its tensors went with it
            except Exception:
                self.origins.put_back(name, grads, released)
                raise
            reached.append(name)  # it may now have gradients or releases of its own for the client
        grads, released = self.origins.take(CLIENT)
        return messages.Value(msg.seq, (grads, released, tuple(reached)))

    def _on_origin_grads(self, msg: messages.OriginGrads, used: dict[int, Any]) -> messages.Message:
        self.origins.receive(msg.grads, msg.released)
        return messages.Value(msg.seq, None)

    def _on_restore(self, msg: messages.Restore, used: dict[int, Any]) -> messages.Message:
        return messages.Ack(msg.seq, self._restore(msg.id, msg.frames))

    def _on_aliases(self, msg: messages.Aliases, used: dict[int, Any]) -> messages.Message:
        return messages.Value(msg.seq, self.aliases(msg.id, used))

    def _on_search(self, msg: messages.Search, used: dict[int, Any]) -> messages.Message:
        return messages.Value(msg.seq, self.search(msg.query))

    def _on_shutdown(self, msg: messages.Shutdown, used: dict[int, Any]) -> messages.Message:
        self.running = False
        return messages.Value(msg.seq, True)

    def _free(self, msg: messages.Message) -> None:
        if type(msg) is messages.Free:
            for object_id in msg.ids:
                self._drop(object_id)

    def _put(self, object_id: int, value: torch.Tensor, tags: tuple, description: Any) -> tuple:
        """Store a tensor that arrived (Store, Restore) on this worker's device; its Ack descriptor.

        Everything that can fail comes before the store: a failed Store must have stored nothing.
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
                peer = self.peers.get(obj.location)
                peer.free(obj.id_at_location)
                # A round trip, so the free is done before we answer our client: otherwise the
                # client's next message to that worker could overtake it (different sockets).
                peer.request(lambda seq: messages.Objects(seq, False))
            except SimsyftError:
                pass  # the other worker is gone, and its objects with it

    def _forward(self, msg: messages.Command, used: dict[int, Any]) -> tuple:
        """Run an op on pointers we hold: on the worker they point to, keeping pointers to the results."""
        refs = {oid: obj for oid, obj in used.items() if type(obj) is messages.RemoteRef}
        locations = sorted({ref.location for ref in refs.values()})
        if len(refs) != len(used) or len(locations) > 1:
            held = f"objects held by {self.name!r}" if len(refs) != len(used) else ""
            names = " and ".join([repr(n) for n in locations] + ([held] if held else []))
            raise LocationMismatchError(f"{msg.op} got pointers to {names}; move them to one place first")
        location = locations[0]
        remote_id = new_id()
        wire_args, wire_kwargs = args.walk(msg.args, _TO_REF), args.walk(msg.kwargs, _TO_REF)
        ack = self.peers.get(location).request(
            lambda seq: messages.Command(seq, msg.op, wire_args, wire_kwargs, remote_id, msg.grad_enabled, ()))
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
            items = tuple(self._adopt(item, result_id if i == 0 else new_id(), location,
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

    def load_data(self, items: tuple) -> None:
        """Load the config's data files (config.DataItem) into the store, tagged, before serving."""
        for item in items:
            value = torch.load(item.path, map_location=self.device, weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"data item {item.key!r} ({item.path}) holds a {type(value).__name__}; "
                    "each data file must hold one tensor (torch.save(tensor, path))"
                )
            object_id = new_id()
            self.store[object_id] = value
            self.tag(object_id, tuple(item.tags), item.description)

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
                item_id = result_id if i == 0 else new_id()
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
            # Note [Views stay inside their storage] (worker/execute.py): always empty; tests assert it.
            "views_outside_storage": sorted(oid for oid, v in self.store.items() if not _inside_storage(v)),
            "links": self.peers.traffic(),  # traffic on its own links to its peers (the ledger merges it)
        }


def _inside_storage(value: Any) -> bool:
    """A stored tensor's view, and its .grad's, lie inside their storages (pointers trivially do)."""
    if not isinstance(value, torch.Tensor):
        return True
    grad = value.grad if value.is_leaf or value.retains_grad else None  # .grad of a non-leaf warns
    return execute.inside_storage(value) and (grad is None or execute.inside_storage(grad))
def _check_tags(tags: tuple, description: Any) -> None:
    if not all(isinstance(t, str) for t in tags) or not (description is None or isinstance(description, str)):
        raise ProtocolError("tags must be strings and a description a string or None")


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    grad = tensor.grad
    moved = tensor.detach().to(device).requires_grad_(tensor.requires_grad)
    if grad is not None:
        moved.grad = grad.to(device)
    return moved


def _to_ref(value: Any) -> Any:
    return messages.Ref(value.id_at_location)


# A pointer we hold becomes a reference to its object on the worker it points to (_forward).
_TO_REF = {messages.RemoteRef: _to_ref}

# Message kind -> handler. A new kind: its class in wire/messages.py, its handler here.
_HANDLERS: dict[type, Callable[[WorkerCore, Any, dict], messages.Message]] = {
    messages.Command: WorkerCore._on_command,
    messages.Store: WorkerCore._on_store,
    messages.Fetch: WorkerCore._on_fetch,
    messages.Objects: WorkerCore._on_objects,
    messages.Info: WorkerCore._on_info,
    messages.Clear: WorkerCore._on_clear,
    messages.StorePointer: WorkerCore._on_store_pointer,
    messages.RemoteGet: WorkerCore._on_remote_get,
    messages.Transfer: WorkerCore._on_transfer,
    messages.Restore: WorkerCore._on_restore,
    messages.TrackOrigin: WorkerCore._on_track_origin,
    messages.Grads: WorkerCore._on_grads,
    messages.OriginGrads: WorkerCore._on_origin_grads,
    messages.Aliases: WorkerCore._on_aliases,
    messages.Search: WorkerCore._on_search,
    messages.Shutdown: WorkerCore._on_shutdown,
    # SMPC (worker/mpc.py)
    messages.ShareOut: mpc.on_share_out,
    messages.Deal: mpc.on_deal,
    messages.Triple: mpc.on_triple,
    messages.Open: mpc.on_open,
    messages.Opened: mpc.on_opened,
    messages.Beaver: mpc.on_beaver,
    messages.Step: mpc.on_step,
    messages.Round: mpc.on_round,
}
