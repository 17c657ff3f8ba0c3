"""The network model without processes: link queues, jitter, clocks, stamps, and its config."""

from __future__ import annotations

import pytest

from simsyft.config import LinkConfig, NetworkConfig, parse_config
from simsyft.errors import ConfigError
from simsyft.ledger import LinkTraffic, Traffic
from simsyft.network import QUIET_STAMP, Clock, Network


def net(mode="account", latency_ms=50.0, bandwidth_mbps=8.0, jitter_ms=0.0, seed=0, links=()):
    return NetworkConfig(mode, LinkConfig(latency_ms, bandwidth_mbps, jitter_ms), seed, links)


class FakeTime:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_arrival_is_latency_plus_bytes_over_bandwidth():
    bob = Network(net(), "bob")
    me = Network(net(), "me")
    me.clock = Clock(FakeTime())
    src, arrival = bob.arrival(me.stamp(1_000_000))
    assert src == "me"
    assert arrival == pytest.approx(1.0 + 0.05)


def test_back_to_back_messages_queue_on_the_link():
    bob = Network(net(), "bob")
    me = Network(net(), "me")
    me.clock = Clock(FakeTime())  # both leave at t = 0
    first = bob.arrival(me.stamp(1_000_000))[1]
    second = bob.arrival(me.stamp(1_000_000))[1]
    assert (first, second) == (pytest.approx(1.05), pytest.approx(2.05))


def test_per_link_overrides_and_both_directions():
    config = parse_config({"simulation": {"name": "s"}, "workers": {"bob": {}, "alice": {}}, "network": {
        "mode": "account", "latency_ms": 20, "bandwidth_mbps": 100,
        "links": {"me->bob": {"latency_ms": 80, "bandwidth_mbps": 10}, "bob<->alice": {"jitter_ms": 3}}}}).network
    assert config.link("me", "bob") == LinkConfig(80.0, 10.0, 0.0)
    assert config.link("bob", "me") == LinkConfig(20.0, 100.0, 0.0)
    assert config.link("alice", "bob") == config.link("bob", "alice") == LinkConfig(20.0, 100.0, 3.0)
    assert NetworkConfig.from_dict(config.to_dict()) == config


def test_jitter_is_seeded_per_link():
    def arrivals(seed, src="me"):
        bob = Network(net(jitter_ms=40, seed=seed, bandwidth_mbps=None), "bob")
        sender = Network(net(), src)
        sender.clock = Clock(FakeTime())
        return [bob.arrival(sender.stamp(100))[1] for _ in range(20)]

    assert arrivals(1) == arrivals(1)
    assert arrivals(1) != arrivals(2)
    assert arrivals(1, "alice") != arrivals(1, "me")  # each link its own generator
    assert all(0.05 <= a <= 0.05 + 0.04 for a in arrivals(3))


def test_clock_waits_for_arrivals_without_counting_the_wait():
    wall = FakeTime()
    clock = Clock(wall)
    wall.t = 2.0  # the client's own work between calls counts
    assert clock.stamp() == 2.0
    wall.t = 50.0  # a real wait for the reply does not
    assert clock.arrive(2.5) == 2.5
    assert clock.now() == 2.5
    assert clock.arrive(1.0) == 2.5  # an arrival in the past does not move it back


def test_compute_factor_scales_the_clock_source():
    cpu = FakeTime()
    clock = Clock(cpu, factor=4.0)
    clock.arrive(1.0)
    cpu.t += 0.25
    assert clock.now() == pytest.approx(2.0)


def test_a_quiet_stamp_moves_nothing():
    bob = Network(net(), "bob")
    assert bob.arrival(QUIET_STAMP)[1] is None
    before = bob.now()
    bob.receive(QUIET_STAMP, 10**9)
    assert bob.now() - before < 1.0


def test_offline_windows():
    bob = Network(net(), "bob", offline=((30.0, 90.0),))
    assert bob.is_offline(30.0) and bob.is_offline(89.9)
    assert not bob.is_offline(29.9) and not bob.is_offline(90.0)


@pytest.mark.parametrize("network, workers, error", [
    ({"mode": "fast"}, {}, "[network] mode: unknown mode 'fast' (expected one of: off, account, enforce)"),
    ({"latency_ms": 3}, {}, '[network] latency_ms: has no effect with mode = "off"'),
    ({"mode": "account", "bandwidth_mbps": 0}, {}, "[network] bandwidth_mbps: must be more than 0"),
    ({"mode": "account", "latency_ms": -1}, {}, "[network] latency_ms: must be 0 or more"),
    ({"mode": "account", "links": {"me->carol": {}}}, {}, "no worker 'carol'"),
    ({"mode": "account", "links": {"bob": {}}}, {}, 'a link is "src->dst"'),
    ({"mode": "account", "links": {"bob->bob": {}}}, {}, "not 'bob' to itself"),
    ({"mode": "account", "links": {"me->bob": {"speed": 1}}}, {}, "speed: unknown key"),
    ({"mode": "account", "links": {"me->bob": {}, "me<->bob": {}}}, {}, "link me->bob is set twice"),
    ({}, {"compute_factor": 2}, 'compute_factor: needs the simulated clock'),
    ({"mode": "account"}, {"compute_factor": 0}, "compute_factor: must be a finite number more than 0"),
    ({"mode": "account"}, {"offline": [[5, 1]]}, "need 0 <= start < end"),
    ({"mode": "account"}, {"offline": [3]}, "each window is [start, end]"),
])
def test_network_config_refusals(network, workers, error):
    with pytest.raises(ConfigError) as caught:
        parse_config({"simulation": {"name": "s"}, "workers": {"bob": workers}, "network": network})
    assert error in str(caught.value)


def test_network_needs_worker_processes():
    with pytest.raises(ConfigError, match="needs worker processes"):
        parse_config({"simulation": {"name": "s", "backend": "inprocess"}, "workers": {"bob": {}},
                      "network": {"mode": "account"}})


def test_traffic_report_arithmetic_and_table():
    before = Traffic({("me", "bob"): LinkTraffic(1, 100, 0)})
    after = Traffic({("me", "bob"): LinkTraffic(3, 300, 2048), ("bob", "alice"): LinkTraffic(1, 50, 0)})
    delta = after - before
    assert delta.links[("me", "bob")] == LinkTraffic(2, 200, 2048)
    assert delta.links[("me", "bob")].bytes == 2248
    assert delta.total_bytes == 2298 and delta.sent_by("me") == 2248 and delta.received_by("alice") == 50
    assert Traffic.from_dict(delta.to_dict()).links == delta.links
    table = str(delta).splitlines()
    assert table[1].startswith("me -> bob") and table[2].startswith("bob -> alice") and table[-1].startswith("total")
