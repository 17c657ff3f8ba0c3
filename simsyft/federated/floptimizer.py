"""`Optims`: one optimizer per worker (PySyft 0.2's syft/federated/floptimizer.py).

Adaptive optimizers (Adam, SGD with momentum) keep state next to the parameters: while a
model visits bob, its optimizer's state lives on bob. One optimizer per worker keeps each
worker's state where that worker's steps need it. Imports nothing of simsyft.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["Optims"]


def _key(worker: Any) -> str:
    # A worker handle's str() is its repr, which asks the worker for its object count: use its id.
    return str(getattr(worker, "id", worker))


class Optims:
    """Copies of `optim`, one per worker, each starting from `optim`'s state.

    >>> optims = Optims(["bob", "alice"], optim=optim.Adam(params=model.parameters(), lr=0.1))
    >>> opt = optims.get_optim(data.location.id)
    """

    def __init__(self, workers: Any, optim: Any) -> None:
        self.optim = optim
        self.workers = workers
        self.optimizers = {}
        for worker in workers:
            # A shallow copy shares the parameters; load_state_dict gives it its own groups and state.
            optimizer = copy.copy(optim)
            optimizer.load_state_dict(optim.state_dict())
            self.optimizers[_key(worker)] = optimizer

    def get_optim(self, worker: Any) -> Any:
        """The optimizer for `worker` (its id or its handle)."""
        key = _key(worker)
        if key not in self.optimizers:
            raise KeyError(f"no optimizer for worker {key!r}; Optims was built for {list(self.optimizers)}")
        return self.optimizers[key]

    def count(self) -> int:
        """The number of optimizers (one per worker)."""
        return len(self.workers)
