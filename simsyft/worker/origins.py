"""A worker's part in sending gradients back to where a tensor came from (`requires_grad=True`).

Owns `Origins`: the copies this worker tracks (a hook per copy stashes the gradient that reaches
it, for its origin: the client "me", or the worker it was moved from), the origin tensors this
worker keeps for copies it moved away, and the running of backward from those when their
gradients come back. Imports torch, errors and gradients; never the user layer, nor any link: WorkerCore
(worker/core.py) carries what this stashes.

Note [Gradients go back through the client's round trips]
    A hook runs inside a backward pass, inside the handling of a request. Sending the gradient
    on from there would be a request inside a request: with copies moved both ways (alice to
    bob and bob to alice) two workers would wait on each other. So hooks only stash. After a
    remote backward() the client sends `Grads` to the worker it ran on: that worker sends the
    stashed gradients worker to worker (`OriginGrads`), whose backward passes stash in turn,
    and returns the client's own, with the names of the workers it reached; the client asks
    those next, until none is left. Only workers the client sent or moved tracked copies to are
    ever asked, so the others pay nothing.

Note [How long an origin is kept]
    A copy may outlive its store entry: `model_b(h.send(bob, requires_grad=True))` drops the
    pointer (and the entry) at once, yet the graph on bob still holds the copy and the backward
    pass still reaches it. So the origin is kept until the copy itself is gone: a finalizer on
    the copy's hook (which lives exactly as long as the copy) records the release, which travels
    like a gradient (in the `Grads` reply to the client, in `OriginGrads` to a worker).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..errors import ObjectNotFoundError, ProtocolError
from ..gradients import backward_from, check_can_require_grad

__all__ = ["CLIENT", "Origins"]

CLIENT = "me"  # the origin of a tensor the client sent (a name no worker may have)


class _ToOrigin:
    """The hook on a tracked copy: stashes each gradient that reaches it, for its origin."""

    __slots__ = ("origins", "origin", "id_at_origin", "__weakref__")

    def __init__(self, origins: "Origins", origin: str, id_at_origin: int) -> None:
        self.origins = origins
        self.origin = origin
        self.id_at_origin = id_at_origin

    def __call__(self, grad: torch.Tensor) -> None:
        # A copy: autograd may adopt `grad` as a leaf's .grad and add to it in place later.
        self.origins.pending.append((self.origin, self.id_at_origin, grad.detach().clone()))


class Origins:
    """Tracked copies' gradients and releases waiting to go out, and origins kept for moved copies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[int, torch.Tensor] = {}  # id -> a tensor moved away with requires_grad=True
        self.pending: list[tuple[str, int, torch.Tensor]] = []  # (origin, id there, grad)
        self.released: list[tuple[str, int]] = []  # copies gone: (origin, id there)

    def track(self, tensor: torch.Tensor, origin: str, id_at_origin: int) -> None:
        """Make `tensor` (a stored copy) require grad and send its gradients to `origin`."""
        if origin == self.name:
            raise ValueError(f"worker {self.name!r} cannot be the origin of its own copy")
        check_can_require_grad(tensor)
        tensor.requires_grad_(True)
        hook = _ToOrigin(self, origin, id_at_origin)
        tensor.register_hook(hook)
        # Note [How long an origin is kept]: the hook dies with the copy, graph references included.
        weakref.finalize(hook, self._release, origin, id_at_origin)

    def _release(self, origin: str, id_at_origin: int) -> None:
        self.released.append((origin, id_at_origin))  # looked up now: `take` replaces the list

    def hold(self, object_id: int, tensor: torch.Tensor) -> None:
        """Keep `tensor`, just moved away with requires_grad=True, until its copy is gone."""
        self.held[object_id] = tensor

    def take(self, origin: str) -> tuple[tuple, tuple]:
        """Remove and return what waits for `origin`: ((id, grad), ...) and released ids."""
        grads = tuple((oid, grad) for name, oid, grad in self.pending if name == origin)
        released = tuple(oid for name, oid in self.released if name == origin)
        if grads:
            self.pending = [entry for entry in self.pending if entry[0] != origin]
        if released:
            self.released = [entry for entry in self.released if entry[0] != origin]
        return grads, released

    def waiting(self) -> list[str]:
        """The workers (not the client) something waits for, in a stable order."""
        names = {entry[0] for entry in self.pending} | {entry[0] for entry in self.released}
        names.discard(CLIENT)
        return sorted(names)

    def put_back(self, origin: str, grads: tuple, released: tuple) -> None:
        """Undo `take` for a delivery that failed: it is tried again at the next Grads."""
        self.pending[:0] = [(origin, oid, grad) for oid, grad in grads]
        self.released[:0] = [(origin, oid) for oid in released]

    def receive(self, grads: Any, released: Any) -> None:
        """Gradients for tensors this worker moved away: backward from each; forget released ones."""
        if not isinstance(grads, tuple) or not all(
                type(item) is tuple and len(item) == 2 and type(item[0]) is int and isinstance(item[1], torch.Tensor)
                for item in grads):
            raise ProtocolError("OriginGrads.grads must be ((id, tensor), ...)")
        if not isinstance(released, tuple) or not all(type(oid) is int for oid in released):
            raise ProtocolError("OriginGrads.released must be a tuple of ids")
        for oid, grad in grads:
            tensor = self.held.get(oid)
            if tensor is None:
                raise ObjectNotFoundError(
                    f"worker {self.name!r} holds no origin tensor {oid}: the gradient has nowhere to go")
            backward_from(tensor, grad)
        for oid in released:
            self.held.pop(oid, None)

