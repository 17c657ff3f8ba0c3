"""pytest plugin: one simulation kept alive across hypothesis examples (`simsyft_sim`).

Starting worker processes costs seconds; a hypothesis example costs milliseconds. So
`simsyft_sim` launches one simulation per test session and hands out a
`simsyft.testing.WorkerPool` over its workers; `simsyft_sim.world(...)` empties their
stores at the start of each example. `simsyft_inprocess` is the same over in-process
workers (no processes at all), for the bulk of examples.

Enable it with the `pytest11` entry point (installed with simsyft), `-p
simsyft.pytest_plugin`, or by importing the fixtures into a conftest.py::

    from simsyft.pytest_plugin import simsyft_inprocess, simsyft_sim, simsyft_sim_config  # noqa: F401

    @settings(deadline=None)
    @given(x=tensors())
    def test_roundtrip(simsyft_sim, x):
        (bob,) = simsyft_sim.world(1)
        assert_same(x.send(bob).get(), x.detach().contiguous())

Override the `simsyft_sim_config` fixture (a path to a TOML config, docs/config.md) to
run your own world. Installed as a `pytest11` entry point this module is imported by every
pytest session in the environment, so it imports neither hypothesis (an optional
dependency, through simsyft.testing) nor the simulation module until a test asks for a fixture:
pytest keeps working where simsyft is installed without its `test` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from .testing import WorkerPool

# Same names as simsyft.testing.WORKER_NAMES (not imported here: see the docstring).
_WORKER_NAMES = ("bob", "alice", "carol", "dave")

__all__ = ["simsyft_inprocess", "simsyft_sim", "simsyft_sim_config"]


@pytest.fixture(scope="session")
def simsyft_sim_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The config `simsyft_sim` launches: four CPU workers (bob, alice, carol, dave), one
    torch thread each. Override this fixture to launch another file."""
    path = tmp_path_factory.mktemp("simsyft") / "property.toml"
    tables = "".join(f'\n[workers.{name}]\ndevice = "cpu"\nthreads = 1\n' for name in _WORKER_NAMES)
    path.write_text(f'[simulation]\nname = "simsyft_sim"\n{tables}')
    return str(path)


@pytest.fixture(scope="session")
def simsyft_sim(simsyft_sim_config: str) -> Iterator["WorkerPool"]:
    """A WorkerPool over a simulation launched once for the session; shut down at the end."""
    from .simulation import launch, release_default
    from .testing import WorkerPool

    sim = launch(simsyft_sim_config)
    # launch() makes its simulation the default one; this one must not be: a test calling
    # sy.VirtualWorker(hook, id="bob") expects the implicit simulation's bob, not ours.
    release_default(sim)
    pool = WorkerPool.from_simulation(sim)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def simsyft_inprocess() -> Iterator["WorkerPool"]:
    """A WorkerPool over in-process workers with the same names (no processes)."""
    from .testing import WorkerPool

    pool = WorkerPool.in_process()
    try:
        yield pool
    finally:
        pool.close()
