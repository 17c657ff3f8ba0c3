"""One party's link to another: send a message, wait for its reply, surface crashes, count bytes.

Owns `Link`, the one path every message between two parties takes: the client
to a worker (a handle's `connection`) and a worker to another (pointer chains,
`move`). It numbers requests, batches frees, matches replies, rebuilds remote
exceptions, enforces the request timeout, and counts the traffic of both
directions (`LinkStats`: messages, bytes in frames, bytes through shared
memory). Transports subclass it with `_send`/`_recv`/`_close`: ZeroMQ
(links/zmq.py), a worker in this process (backends/inprocess.py), a worker
reaching itself (worker/peers.py). Traffic accounting and network emulation
belong here, in one place. Imports wire, config (the default timeout) and
errors; never the worker loop nor the user layer.

Speed is guarded by bench/ (row "small sync op" against a raw REQ/REP).
"""

from __future__ import annotations

import builtins
import threading
from typing import Any, Callable

from .. import errors
from ..errors import RemoteError, WorkerShutdownError, WorkerTimeoutError
from ..network import QUIET_STAMP
from ..wire import codec, messages, tensors

__all__ = ["Link", "LinkStats", "rebuild_exception"]

_FREE_BATCH = 256
_IN_FLIGHT = tensors.IN_FLIGHT  # the segments of the message in progress on this thread (wire/segments.py)


class LinkStats:
    """Traffic in one direction of a link: messages, bytes in frames, and bytes that crossed
    through shared memory (what a real network would carry on top of the frames)."""

    __slots__ = ("messages", "bytes", "shm_bytes")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.shm_bytes = 0

    def as_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "bytes": self.bytes, "shm_bytes": self.shm_bytes}

    def __repr__(self) -> str:
        return f"<LinkStats messages={self.messages} bytes={self.bytes} shm_bytes={self.shm_bytes}>"


