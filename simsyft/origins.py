"""Gradients back to the client: its side of `send(..., requires_grad=True)` (PySyft 0.2's origin).

Owns the tensors this process sent with `requires_grad=True`, kept until the worker reports
their copy gone (Note [How long an origin is kept], worker/origins.py), and `collect`: after a
remote `backward()`, ask the workers that hold tracked copies for the gradients that reached
them (Note [Gradients go back through the client's round trips]), and continue backward here
from each local origin. Workers that were never sent or moved a tracked copy are never asked.
Imports the wire and gradients; never pointer or handles (both call it).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import WorkerCrashedError, WorkerShutdownError
from .gradients import backward_from
from .ids import new_id
from .wire import messages

__all__ = ["collect", "forget", "held", "hold", "mark_holder"]

# id -> the tensor a copy on a worker sends its gradients back to; by worker handle, its ids.
_HELD: dict[int, torch.Tensor] = {}
_BY_WORKER: dict[Any, set[int]] = {}
_HOLDERS: list[Any] = []  # the handles of workers sent or moved a tracked copy, in order
# Origins kept for one worker that prompt a look for released ones, so a loop of sends without a
# backward pass keeps a bounded number of tensors alive.
_CHECK_AT = 64
_NEXT_CHECK: dict[Any, int] = {}


def hold(worker: Any, tensor: torch.Tensor) -> int:
    """Keep `tensor` as the origin of a copy about to be tracked on `worker`; returns its id there."""
    ids = _BY_WORKER.setdefault(worker, set())
    if len(ids) >= _NEXT_CHECK.get(worker, _CHECK_AT):
        collect(worker)  # copies dropped without a backward pass since: forget their origins
        _NEXT_CHECK[worker] = max(_CHECK_AT, 2 * len(ids))
    origin_id = new_id()
    _HELD[origin_id] = tensor
    ids.add(origin_id)
    mark_holder(worker)
    return origin_id


def mark_holder(worker: Any) -> None:
    """`worker` holds a tracked copy: a backward pass there starts a collection."""
    if not worker.holds_origins:
        worker.holds_origins = True
        _HOLDERS.append(worker)


def forget(worker: Any, origin_id: int) -> None:
    """Drop an origin whose copy was never tracked (the TrackOrigin request failed)."""
    _HELD.pop(origin_id, None)
    _BY_WORKER.get(worker, set()).discard(origin_id)


def held(worker: Any = None) -> int:
    """How many origins this process keeps (for `worker`, or in all)."""
    return len(_HELD) if worker is None else len(_BY_WORKER.get(worker, ()))


def collect(worker: Any) -> None:
    """After a backward pass on `worker`: deliver every gradient it started, on every worker.

    The workers send each other theirs; the client's come back here and continue backward
    from their origins (`x.grad` fills, and a local graph upstream of `x` gets its gradients).
    """
    todo = [worker] if worker.holds_origins else []
    others = []
    if worker.holds_pointers:  # the pass may have run where its pointers point: ask every holder
        others = [h for h in _HOLDERS if h is not worker and h.simulation is worker.simulation]
    while todo or others:
        in_case = not todo  # a holder asked only in case the pass reached it
        current = todo.pop(0) if todo else others.pop(0)
        try:
            grads, released, reached = current.connection.request(lambda seq: messages.Grads(seq)).value
        except (WorkerShutdownError, WorkerCrashedError):
            if not in_case:
                raise
            continue  # stopped: its copies went with it
        ids = _BY_WORKER.get(current, set())
        for origin_id, grad in grads:
            origin = _HELD.get(origin_id)
            if origin is None:  # cannot happen while its copy lives: that is what keeps it
                raise RuntimeError(f"a gradient from worker {current.id!r} reached origin {origin_id}, "
                                   "which this process no longer keeps")
            backward_from(origin, grad)
        for origin_id in released:
            _HELD.pop(origin_id, None)
            ids.discard(origin_id)
        for name in reached:
            peer = current.peer(name)
            if peer.holds_origins and peer not in todo:
                if peer in others:
                    others.remove(peer)
                todo.append(peer)
