"""A link to a worker that is a Ray actor: messages batched into actor calls, big tensors as Ray objects.

Owns `RayLink`, the Ray backend's transport (the client's link to an actor, and one
actor's link to another). Messages are the same frames as on every link; what
changes is how they travel:

- Note [One actor call per batch]: an actor call costs ~10x a ZeroMQ round trip, so
  `_send` only queues frames; the first `_recv` sends everything queued (frees,
  pipelined commands, the request) as one `RayWorker.call` and reads its list of
  replies. A synchronous op is one actor call; N pipelined ops are one call per
  `_BATCH_MAX`. Calls of one caller run on the actor in order, as ZeroMQ's do.
- Large tensors cross through Ray's object store when the two ends are on different
  nodes (Note [Out-of-band buffers] in wire/tensors.py): the sender `ray.put`s the
  bytes and the message carries the reference, so a `move` goes from actor to actor
  and never through the client. On one node simsyft's own segments are used: they
  measured faster (docs/cluster.md).
- A dead actor (ray.kill, its node lost, out of memory) is a WorkerCrashedError
  naming the worker and Ray's cause, as soon as Ray reports it.

Traffic is counted by `Link` as on every backend: frames, and the bytes beside them
(segments or Ray objects) as `shm_bytes`. Imports links, wire and errors; Ray is
handed in (backends/ray.py imports it).
"""

from __future__ import annotations

import struct
import time
from collections import deque
from typing import Any

from ..errors import ProtocolError, WorkerCrashedError, WorkerTimeoutError
from ..links.link import Link
from ..wire.tensors import OUT_OF_BAND

__all__ = ["RayLink", "describe_death", "pack", "unpack"]

# Pipelined messages queued before they go without waiting for a sync point: bounds the
# memory a long pipeline holds here, and lets the actor start on it.
_BATCH_MAX = 256
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


def pack(batch: list[list[bytes]]) -> bytes:
    """Messages (each a list of frames) -> one bytes object. Ray passes bytes through at the cost
    of a bare call; a nested list of them measured ~130 us more per call (bench/ray_rows.py)."""
    parts = [_COUNT.pack(len(batch))]
    for frames in batch:
        parts.append(_COUNT.pack(len(frames)))
        for frame in frames:
            parts.append(_LENGTH.pack(len(frame)))
            parts.append(frame)
    return b"".join(parts)


def unpack(data: bytes) -> list[list[bytes]]:
    """Inverse of pack; a malformed batch is a ProtocolError."""
    view = memoryview(data)
    try:
        (count,), pos = _COUNT.unpack_from(view, 0), _COUNT.size
        batch = []
        for _ in range(count):
            (nframes,), pos = _COUNT.unpack_from(view, pos), pos + _COUNT.size
            frames = []
            for _ in range(nframes):
                (size,), pos = _LENGTH.unpack_from(view, pos), pos + _LENGTH.size
                if pos + size > len(view):
                    raise ProtocolError("a batch of messages is shorter than its frame lengths say")
                frames.append(bytes(view[pos:pos + size]))
                pos += size
            batch.append(frames)
    except struct.error as exc:
        raise ProtocolError(f"malformed batch of messages: {exc}") from None
    if pos != len(view):
        raise ProtocolError("a batch of messages has bytes after its last frame")
    return batch