class Link:
    """One party's link to another (`source` -> `name`), independent of transport.

    Subclasses implement `_send(frames)` and `_recv() -> frames`; `_recv` must
    raise WorkerCrashedError when the worker is gone rather than block forever, and
    WorkerTimeoutError once the current request has waited `_wait_s` seconds (0: never).
    """

    # Traffic accounting is always on; bench/ turns it off on one link to measure its cost
    # (row "small sync op, traffic not counted").
    counting = True

    def __init__(self, name: str, namespace: str = "", timeout_s: float = 0.0, source: str = "me") -> None:
        self.name = name  # the party at the other end
        self.source = source  # this end: "me" for the client, a worker's name for worker to worker
        self.namespace = namespace
        self.timeout_s = timeout_s  # [simulation] request_timeout_s; 0 waits forever
        self.pid: int | None = None  # the worker's, when known: named in timeout errors
        self._wait_s = timeout_s  # the current request's timeout
        self._abandoned: set[int] = set()  # seqs of requests that timed out: their late replies are dropped
        self.closed_reason: str | None = None
        self._seq = 0
        self._pending_free: list[int] = []
        self._deferred: list[messages.ErrorReply] = []  # failures of pipelined commands, not yet raised
        self.posted = 0  # pipelined commands sent since the last synchronising request
        self._lock = threading.RLock()
        self.sent = LinkStats()  # source -> name
        self.received = LinkStats()  # name -> source
        self._armed: list = []  # segments sent in messages the worker has not answered yet (tensors.reclaim)
        # The network model (network.py), where the simulation has one: every message then
        # carries a stamp (its send time and size) as its last frame, and replies move our clock.
        self.net: Any = None
        self._out_shm = 0  # shared-memory bytes of the message being sent

    # -- transport hooks --------------------------------------------------
    def _send(self, frames: list) -> None:
        raise NotImplementedError

    def _recv(self) -> list:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- public -----------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def request(self, make: Callable[..., messages.Message], carries_free: bool = False,
                timeout_s: float | None = None, quiet: bool = False) -> messages.Message:
        """Send `make(seq)` and return its reply; remote exceptions are raised here.

        With `carries_free`, `make(seq, free_ids)` puts the pending frees into the
        message itself (Command does), saving a message per dropped pointer. Past
        `timeout_s` (default: the connection's `timeout_s`; 0 waits forever) it raises
        WorkerTimeoutError, and the connection stays usable (Note [Late replies]).
        A `quiet` request (status, readiness, the ledger's own questions) is left out of the
        traffic: a deployment would not send it. It must carry no tensor.
        """
        with self._lock:
            self._check_open()
            self._wait_s = self.timeout_s if timeout_s is None else timeout_s
            msg = None
            try:
                if carries_free:
                    ids, self._pending_free = tuple(self._pending_free), []
                    msg = make(self.next_seq(), ids)
                else:
                    self._flush_free()
                    msg = make(self.next_seq())
                frames = self._encode(msg)
                if quiet:
                    self._send_quiet(frames)
                else:
                    self._transmit(frames)
                while True:
                    frames = self._recv()
                    reply = self._decode(frames, msg)
                    if reply.seq == msg.seq or (reply.seq == -1 and isinstance(reply, messages.ErrorReply)):
                        if quiet and self.counting:
                            self.received.messages -= 1
                            self.received.bytes -= codec.frames_size(frames)
                        break
                    if reply.seq in self._abandoned:
                        self._abandoned.discard(reply.seq)  # Note [Late replies]
                    elif isinstance(reply, messages.ErrorReply):
                        self._deferred.append(reply)  # a pipelined command failed earlier
                    # Anything else answers an older request (one abandoned by KeyboardInterrupt): drop it.
            except WorkerTimeoutError:
                # Note [Late replies]: the worker may still answer (it was stopped, or busy). The seq
                # tells that answer apart, so it is dropped, even an error, which must not surface
                # later as if a pipelined op had failed. Pipelined failures before it stay deferred.
                if msg is not None:
                    self._abandoned.add(msg.seq)
                raise self._timed_out(msg, "answer") from None
            self.posted = 0
            if type(reply) is messages.ErrorReply and reply.type_name == "WorkerUnavailableError" and carries_free:
                self._pending_free[:0] = msg.free  # refused unread (offline): its frees go with the next message
            deferred, self._deferred = self._deferred, []
            if self._armed:
                armed, self._armed = self._armed, []
                # The worker is done with every message so far. One it handled decoded all its tensors,
                # so only a failure can leave a segment unreceived: free those.
                if deferred or type(reply) is messages.ErrorReply:
                    tensors.reclaim(armed)
        if deferred:
            # Note [Errors in pipelined mode]: the first failure since the last synchronising
            # call is raised here, at the next one; later failures usually follow from it.
            raise rebuild_exception(deferred[0])
        if isinstance(reply, messages.ErrorReply):
            raise rebuild_exception(reply)
        return reply

    def post(self, make: Callable[[int, tuple], messages.Message]) -> None:
        """Send `make(seq, free_ids)` without waiting (pipelined mode); only failures are answered."""
        with self._lock:
            self._check_open()
            self._wait_s = self.timeout_s  # only waits if the worker's queue is full (ZeroMQ's high-water mark)
            ids, self._pending_free = tuple(self._pending_free), []
            msg = make(self.next_seq(), ids)
            try:
                self._transmit(self._encode(msg))
            except WorkerTimeoutError:
                raise self._timed_out(msg, "accept") from None
            self.posted += 1

    def send_oneway(self, make: Callable[[int], messages.Message]) -> None:
        """Send `make(seq)`, a message the other end answers only if it fails (a deal of triple
        shares); its failure is raised at the next request on this link."""
        with self._lock:
            self._check_open()
            self._flush_free()
            kept = len(self._armed)
            self._transmit(self._encode(make(self.next_seq())))
            # No reply will settle its segments: the receiver owns them once it decodes the message
            # (a failed decode leaves them to the simulation's sweep at shutdown).
            del self._armed[kept:]

    def fetch(self, object_id: int) -> Any:
        """The value of object `object_id`, removed from the worker (`.get()`).

        If this process cannot take the reply (a segment it cannot map, say), the reply goes back
        to the worker (Restore), which puts the object back under its id with its tags: the error
        says so, and the call can be retried. The worker can always reopen its own segment.
        """
        try:
            return self.request(lambda seq: messages.Fetch(seq, object_id, True)).value
        except _NotTaken as exc:
            failure = exc
        frames = tuple(bytes(f) for f in failure.frames)
        try:
            self.request(lambda seq: messages.Restore(seq, object_id, frames))
        except errors.SimsyftError as exc:
            raise errors.ProtocolError(
                f"could not receive object {object_id} from worker {self.name!r} ({failure}), and giving it back "
                f"failed too ({exc}): the object is lost") from failure
        raise errors.ProtocolError(
            f"could not receive object {object_id} from worker {self.name!r}: {failure}. The object is still on "
            "the worker: retry, or free it") from failure

    def sync(self) -> None:
        """A round trip, raising the first failure of any pipelined command sent before it."""
        self.request(lambda seq: messages.Objects(seq, False))

    def free(self, object_id: int) -> None:
        """Queue a remote object for deletion; sent with the next message (batched, no reply)."""
        # Called from PointerTensor.__del__, possibly mid-send on this thread: only append here.
        self._pending_free.append(object_id)
        if len(self._pending_free) >= _FREE_BATCH and self._lock.acquire(blocking=False):
            try:
                if self.closed_reason is None:
                    self._flush_free()
            except errors.SimsyftError:
                pass  # the worker is gone: its objects went with it
            finally:
                self._lock.release()

    def free_now(self, object_id: int) -> None:
        """Free a remote object and wait until the worker has: for the head of a pointer chain,
        whose worker in turn frees what it points to (PySyft freed a whole chain at once).

        Falls back to `free()` (batched) where a round trip cannot be made safely: inside a
        request on this thread (a __del__ run by the garbage collector mid-send), while another
        thread talks to the worker, or while pipelined failures wait to be raised at a sync point.
        """
        lock = self._lock
        if lock._is_owned() or self.posted or self._deferred or not lock.acquire(blocking=False):
            self.free(object_id)
            return
        try:
            if self.closed_reason is None:
                self._pending_free.append(object_id)
                self.request(lambda seq: messages.Objects(seq, False))  # sends the frees first
        except errors.SimsyftError:
            pass  # the worker is gone: its objects went with it
        finally:
            lock.release()

    def close(self, reason: str = "closed") -> None:
        with self._lock:
            if self.closed_reason is None:
                if reason == "detached":  # the worker lives on: do not leave our dropped objects on it
                    try:
                        self._flush_free()
                    except errors.SimsyftError:
                        pass
                self.closed_reason = reason
                self._pending_free.clear()
                self._close()

    def traffic(self) -> dict[str, int]:
        """Bytes and messages both ways, counted where they are encoded and decoded.

        `bytes_*` are the frames' bytes; `shm_bytes_*` the tensor bytes that crossed through
        shared-memory segments instead (a real network would carry both).
        """
        return {
            "bytes_sent": self.sent.bytes,
            "bytes_received": self.received.bytes,
            "messages_sent": self.sent.messages,
            "messages_received": self.received.messages,
            "shm_bytes_sent": self.sent.shm_bytes,
            "shm_bytes_received": self.received.shm_bytes,
        }

    def ask_to_exit(self, timeout: float = 5.0) -> bool:
        """Tell the worker to leave its loop (Shutdown), without waiting for its answer; then close.

        Returns whether the message went out (a busy link is given up after `timeout`: the
        caller then stops the worker by other means).
        """
        sent = False
        if self.closed_reason is None and self._lock.acquire(timeout=timeout):
            try:
                self._send_quiet(codec.encode(messages.Shutdown(self.next_seq())))  # the simulation's own
                sent = True
            except Exception:  # noqa: BLE001 - best effort: the caller kills a worker that stays
                pass
            finally:
                self._lock.release()
        self.close("shut down")
        return sent

    def check_alive(self) -> None:
        """Raise now if the other end is known to be gone (crashed or closed); no message is sent."""
        with self._lock:
            self._check_open()

    # -- internals --------------------------------------------------------
    def _timed_out(self, msg: messages.Message | None, verb: str) -> WorkerTimeoutError:
        pid = "" if self.pid is None else f" (pid {self.pid})"
        return WorkerTimeoutError(
            f"worker {self.name!r}{pid} did not {verb} {_describe_request(msg, self.posted)} within "
            f"{self._wait_s:g} s; it may be stopped, hung, or busy with a long op: check it with "
            "`simsyft status`, or raise [simulation] request_timeout_s (0 waits forever). "
            "This connection stays usable if the worker resumes"
        )

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise WorkerShutdownError(f"worker {self.name!r} is {self.closed_reason}; start it again to use it")

    def _transmit(self, frames: list) -> None:
        if self.counting:
            stats = self.sent
            stats.bytes += codec.frames_size(frames)
            stats.messages += 1
        net = self.net
        if net is not None:
            frames = [*frames, net.stamp(codec.frames_size(frames) + self._out_shm)]
        self._send(frames)

    def _send_quiet(self, frames: list) -> None:
        """Send what is not traffic (status, readiness, the ledger's questions, Shutdown)."""
        self._send(frames if self.net is None else [*frames, QUIET_STAMP])

    def _encode(self, msg: messages.Message) -> list:
        # tensors.sending() / sent(), inline: this runs for every message.
        mark = _IN_FLIGHT.sent
        _IN_FLIGHT.sent = armed = []
        shm_before = _IN_FLIGHT.shm_bytes
        try:
            frames = codec.encode(msg, self.namespace)
        except BaseException:
            tensors.reclaim(armed)  # never sent: free what the encode armed
            raise
        finally:
            _IN_FLIGHT.sent = mark
        if armed:
            self._armed += armed
        self._out_shm = shm = _IN_FLIGHT.shm_bytes - shm_before
        if self.counting:
            self.sent.shm_bytes += shm
        return frames

    def _decode(self, frames: list, msg: messages.Message) -> messages.Message:
        # Note [Segment ownership]: an undecodable reply to a Fetch(remove=True) is given back to
        # the worker (fetch), so what this decode received is re-armed, not kept.
        mark = _IN_FLIGHT.claims  # tensors.receiving() / received(), inline
        _IN_FLIGHT.claims = claims = []
        ok = True
        net = self.net
        stamp = frames.pop() if net is not None else None  # Link._transmit's, or the worker's
        counting = self.counting
        if counting:
            stats = self.received
            stats.bytes += codec.frames_size(frames)
            stats.messages += 1
        shm_before = _IN_FLIGHT.shm_bytes
        try:
            reply = codec.decode(frames, namespace=self.namespace)
            shm = _IN_FLIGHT.shm_bytes - shm_before
            if counting:
                stats.shm_bytes += shm
            if net is not None:
                net.receive(stamp, codec.frames_size(frames) + shm)  # our clock waits for it
            return reply
        except errors.SimsyftError as exc:
            if type(msg) is messages.Fetch and msg.remove and codec.peek_seq(frames) == msg.seq:
                ok = False
                raise _NotTaken(str(exc), frames) from exc
            raise
        finally:
            _IN_FLIGHT.claims = mark
            if claims:
                tensors.settle(claims, ok)

    def _flush_free(self) -> None:
        if self._pending_free:
            ids, self._pending_free = self._pending_free, []
            self._out_shm = 0
            self._transmit(codec.encode(messages.Free(tuple(ids))))


