"""The client side of one worker: send a message, wait for its reply, surface crashes.

Owns `Connection` (sequence numbers, batched frees, error rebuilding, traffic
counters) and `ZmqConnection` (a DEALER socket over ipc). This is the seam
between the user layer and transports: simsyft.testing provides an in-process
connection with the same interface, so pointer code runs without processes.
Imports protocol, sharing (segment receipts), config (the default timeout) and
errors; never the worker loop nor the user layer.

Speed is guarded by bench/ (row "small sync op" against a raw REQ/REP).
"""

from __future__ import annotations

import builtins
import os
import signal
import threading
import time
from typing import Any, Callable

from . import errors

from .wire import codec, messages, tensors
from .config import REQUEST_TIMEOUT_S
from .errors import RemoteError, WorkerCrashedError, WorkerShutdownError, WorkerTimeoutError

__all__ = ["Connection", "ZmqConnection", "pid_alive", "rebuild_exception"]

# A blocking receive with a timeout beats poll()+recv() by ~25 us per round trip
# (DESIGN.md); 100 ms bounds how late a crash, or the end of request_timeout_s, is noticed.
_RECV_TIMEOUT_MS = 100
# Before a request, whether the worker process still exists is asked at most this often
# (a waitpid, or /proc for an attached client: 2-10 us, more than the rest of a small op's
# client work). In between, a dead worker is still noticed by the send or receive timeout.
_LIVENESS_INTERVAL_S = 0.05
_FREE_BATCH = 256
_IN_FLIGHT = tensors.IN_FLIGHT  # the segments of the message in progress on this thread (pool.py)


class Connection:
    """Client side of one worker, independent of transport.

    Subclasses implement `_send(frames)` and `_recv() -> frames`; `_recv` must
    raise WorkerCrashedError when the worker is gone rather than block forever, and
    WorkerTimeoutError once the current request has waited `_wait_s` seconds (0: never).
    """

    def __init__(self, name: str, namespace: str = "", timeout_s: float = 0.0) -> None:
        self.name = name
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
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self._armed: list = []  # segments sent in messages the worker has not answered yet (tensors.reclaim)

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
                timeout_s: float | None = None) -> messages.Message:
        """Send `make(seq)` and return its reply; remote exceptions are raised here.

        With `carries_free`, `make(seq, free_ids)` puts the pending frees into the
        message itself (Command does), saving a message per dropped pointer. Past
        `timeout_s` (default: the connection's `timeout_s`; 0 waits forever) it raises
        WorkerTimeoutError, and the connection stays usable (Note [Late replies]).
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
                self._transmit(self._encode(msg))
                while True:
                    frames = self._recv()
                    self.bytes_received += codec.frames_size(frames)
                    self.messages_received += 1
                    reply = self._decode(frames, msg)
                    if reply.seq == msg.seq or (reply.seq == -1 and isinstance(reply, messages.ErrorReply)):
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
        """Bytes and messages that went through the socket, counted at the protocol layer."""
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
        }

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
        self.bytes_sent += codec.frames_size(frames)
        self.messages_sent += 1
        self._send(frames)

    def _encode(self, msg: messages.Message) -> list:
        # tensors.sending() / sent(), inline: this runs for every message.
        mark = _IN_FLIGHT.sent
        _IN_FLIGHT.sent = armed = []
        try:
            frames = codec.encode(msg, self.namespace)
        except BaseException:
            tensors.reclaim(armed)  # never sent: free what the encode armed
            raise
        finally:
            _IN_FLIGHT.sent = mark
        if armed:
            self._armed += armed
        return frames

    def _decode(self, frames: list, msg: messages.Message) -> messages.Message:
        # Note [Segment ownership]: an undecodable reply to a Fetch(remove=True) is given back to
        # the worker (fetch), so what this decode received is re-armed, not kept.
        mark = _IN_FLIGHT.claims  # tensors.receiving() / received(), inline
        _IN_FLIGHT.claims = claims = []
        ok = True
        try:
            return codec.decode(frames, namespace=self.namespace)
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
            self._transmit(codec.encode(messages.Free(tuple(ids))))


_REQUEST_NAMES = {
    messages.Fetch: "get()", messages.Store: "send()", messages.Info: "info()", messages.Clear: "clear_objects()",
    messages.Search: "search()", messages.Export: "move()", messages.Import: "move()", messages.Objects: "_objects",
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


class ZmqConnection(Connection):
    """A DEALER socket connected to the worker's ROUTER over ipc://."""

    def __init__(self, name: str, endpoint: str, namespace: str, exit_status: Callable[[], Any],
                 describe_exit: Callable[[], str], timeout_s: float = REQUEST_TIMEOUT_S,
                 pid: int | None = None) -> None:
        import zmq

        super().__init__(name, namespace, timeout_s)
        self._zmq = zmq
        self._exit_status = exit_status  # returns the exit code once the process is gone, else None
        self._describe_exit = describe_exit
        self.pid = pid
        self._started = 0.0  # when the current request began (set in _check_open)
        self._sock = _context().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, _RECV_TIMEOUT_MS)
        self._sock.setsockopt(zmq.SNDTIMEO, _RECV_TIMEOUT_MS)
        self._sock.connect(endpoint)
        self._next_liveness_check = 0.0

    def _dead(self) -> WorkerCrashedError | None:
        if self._exit_status() is None:
            return None
        message = self._describe_exit()
        self.closed_reason = "crashed"
        self._sock.close(0)
        return WorkerCrashedError(message)

    def _check_open(self) -> None:
        if self.closed_reason == "crashed":
            raise WorkerCrashedError(self._describe_exit())
        super()._check_open()
        now = time.monotonic()
        self._started = now  # the request's clock for request_timeout_s (read only once it waits)
        if now >= self._next_liveness_check:
            self._next_liveness_check = now + _LIVENESS_INTERVAL_S
            crashed = self._dead()
            if crashed is not None:
                raise crashed

    def _send(self, frames: list) -> None:
        while True:
            try:
                if len(frames) == 1:  # a compact or small message: skip send_multipart's checks
                    self._sock.send(frames[0])
                else:
                    # Zero-copy only pays for large frames; below that pyzmq's tracking costs more than a copy.
                    self._sock.send_multipart(frames, copy=False)
                return
            except self._zmq.Again:
                self._still_there()

    def _recv(self) -> list:
        while True:
            try:
                return self._sock.recv_multipart(copy=True)
            except self._zmq.Again:
                self._still_there()

    def _still_there(self) -> None:
        """After 100 ms without progress: a dead worker is a crash (checked first, so a crash is
        never reported as a timeout), and one that is alive but silent past the timeout, a timeout."""
        crashed = self._dead()
        if crashed is not None:
            raise crashed from None
        if self._wait_s and time.monotonic() - self._started >= self._wait_s:
            # request() and post() replace this text with one that names what was asked.
            raise WorkerTimeoutError(f"worker {self.name!r} did not answer within {self._wait_s:g} s")

    def _close(self) -> None:
        self._sock.close(0)


_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def _context():
    global _CONTEXT
    import zmq

    with _CONTEXT_LOCK:
        if _CONTEXT is None or _CONTEXT.closed:
            _CONTEXT = zmq.Context()
    return _CONTEXT


def signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f" ({signal.Signals(-code).name})"
        except ValueError:
            return ""
    return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent's wait() is missing
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
