"""Hypothesis profiles for the property suite, the simsyft_sim fixtures, and a count of
the programs run (printed at the end, for docs/testing.md).

Profiles (HYPOTHESIS_PROFILE selects one; `ci` is the default):
- `ci`: the whole property suite in well under two minutes on 2 cores, derandomized (the
  same examples every run);
- `explore`: the ci budgets with random draws, a quick hunt for new divergences;
- `thorough`: >= 10,000 random generated programs (about ten minutes on 2 cores), by hand.
Each test names its example count for both (`examples(ci, thorough)`): a profile with at
least 1,000 `max_examples` counts as thorough. The process backend gets fewer examples
than the in-process one: the same checks, each costing real round trips.
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
    # CI runs the same examples every time (and as here): a divergence is found by the random
    # `thorough` runs (and by developers' runs with --hypothesis-seed), then fixed and kept as a
    # regression test, rather than surfacing at random in someone else's CI run.
    derandomize=True,
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    print_blob=True,
    # Examples build tensors and run them through workers: slow by hypothesis's standards on purpose.
    # The root conftest's autouse hard timeout is function-scoped but harmless across examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# The ci budgets with fresh random draws (and --hypothesis-seed honoured): a quick hunt.
settings.register_profile("explore", parent=settings.get_profile("ci"), derandomize=False)
settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False, max_examples=10_000,
                          stateful_step_count=50)
# HYPOTHESIS_PROFILE wins; else a profile chosen with --hypothesis-profile; else ci.
_chosen = settings.get_current_profile_name()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or (_chosen if _chosen != "default" else "ci"))

_COUNTS: collections.Counter = collections.Counter()


@pytest.fixture
def test_timeout_s() -> int:
    """The root conftest's hard alarm, longer here. Under `ci` a test takes seconds; 300 s leaves
    hypothesis time to shrink a failure and report it, rather than the timeout hiding it (as
    happened once at 120 s). Under `thorough` one property test runs for many minutes on purpose."""
    return 300 if settings.default.max_examples < 1000 else 2 * 3600


@pytest.fixture(scope="session")
def counts() -> collections.Counter:
    """Tests add what they ran: programs (in-process / processes), machine runs and steps."""
    return _COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _COUNTS:
        profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
        parts = ", ".join(f"{key} {value}" for key, value in sorted(_COUNTS.items()))
        terminalreporter.write_line(f"simsyft property suite (profile {profile}): {parts}")