_REQUEST_NAMES = {
    messages.Fetch: "get()", messages.Store: "send()", messages.Info: "info()", messages.Clear: "clear_objects()",
    messages.Search: "search()", messages.Transfer: "move()", messages.Objects: "_objects",
    messages.RemoteGet: "remote_get()", messages.Aliases: "an alias query",
}


def _describe_request(msg: messages.Message | None, posted: int) -> str:
    """What a request asked, for a timeout message: 'torch.add', 'get()', ..."""
    if msg is None:
        return "the frees of dropped pointers"
    if type(msg) is messages.Command:
        what = msg.op
    elif type(msg) is messages.Objects and not msg.values and posted:
        return f"a sync point after {posted} pipelined op{'s' if posted != 1 else ''}"
    else:
        what = _REQUEST_NAMES.get(type(msg), type(msg).__name__)
    return what + (f" (after {posted} pipelined op{'s' if posted != 1 else ''})" if posted else "")


class _NotTaken(errors.ProtocolError):
    """A Fetch(remove=True) reply this process could not decode; `fetch` hands its frames back."""

    def __init__(self, message: str, frames: list) -> None:
        super().__init__(message)
        self.frames = frames


def _allowed_exception_types() -> dict[tuple[str, str], type]:
    table: dict[tuple[str, str], type] = {}
    for name, value in vars(builtins).items():
        if isinstance(value, type) and issubclass(value, Exception):
            table[("builtins", name)] = value
    for name in errors.__all__:
        cls = getattr(errors, name)
        table[(cls.__module__, cls.__qualname__)] = cls
    import torch

    for cls in (torch.OutOfMemoryError, torch.linalg.LinAlgError, torch.AcceleratorError if hasattr(torch, "AcceleratorError") else None):
        if cls is not None:
            table[(cls.__module__, cls.__qualname__)] = cls
    return table


