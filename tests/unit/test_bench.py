"""The benchmark harness at its tiniest: every row yields a number, and every simsyft row a ratio.

Runs `python -m bench --smoke` once in a child process (the suite starts its
own servers and workers, so it stays out of the test process) and checks the
JSON it writes. No wall-clock thresholds: speed is judged by reading the
table, not by this test. The pure-harness tests below need no processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.harness import Compare, Figure, resolve, verdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONAL_PEERS = {"ray_small", "ray_pipelined"}    # skipped when ray is not installed


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        # import_torch_x4 alone costs 4-9 s; the start-up row times the same floor paired with itself.
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--no-plot", "--json", str(out),
         "--skip", "import_torch_x4"],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_smoke_writes_machine_and_meta(smoke):
    doc, stdout = smoke
    for key in ("cpu_model", "logical_cpus", "memory_gb", "python", "torch_version", "zmq_version", "date"):
        assert doc["machine"].get(key), key
    assert doc["meta"]["mode"] == "smoke"
    assert "simsyft against its floors" in stdout


def test_every_floor_and_peer_has_a_number(smoke):
    doc, _ = smoke
    for fig in doc["figures"]:
        if fig["group"] == "simsyft":
            continue
        if fig["name"] in OPTIONAL_PEERS and fig["status"].startswith("skipped"):
            continue
        assert fig["status"] == "ok", (fig["name"], fig["status"])
        assert isinstance(fig["p50"], float) and fig["p50"] >= 0, fig["name"]


def test_every_simsyft_row_has_a_number_and_a_ratio(smoke):
    doc, _ = smoke
    ours = [f for f in doc["figures"] if f["group"] == "simsyft"]
    names = {f["name"] for f in ours}
    for expected in ("simsyft_small_op", "simsyft_send_5", "simsyft_get_5", "simsyft_chain", "simsyft_chain_sync",
                     "simsyft_send_warm_1MB", "simsyft_get_unchanged_1MB", "simsyft_get_computed_1MB",
                     "simsyft_send_cold_1MB", "simsyft_scaling_1w", "simsyft_fedavg_2w",
                     "simsyft_start4_virtualworker", "simsyft_start4_launch"):
        assert expected in names, expected
    for fig in ours:
        if fig["status"].startswith("skipped"):   # explicit, e.g. a simsyft without sy.pipeline()
            continue
        assert fig["status"] == "ok", (fig["name"], fig["status"])
        assert isinstance(fig["p50"], float) and fig["p50"] > 0, fig["name"]
        ratios = [c["ratio"] for c in fig["compare"] if c["ratio"] is not None]
        assert ratios, f"{fig['name']} has no ratio: {fig['compare']}"


def test_only_pulls_in_the_floors_a_row_needs():
    from bench.cli import select

    names = [r.name for r in select("small_op")]
    assert names[-1] == "small_op" and "zmq_reqrep" in names and "memcpy" not in names
    assert "zmq_reqrep" not in [r.name for r in select("small_op", "zmq_reqrep")]


def test_ratios_and_verdicts():
    floor = Figure(name="f", group="floor", what="", p50=100e-6)
    fast = Figure(name="a", group="simsyft", what="", p50=120e-6, compare=[Compare("f", 1.3, 2.0)])
    slow = Figure(name="b", group="simsyft", what="", p50=250e-6,
                  compare=[Compare("f", 1.3, 2.0), Compare("missing")])
    rate = Figure(name="r", group="simsyft", what="", kind="rate", unit="ops/s", p50=50.0,
                  compare=[Compare("fr", 0.6, 0.35)])
    floor_rate = Figure(name="fr", group="floor", what="", kind="rate", unit="ops/s", p50=100.0)
    resolve([floor, fast, slow, rate, floor_rate])
    assert fast.compare[0].ratio == pytest.approx(1.2) and fast.compare[0].verdict == "goal"
    assert slow.compare[0].verdict == "OVER LIMIT"
    assert slow.compare[1].ratio is None and slow.compare[1].verdict.startswith("no floor")
    assert rate.compare[0].ratio == pytest.approx(0.5) and rate.compare[0].verdict == "within limit"
    assert verdict(0.2, None, None, "lower") == "info"


def test_a_shared_compare_is_refused():
    shared = Compare("f")
    figs = [Figure(name="f", group="floor", what="", p50=1.0),
            Figure(name="a", group="simsyft", what="", p50=1.0, compare=[shared]),
            Figure(name="b", group="simsyft", what="", p50=2.0, compare=[shared])]
    with pytest.raises(ValueError, match="shared"):
        resolve(figs)
