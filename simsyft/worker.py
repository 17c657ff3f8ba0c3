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
from typing import Any

import torch

from . import executor, protocol, sharing
from .errors import ObjectNotFoundError, ProtocolError

__all__ = ["WorkerCore", "describe_meta", "main"]

_VALUE_TYPES = (bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)


def describe_meta(tensor: torch.Tensor) -> tuple:
    """What a client caches about a remote tensor, so shape/dtype need no round trip."""
    return (sharing.dtype_name(tensor.dtype), tuple(tensor.shape), tensor.requires_grad, str(tensor.device))


class WorkerCore:
    """A worker's store and message handling, independent of any transport."""

    def __init__(self, name: str, namespace: str = "", device: str = "cpu") -> None:
        self.name = name
        self.namespace = namespace
        self.device = torch.device(device)
        self.store: dict[int, Any] = {}
        self.tags: dict[int, tuple[tuple[str, ...], str | None]] = {}  # id -> (tags, description)
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
        try:
            msg = protocol.decode(frames, resolve=lambda ref: self._resolve(ref, used))
        except Exception as exc:  # noqa: BLE001 - a bad frame must never kill the worker
            return self._error(protocol.peek_seq(frames), exc)
        if not msg.wants_reply:
            self._free(msg)
            return None
        try:
            reply = self._dispatch(msg, used)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            return self._error(msg.seq, exc)
        self.messages_out += 1
        return protocol.encode(reply, self.namespace)

    def _error(self, seq: int, exc: BaseException) -> list:
        self.messages_out += 1
        reply = protocol.ErrorReply(
            seq, type(exc).__module__, type(exc).__qualname__, str(exc),
            "".join(traceback.format_exception(exc)), self.name,
        )
        return protocol.encode(reply)

    def _resolve(self, object_id: int, used: dict[int, Any]) -> Any:
        try:
            obj = self.store[object_id]
        except KeyError:
            raise ObjectNotFoundError(
                f"worker {self.name!r} has no object {object_id}: it was already returned by .get() or freed"
            ) from None
        used[object_id] = obj
        return obj

    # -- messages ---------------------------------------------------------
    def _dispatch(self, msg: protocol.Message, used: dict[int, Any]) -> protocol.Message:
        kind = type(msg)
        if kind is protocol.Command:
            for object_id in msg.free:  # none of these can be among the args: their pointers are gone
                self.store.pop(object_id, None)
            with torch.set_grad_enabled(msg.grad_enabled):
                result = executor.run(msg.op, msg.args, msg.kwargs)
            return protocol.Ack(msg.seq, self.describe(result, msg.result_id, used, msg.op))
        if kind is protocol.Store:
            value = msg.value
            if not isinstance(value, torch.Tensor):
                raise ProtocolError(f"Store carries a {type(value).__name__}; only tensors can be stored")
            if value.device != self.device:
                value = _to_device(value, self.device)
            self.store[msg.id] = value
            if msg.tags or msg.description is not None:
                self.tag(msg.id, msg.tags, msg.description)
            return protocol.Ack(msg.seq, ("p", msg.id, *describe_meta(value)))
        if kind is protocol.Fetch:
            self._resolve(msg.id, used)
            if msg.remove:
                value = self.store.pop(msg.id)
                self.tags.pop(msg.id, None)
            else:
                value = self.store[msg.id]
            return protocol.Value(msg.seq, value)
        if kind is protocol.Objects:
            if msg.values:
                return protocol.Value(msg.seq, tuple(self.store.items()))
            return protocol.Value(msg.seq, len(self.store))
        if kind is protocol.Info:
            return protocol.Value(msg.seq, self.info())
        if kind is protocol.Clear:
            count = len(self.store)
            self.store.clear()
            self.tags.clear()
            return protocol.Value(msg.seq, count)
        if kind is protocol.Export:
            self._resolve(msg.id, used)
            value = self.store.pop(msg.id)
            tags, description = self.tags.pop(msg.id, ((), None))
            return protocol.Value(msg.seq, (sharing.encode_tensor(value, [], self.namespace, -1), tags, description))
        if kind is protocol.Import:
            value = sharing.decode_tensor(msg.descriptor, [])
            if value.device != self.device:
                value = _to_device(value, self.device)
            self.store[msg.id] = value
            if msg.tags or msg.description is not None:
                self.tag(msg.id, msg.tags, msg.description)
            return protocol.Ack(msg.seq, ("p", msg.id, *describe_meta(value)))
        if kind is protocol.Search:
            return protocol.Value(msg.seq, self.search(msg.query))
        if kind is protocol.Shutdown:
            self.running = False
            return protocol.Value(msg.seq, True)
        raise ProtocolError(f"a worker does not accept {kind.__name__} messages")

    def _free(self, msg: protocol.Message) -> None:
        if type(msg) is protocol.Free:
            for object_id in msg.ids:
                self.store.pop(object_id, None)
                self.tags.pop(object_id, None)

    def tag(self, object_id: int, tags: tuple, description: Any) -> None:
        if not all(isinstance(t, str) for t in tags) or not (description is None or isinstance(description, str)):
            raise ProtocolError("tags must be strings and a description a string or None")
        self.tags[object_id] = (tuple(tags), description)

    def search(self, query: tuple) -> tuple:
        """Objects carrying every tag in `query` (PySyft's worker.search)."""
        wanted = set(query)
        found = []
        for object_id, (tags, description) in self.tags.items():
            obj = self.store.get(object_id)
            if isinstance(obj, torch.Tensor) and wanted <= set(tags):
                found.append((object_id, describe_meta(obj), tags, description))
        return tuple(found)

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
                    return ("a", object_id, *describe_meta(result))
            self.store[result_id] = result
            return ("p", result_id, *describe_meta(result))
        if result is None:
            return ("n",)
        if isinstance(result, _VALUE_TYPES):
            return ("v", result)
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
            return ("q", type_name, tuple(items))
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
        }


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
        sharing.sweep(spec["namespace"])
        shutil.rmtree(spec["run_dir"], ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import zmq

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
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
    core = WorkerCore(spec["name"], spec["namespace"], str(device))
    core.load_data(spec.get("data") or [])
    parent = int(spec.get("parent_pid") or 0)
    memory_limit = int(spec.get("memory_limit") or 0)
    if memory_limit:
        import psutil

        me = psutil.Process()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 250)
    sock.bind(spec["endpoint"])
    try:
        while core.running:
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.Again:
                if parent and os.getppid() != parent:
                    _cleanup_after_parent(spec)
                    return 0
                continue
            identity, request = frames[0], [f.buffer for f in frames[1:]]
            reply = core.handle(request)
            if reply is not None:
                sock.send_multipart([identity, *reply], copy=len(reply) == 1)
            if memory_limit and me.memory_info().rss > memory_limit:
                rss = me.memory_info().rss
                print(f"simsyft worker {core.name!r}: memory limit exceeded: RSS {rss} bytes > "
                      f"memory_limit {memory_limit} bytes; stopping", file=sys.stderr, flush=True)
                return 3
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