_EXCEPTION_TYPES: dict[tuple[str, str], type] | None = None


def rebuild_exception(reply: messages.ErrorReply) -> Exception:
    """The remote exception as the same type and message, plus the worker's name.

    Only builtin, torch and simsyft exception types are rebuilt; anything else
    becomes RemoteError carrying the type's name. The remote traceback is
    attached as a note (shown by Python's traceback printer).
    """
    global _EXCEPTION_TYPES
    if _EXCEPTION_TYPES is None:
        _EXCEPTION_TYPES = _allowed_exception_types()
    where = f"(raised on worker {reply.worker!r})"
    already_named = f"worker {reply.worker!r}" in reply.message
    text = reply.message if already_named else f"{reply.message} {where}"
    cls = _EXCEPTION_TYPES.get((reply.type_module, reply.type_name))
    exc: Exception
    if cls is None:
        exc = RemoteError(f"{reply.type_module}.{reply.type_name}: {text}", reply.type_name)
    else:
        try:
            exc = cls(text)
        except Exception:  # noqa: BLE001 - types needing extra constructor args fall back
            exc = RemoteError(f"{reply.type_module}.{reply.type_name}: {text}", reply.type_name)
    exc.add_note(f"remote traceback (worker {reply.worker!r}):\n{reply.traceback.rstrip()}")
    return exc
