"""Fixed precision and sharing of data that lives on a worker: `ptr.fix_precision()` runs there,
`ptr.share(bob, alice, crypto_provider=james)` splits it there and sends the shares from that
worker to the parties (ShareOut, worker/mpc.py). The client never sees the value.

Owns `fix_precision_remote`, `share_remote` and `SharedPointer`, the pointer they return (PySyft
showed a pointer to the shared tensor; `.get()` brings the shared tensor, its share pointers,
to the client).
"""

from __future__ import annotations

from typing import Any

from ..errors import ObjectNotFoundError
from ..ids import new_id
from ..pointer import PointerTensor
from ..wire import messages
from .additive import AdditiveSharingTensor, check_parties
from .fixed import FixedPrecisionTensor

__all__ = ["SharedPointer", "fix_precision_remote", "share_remote"]


def fix_precision_remote(pointer: PointerTensor, base: int = 10, precision_fractional: int = 3) -> FixedPrecisionTensor:
    """Encode the pointer's data on its worker; a FixedPrecisionTensor over the new pointer."""
    scale = base ** precision_fractional
    upscaled = pointer.double() * scale
    # PySyft's range check, on the worker: only whether every value fits comes back.
    if not bool((upscaled.abs() < 2.0 ** 63).all().get()):
        raise ValueError(f"the data of {pointer!r} cannot be correctly embedded: choose bigger field or a lower "
                         "precision")
    return FixedPrecisionTensor(upscaled.long(), base, precision_fractional)


def share_remote(pointer: PointerTensor, workers: Any, crypto_provider: Any = None, dtype: str = "long",
                 encoding: tuple | None = None) -> "SharedPointer":
    """Split the pointer's data on its worker into one share per worker, sent worker to worker."""
    pointer._check_live()
    workers = check_parties(workers, crypto_provider)
    for worker in workers:
        if worker.simulation is not pointer.location.simulation:
            raise ValueError(f"cannot share data of {pointer.location.id!r} with {worker.id!r}: another simulation")
    names = tuple(w.id for w in workers)
    ids = tuple(new_id() for _ in workers)
    meta = pointer.location.connection.request(
        lambda seq: messages.ShareOut(seq, pointer.id_at_location, names, ids, dtype)).value
    shares = {w.id: PointerTensor(w, i, w.owner, meta) for w, i in zip(workers, ids)}
    shared: Any = AdditiveSharingTensor(shares, crypto_provider, dtype)
    if encoding is not None:
        shared = FixedPrecisionTensor(shared, *encoding)
    at = dict(zip(names, ids)).get(pointer.location.id, new_id())
    return SharedPointer(pointer.location, at, shared)


class SharedPointer:
    """A pointer to a shared tensor made on worker `location`; `.get()` returns the shared tensor.

    Until then it owns the shares: dropping it frees them on every party.
    """

    def __init__(self, location: Any, id_at_location: int, shared: Any) -> None:
        self.id = new_id()
        self.location = location
        self.id_at_location = id_at_location
        self.owner = location.owner
        self._shared = shared

    def __repr__(self) -> str:
        return f"(Wrapper)>[PointerTensor | {self.owner.id}:{self.id} -> {self.location.id}:{self.id_at_location}]"

    __str__ = __repr__

    @property
    def shape(self) -> Any:
        if self._shared is None:
            raise ObjectNotFoundError(f"pointer {self.id} was already fetched with .get()")
        return self._shared.shape

    def get(self) -> Any:
        """The shared tensor (an AdditiveSharingTensor, in a FixedPrecisionTensor if encoded)."""
        if self._shared is None:
            raise ObjectNotFoundError(
                f"pointer {self.id} -> {self.location.id}:{self.id_at_location} was already fetched with .get()")
        shared, self._shared = self._shared, None
        return shared