class RayLink(Link):
    """Frames to a Ray actor's `call`, batched; replies read in order (Note [One actor call per batch])."""

    def __init__(self, name: str, actor: Any, namespace: str, timeout_s: float = 0.0, source: str = "me",
                 remote_node: bool = True, where: str = "") -> None:
        import ray

        super().__init__(name, namespace, timeout_s, source)
        self._ray = ray
        self.actor = actor
        self.remote_node = remote_node  # True: big tensors as Ray objects (segments cannot cross nodes)
        self.where = where  # "Ray actor ... on node ...", for error messages
        self.calls = 0  # actor calls made (bench/ and tests: a sync op is one)
        self.dead: str | None = None  # why the actor is gone, once known
        self._batch: list[list[bytes]] = []
        self._batch_refs: list[list | None] = []
        self._inflight: deque = deque()  # ObjectRefs of calls whose replies are not read yet
        self._replies: deque = deque()
        self._next_objs: list | None = None  # the out-of-band tensors of the message being sent
        self._reply_objs: list | None = None
        self._started = 0.0

    # -- Link's transport hooks ------------------------------------------------------------
    def _check_open(self) -> None:
        if self.dead is not None:
            raise WorkerCrashedError(self.dead)
        super()._check_open()
        self._started = time.monotonic()

    def _encode(self, msg: Any) -> list:
        # Always set, never inherited: an actor answering a caller on another node has its own
        # reply's list in OUT_OF_BAND.out while it asks a peer on its node (segments) for something.
        previous, OUT_OF_BAND.out = OUT_OF_BAND.out, [] if self.remote_node else None
        try:
            frames = super()._encode(msg)
            self._next_objs = OUT_OF_BAND.out
        finally:
            OUT_OF_BAND.out = previous
        return frames

    def _send(self, frames: list) -> None:
        objs, self._next_objs = self._next_objs, None
        # Put now: the caller may change its tensor before the batch goes (and the bytes then
        # wait in the object store of this node, for the actor to fetch from here).
        self._batch.append([bytes(f) for f in frames])
        self._batch_refs.append([self._ray.put(t.numpy()) for t in objs] if objs else None)
        if len(self._batch) >= _BATCH_MAX:
            self._flush()

    def _recv(self) -> list:
        if self._batch:
            self._flush()
        while not self._replies:
            if not self._inflight:
                raise ProtocolError(f"no reply is coming from worker {self.name!r}: nothing was asked")
            ref = self._inflight[0]
            wait = self._wait_s - (time.monotonic() - self._started) if self._wait_s else None
            try:
                result = self._ray.get(ref, timeout=max(wait, 0.001) if wait is not None else None)
            except self._ray.exceptions.GetTimeoutError:
                # Left in _inflight: its replies are read later, and Link drops the late one.
                raise WorkerTimeoutError(f"worker {self.name!r} did not answer within {self._wait_s:g} s") from None
            except self._ray.exceptions.RayActorError as exc:
                self.died(describe_death(exc))
                self.closed_reason = "crashed"
                raise WorkerCrashedError(self.dead) from None
            self._inflight.popleft()
            payload, refs = result if type(result) is tuple else (result, None)
            replies = unpack(payload)
            self._replies.extend(zip(replies, refs or [None] * len(replies)))
        frames, refs = self._replies.popleft()
        self._reply_objs = self._ray.get(refs) if refs else None
        return frames

    def _decode(self, frames: list, msg: Any) -> Any:
        previous, OUT_OF_BAND.into = OUT_OF_BAND.into, self._reply_objs  # this reply's own, or none
        try:
            return super()._decode(frames, msg)
        finally:
            OUT_OF_BAND.into, self._reply_objs = previous, None

    def _close(self) -> None:
        self._batch.clear()
        self._batch_refs.clear()
        self._inflight.clear()
        self._replies.clear()

    # -- Ray ----------------------------------------------------------------------------------
    def _flush(self) -> None:
        batch, refs, self._batch, self._batch_refs = self._batch, self._batch_refs, [], []
        # One argument where it can: each more costs an actor call ~35 us (bench/ray_rows.py).
        payload = (b"r" if self.remote_node else b"l") + pack(batch)
        if any(refs):
            self._inflight.append(self.actor.call_with.remote(payload, refs))
        else:
            self._inflight.append(self.actor.call.remote(payload))
        self.calls += 1

    def died(self, cause: str) -> None:
        """Record that the actor is gone: every later call raises WorkerCrashedError with `cause`."""
        if self.dead is None:
            where = f" ({self.where})" if self.where else ""
            self.dead = f"worker {self.name!r}{where} died: {cause}"


def describe_death(exc: BaseException) -> str:
    """Ray's cause of an actor's death, in one or two lines (its messages run to a page)."""
    text = " ".join(str(exc).split())
    for marker in ("The actor died because", "The actor is dead because", "ray.kill", "OutOfMemory",
                   "node", "exited"):
        at = text.find(marker)
        if at >= 0:
            return text[at:at + 300]
    return text[:300] or type(exc).__name__
