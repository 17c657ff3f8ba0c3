"""In-process workers for tests: `in_process_worker("bob")`, over backends/inprocess.py.

Every message is still encoded and decoded (tensors still cross as descriptors and
segments), but no process or socket exists, so pointer semantics can be tested in
microseconds per op.

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations



from ..backends.inprocess import InProcessBackend
from ..config import WorkerConfig
from ..handles import VirtualWorker
from ..simulation import Simulation



_INPROCESS: list = []  # the shared in-process simulation, while one is open


def _in_process_simulation() -> Simulation:
    """The in-process workers open at one time form one simulation: one segment namespace (a
    worker maps only its own simulation's segments, and move() goes between them)."""
    if not _INPROCESS or _INPROCESS[0].closed:
        _INPROCESS[:] = [Simulation(InProcessBackend("inprocess"))]
    return _INPROCESS[0]


def in_process_worker(name: str = "bob") -> VirtualWorker:
    """A fresh worker `name` in this process (backends/inprocess.py: no process, same protocol)."""
    sim = _in_process_simulation()
    sim.stop(name)  # a fresh, empty worker each time
    sim.backend.start(WorkerConfig(name))
    return sim.handle(name)
