"""Hypothesis profiles for the property suite, the simsyft_sim fixtures, and a count of
the programs run (printed at the end, for docs/testing.md).

Profiles (HYPOTHESIS_PROFILE selects one; `ci` is the default):
- `ci`: the whole property suite in well under two minutes on 2 cores;
- `thorough`: 100x the examples (>= 10,000 generated programs), run by hand.
Each test scales its own example count from the profile's `max_examples` (the process
backend gets a fraction: the same checks, fewer examples).
"""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, settings

# pytest allows `pytest_plugins` only in the root conftest, so the fixtures are imported.
from simsyft.pytest_plugin import simsyft_inprocess, simsyft_sim, simsyft_sim_config  # noqa: F401

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    print_blob=True,
    # Examples build tensors and run them through workers: slow by hypothesis's standards on purpose.
    # The root conftest's autouse hard timeout is function-scoped but harmless across examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=10_000, stateful_step_count=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="session")
def counts() -> collections.Counter:
    """Tests add what they ran: programs (in-process / processes), machine runs and steps."""
    return _COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _COUNTS:
        profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
        parts = ", ".join(f"{key} {value}" for key, value in sorted(_COUNTS.items()))
        terminalreporter.write_line(f"simsyft property suite (profile {profile}): {parts}")
