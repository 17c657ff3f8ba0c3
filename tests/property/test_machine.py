"""PointerMachine: send/op/get/clone/drop/backward and invalid steps against a model.

Runs the machine on in-process workers (most runs) and on worker processes, shows that
a subclass can add rules, and checks that the machine catches broken workers (a worker
that never frees, one that corrupts a bit): a property that cannot fail proves nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import rule

from simsyft.backends.inprocess import InProcessBackend, InProcessLink
from simsyft.config import WorkerConfig
from simsyft.simulation import Simulation
from simsyft.testing import Op, PointerMachine, WorkerPool

THOROUGH = settings.default.max_examples >= 1000  # the `thorough` profile (tests/property/conftest.py)


def examples(ci: int, thorough: int) -> int:
    return thorough if THOROUGH else ci
STEPS = settings.default.stateful_step_count


class CountingMachine(PointerMachine):
    counts = None

    def teardown(self):
        if CountingMachine.counts is not None:
            CountingMachine.counts[f"machine runs ({self.pool.backend})"] += 1
        super().teardown()


def test_machine_inprocess(simsyft_inprocess, counts):
    CountingMachine.counts = counts
    CountingMachine.run(simsyft_inprocess, settings(max_examples=examples(150, 1_000)))


def test_machine_processes(simsyft_sim, counts):
    CountingMachine.counts = counts
    CountingMachine.run(simsyft_sim, settings(max_examples=examples(40, 100), stateful_step_count=min(STEPS, 20)))


class NormalizingMachine(PointerMachine):
    """A user's machine: one extra rule for their own pointer code (docs/testing.md)."""

    calls = 0

    @rule(target=PointerMachine.pointers, a=PointerMachine.pointers)
    def normalize(self, a):
        NormalizingMachine.calls += 1
        return self.apply(Op("(a - a.mean()) / a.std()", kind="user"), a)


def test_subclass_adds_rules(simsyft_inprocess):
    NormalizingMachine.run(simsyft_inprocess, settings(max_examples=examples(20, 100)))
    assert NormalizingMachine.calls > 0


# -- mutants: the machine must notice a broken worker ----------------------------------

class LeakyLink(InProcessLink):
    """A link that loses every free (dropped pointers leak)."""

    def free(self, object_id):
        pass


class BitFlipLink(InProcessLink):
    """A worker whose tensor data arrives with its first byte inverted (Fetch, Objects)."""

    def _recv(self):
        frames = super()._recv()
        if len(frames) > 1 and len(frames[1]):
            frames[1] = bytes([frames[1][0] ^ 0xFF]) + frames[1][1:]
        return frames


MUTANT_SETTINGS = settings(max_examples=200, database=None, phases=[Phase.generate], report_multiple_bugs=False,
                           suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("link", [LeakyLink, BitFlipLink])
def test_machine_catches_broken_workers(link):
    backend = type("MutantBackend", (InProcessBackend,), {"link_class": link})("mutant")
    sim = Simulation(backend)
    for name in ("bob", "alice"):
        backend.start(WorkerConfig(name))
    pool = WorkerPool(sim.workers, close=sim.shutdown, backend="mutant")
    try:
        with pytest.raises(AssertionError):
            PointerMachine.run(pool, MUTANT_SETTINGS)
    finally:
        pool.close()
