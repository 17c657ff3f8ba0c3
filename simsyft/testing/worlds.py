"""Worker sets for property tests: `World`, `worlds()`, and `WorkerPool`, a fixed set of
workers (in-process, or a simulation's processes) reused across examples.

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from hypothesis import strategies as st

from ..handles import VirtualWorker
from ..hook import TorchHook
from ..wire import segments as shm_pool
from .inprocess import in_process_worker



WORKER_NAMES = ("bob", "alice", "carol", "dave")


@dataclass(frozen=True)
class World:
    """Which workers an example uses (by name); `WorkerPool.world(w)` gives their handles."""

    names: tuple

    def __len__(self) -> int:
        return len(self.names)


def worlds(min_size: int = 1, max_size: int = 4, names: Sequence[str] = WORKER_NAMES) -> st.SearchStrategy[World]:
    """1 to 4 workers, drawn from `names` (shrinks towards just "bob")."""
    return st.lists(st.sampled_from(tuple(names)), min_size=min_size, max_size=min(max_size, len(names)),
                    unique=True).map(lambda ns: World(tuple(ns)))


class WorkerPool:
    """A fixed set of workers reused across hypothesis examples.

    Starting processes costs seconds and an example milliseconds, so a property run keeps
    one pool for the session and asks `world()` for empty workers at each example.

    >>> pool = WorkerPool.in_process()          # or the simsyft_sim fixture (processes)
    >>> bob, alice = pool.world(World(("bob", "alice")))
    """

    def __init__(self, handles: Mapping[str, VirtualWorker] | Sequence[VirtualWorker], *,
                 close: Callable[[], None] | None = None, simulation: Any = None, backend: str = "process") -> None:
        if not isinstance(handles, Mapping):
            handles = {h.id: h for h in handles}
        if not handles:
            raise ValueError("a WorkerPool needs at least one worker")
        self.handles: dict[str, VirtualWorker] = dict(handles)
        self.simulation = simulation
        self.backend = backend
        self._close = close
        TorchHook(torch)  # idempotent: pointers need Tensor.send

    @classmethod
    def in_process(cls, names: Sequence[str] = WORKER_NAMES) -> "WorkerPool":
        """In-process workers (no processes): the fast backend for the bulk of examples."""
        handles = {name: in_process_worker(name) for name in names}
        return cls(handles, close=lambda: [h.shutdown() for h in handles.values()], backend="inprocess")

    @classmethod
    def from_simulation(cls, simulation: Any) -> "WorkerPool":
        """The workers of a running `sy.launch(...)` Simulation; `close()` shuts it down."""
        return cls(simulation.workers, close=simulation.shutdown, simulation=simulation, backend="process")

    @property
    def names(self) -> tuple:
        return tuple(self.handles)

    @property
    def workers(self) -> list[VirtualWorker]:
        return list(self.handles.values())

    def __getitem__(self, name: str) -> VirtualWorker:
        return self.handles[name]

    def __len__(self) -> int:
        return len(self.handles)

    def world(self, world: World | int | None = None) -> list[VirtualWorker]:
        """Handles for `world` (a World, or a count: the first n workers), each with an empty store."""
        if world is None:
            chosen = self.workers
        elif isinstance(world, int):
            chosen = self.workers[:world]
        elif all(name in self.handles for name in world.names):
            chosen = [self.handles[name] for name in world.names]
        else:  # a world drawn with other names: use as many of ours, in order
            chosen = self.workers[:len(world.names)]
        for handle in chosen:
            handle.clear_objects()
        return chosen

    def reset(self) -> None:
        """Empty every worker's store (pointers still held elsewhere then find nothing)."""
        for handle in self.workers:
            handle.clear_objects()

    def segments(self) -> list[str]:
        """Shared-memory segments lost in flight: marked in use, yet no tensor of this process
        uses them. Should be none once the workers' stores are empty. Segments are pooled and
        reused (simsyft/wire/segments.py), so their names alone say nothing; a worker process's own
        segments are its business, checked by the leak checks at shutdown."""
        spaces = {h.simulation.namespace for h in self.workers}
        return [name for space in spaces for name in shm_pool.lost(space)]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __repr__(self) -> str:
        return f"<WorkerPool {self.backend} {', '.join(self.handles)}>"
