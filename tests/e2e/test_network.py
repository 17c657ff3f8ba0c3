"""The traffic ledger and the network model on real worker processes (issue 13, "Done when")."""

from __future__ import annotations

import textwrap

import pytest
import torch

import simsyft as sy
from simsyft.network import QUIET_STAMP

MiB = 2**20


def write(tmp_path, text: str, name: str = "net.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, hook):
    """bob and alice, network off (traffic only)."""
    config = write(tmp_path_factory.mktemp("net"), """
        [simulation]
        name = "e2e-ledger"
        [workers.bob]
        [workers.alice]
    """)
    with sy.launch(config) as sim:
        yield sim


def _wire_counter(link):
    """Count what `link` really puts through and takes from its socket, beside the ledger."""
    seen = {"sent": 0, "sent_bytes": 0, "received": 0, "received_bytes": 0}
    send, recv = link._send, link._recv

    def counting_send(frames):
        seen["sent"] += 1
        seen["sent_bytes"] += sum(len(f) for f in frames)
        send(frames)

    def counting_recv():
        frames = recv()
        seen["received"] += 1
        seen["received_bytes"] += sum(len(f) for f in frames)
        return frames

    link._send, link._recv = counting_send, counting_recv
    return seen


def test_send_of_one_mib_adds_one_mib_to_me_bob(pair):
    bob = pair["bob"]
    with pair.measure() as m:
        ptr = torch.zeros(MiB, dtype=torch.uint8).send(bob)
    link = m.traffic.links[("me", "bob")]
    assert MiB <= link.bytes <= MiB + 4096
    assert link.shm_bytes == MiB  # over INLINE_MAX: the tensor crossed through a segment
    assert link.messages == 1
    assert m.traffic.links[("bob", "me")].messages == 1  # the Ack
    assert m.traffic.links[("bob", "me")].bytes < 4096
    assert set(m.traffic.links) == {("me", "bob"), ("bob", "me")}
    del ptr


def test_get_puts_the_bytes_on_bob_me(pair):
    bob = pair["bob"]
    ptr = (torch.ones(MiB // 4).send(bob) * 2)
    with pair.measure() as m:
        ptr.get()
    assert MiB <= m.traffic.links[("bob", "me")].bytes <= MiB + 4096
    assert m.traffic.links[("me", "bob")].bytes < 4096


def test_move_puts_the_bytes_on_bob_alice_only(pair):
    bob, alice = pair["bob"], pair["alice"]
    ptr = torch.zeros(MiB, dtype=torch.uint8).send(bob)
    with pair.measure() as m:
        moved = ptr.move(alice)
    assert MiB <= m.traffic.links[("bob", "alice")].bytes <= MiB + 4096
    assert m.traffic.links[("bob", "alice")].messages == 1
    assert m.traffic.links[("alice", "bob")].messages == 1  # alice's Ack
    for (src, dst), stats in m.traffic.links.items():
        if "me" in (src, dst):
            assert stats.bytes < 4096, (src, dst, stats)
    assert torch.equal(moved.get(), torch.zeros(MiB, dtype=torch.uint8))


def test_a_chains_op_travels_me_alice_bob(pair):
    bob, alice = pair["bob"], pair["alice"]
    chain = torch.ones(5).send(bob).send(alice)  # alice holds a pointer to bob's tensor
    with pair.measure() as m:
        doubled = chain + chain
    links = m.traffic.links
    assert links[("me", "alice")].messages == 1
    assert links[("alice", "bob")].messages == 1
    assert links[("bob", "alice")].messages == 1
    assert links[("alice", "me")].messages == 1
    assert ("me", "bob") not in links and ("bob", "me") not in links
    del doubled, chain


def test_a_pipelined_burst_counts_every_message(pair):
    bob = pair["bob"]
    x = torch.ones(3).send(bob)
    link = bob.connection
    seen = _wire_counter(link)
    try:
        with pair.measure() as m:
            with sy.pipeline():
                y = x
                for _ in range(50):
                    y = y + 1
            result = y.get()
    finally:
        del link._send, link._recv
    assert torch.equal(result, torch.full((3,), 51.0))
    me_bob, bob_me = m.traffic.links[("me", "bob")], m.traffic.links[("bob", "me")]
    # The ledger's own questions (one Info to bob per snapshot, two snapshots) are left out of
    # it; the transport saw them too. Pipelined commands are not answered.
    assert me_bob.messages == seen["sent"] - 2
    assert me_bob.messages >= 52  # 50 commands, the sync, the get
    assert bob_me.messages == seen["received"] - 2
    assert bob_me.messages < me_bob.messages - 40


def test_traffic_since_start_and_to_dict(pair):
    total = sy.traffic() if sy.simulation.default_simulation() is pair else pair.traffic()
    data = total.to_dict()
    assert data["total_bytes"] == total.total_bytes == sum(row["bytes"] for row in data["links"])
    assert "me -> bob" in str(total) and "total" in str(total)


# -- the network model -----------------------------------------------------------------------

def _sim(tmp_path, name, network, workers="[workers.bob]\n[workers.alice]\n"):
    return sy.launch(write(tmp_path, f'[simulation]\nname = "{name}"\n{network}\n{workers}', f"{name}.toml"))


SLOW = """
[network]
mode = "{mode}"
latency_ms = 50
bandwidth_mbps = 8
"""


def test_account_mode_one_mb_over_8_mbits_and_50_ms(tmp_path, hook):
    with _sim(tmp_path, "e2e-account", SLOW.format(mode="account")) as sim:
        data = torch.zeros(1_000_000, dtype=torch.uint8)
        with sim.measure() as m:
            ptr = data.send(sim["bob"])
        on_link = m.traffic.links[("me", "bob")].bytes
        expected = on_link * 8 / 8e6 + 0.050 + 0.050  # there, and the Ack's latency back
        assert expected - 0.001 <= m.simulated_s <= expected + 0.05
        assert m.simulated_s >= 1.1
        assert m.wall_s < m.simulated_s / 2  # accounted, not waited
        with sim.measure() as moved:
            ptr = ptr.move(sim["alice"])  # bob -> alice carries the MB, on the same 8 Mbit/s
        assert moved.traffic.links[("bob", "alice")].bytes >= 1_000_000
        # me -> bob, the MB bob -> alice, alice's Ack back, bob's Ack to me: 4 latencies, 1 s of bytes
        assert 1.2 <= moved.simulated_s <= 1.2 + 0.05
        del ptr


def test_enforce_mode_really_waits(tmp_path, hook):
    with _sim(tmp_path, "e2e-enforce", SLOW.format(mode="enforce")) as sim:
        data = torch.zeros(1_000_000, dtype=torch.uint8)
        with sim.measure() as m:
            ptr = data.send(sim["bob"])
        assert m.wall_s >= 1.1 - 0.005  # 1 MB at 8 Mbit/s, 50 ms each way
        assert m.simulated_s >= 1.1 - 0.005
        del ptr


def test_pipelined_commands_overlap_on_the_link(tmp_path, hook):
    with _sim(tmp_path, "e2e-overlap", SLOW.format(mode="account")) as sim:
        x = torch.ones(3).send(sim["bob"])
        with sim.measure() as sync:
            for _ in range(10):
                x = x + 1
            x.get()
        x = torch.ones(3).send(sim["bob"])
        with sy.pipeline():  # the first pipelined op pays for its prediction here (client time counts)
            x = x + 1
        x = torch.ones(3).send(sim["bob"])
        with sim.measure() as piped:
            with sy.pipeline():
                for _ in range(10):
                    x = x + 1
            x.get()
        assert sync.simulated_s >= 11 * 0.1  # every call waits 50 ms there and back
        assert piped.simulated_s < 4 * 0.1  # the ten commands travel together
        # The stamps that carry the clock (each message's last frame) are not traffic.
        x = torch.ones(3).send(sim["bob"])
        link = sim["bob"].connection
        sent, send = [], link._send
        link._send = lambda frames: (sent.append(frames), send(frames))[1]
        try:
            with sim.measure() as m:
                (x * 3).get()
        finally:
            del link._send
        requests = [f for f in sent if f[-1] != QUIET_STAMP]  # not the ledger's own questions
        assert m.traffic.links[("me", "bob")].messages == len(requests) == 2
        assert m.traffic.links[("me", "bob")].frame_bytes == sum(sum(map(len, f[:-1])) for f in requests)


def test_compute_factor_scales_the_simulated_compute_time(tmp_path, hook):
    workers = "[workers.bob]\ncompute_factor = 4.0\n[workers.alice]\n"
    with _sim(tmp_path, "e2e-factor", '[network]\nmode = "account"', workers) as sim:
        times = {}
        for name in ("bob", "alice"):
            a = torch.rand(500, 500).send(sim[name])
            a.mm(a)  # warm up
            with sim.measure() as m:
                for _ in range(10):
                    b = a.mm(a)  # milliseconds of CPU each, against the client's microseconds
                b[0, 0].get()
            times[name] = m.simulated_s
        # 4x in the model; the CPU time of the same ops in two processes varies by tens of percent
        # (a ratio of 5.6 was seen on a loaded machine), so the band is wide but far from 1.
        assert 2.0 < times["bob"] / times["alice"] < 8.0, times


def test_same_program_same_seed_same_times(tmp_path, hook):
    """Jitter is drawn per link from a seeded generator: the same program under the same seed
    gives the same times. What may differ between runs is only real time (CPU time of the ops,
    the client's own time between calls, both small here), so equal means equal within 20 ms,
    while the jitter itself spans 0-200 ms per message."""
    net = '[network]\nmode = "account"\nlatency_ms = 5\njitter_ms = 200\nseed = {seed}'

    def run(name, seed):
        with _sim(tmp_path, name, net.format(seed=seed), "[workers.bob]\n") as sim:
            x = torch.ones(4).send(sim["bob"])
            x = x + 1  # the first op warms the worker up
            stamps = []
            for _ in range(6):
                with sim.measure() as m:
                    x = x + 1
                stamps.append(m.simulated_s)
            return stamps

    first, again, other = run("e2e-seed-a", 7), run("e2e-seed-b", 7), run("e2e-seed-c", 8)
    assert all(abs(a - b) < 0.020 for a, b in zip(first, again)), (first, again)
    assert sum(abs(a - b) for a, b in zip(first, other)) > 0.1, (first, other)
    assert all(t >= 0.010 for t in first)


def test_offline_window_refuses_and_changes_nothing(tmp_path, hook):
    workers = "[workers.bob]\noffline = [[0.0, 0.4]]\n[workers.alice]\n"
    with _sim(tmp_path, "e2e-offline", '[network]\nmode = "account"', workers) as sim:
        bob = sim["bob"]
        with pytest.raises(sy.WorkerUnavailableError, match="offline") as caught:
            torch.ones(3).send(bob)
        assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, sy.SimsyftError)
        import time

        time.sleep(0.45)  # the client's clock runs on its own time between calls
        assert bob._objects == {}  # the refused send stored nothing
        ptr = torch.ones(3).send(bob)
        assert torch.equal(ptr.get(), torch.ones(3))


def test_message_pending_time_really_waits(hook):
    import time

    carol = sy.VirtualWorker(hook, id="carol_pending", message_pending_time=0.2)
    try:
        x = torch.ones(2).send(carol)
        start = time.perf_counter()
        x.get()
        assert time.perf_counter() - start >= 0.2
    finally:
        carol.shutdown()


# -- the command line ------------------------------------------------------------------------

def _cli(*args, timeout=120):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "SIMSYFT_RUN_DIR"}
    env["PYTHONPATH"] = root
    return subprocess.run([sys.executable, "-m", "simsyft", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=root)


def test_run_prints_the_traffic_and_the_simulated_time(tmp_path):
    config = write(tmp_path, """
        [simulation]
        name = "e2e-net-run"
        [network]
        mode = "account"
        latency_ms = 100
        [workers.bob]
        [workers.alice]
    """)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import torch, simsyft as sy
        hook = sy.TorchHook(torch)
        bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
        x = torch.zeros(100_000).send(bob).move(alice)
        print("done", x.get().shape)
    """))
    result = _cli("run", config, "--", __import__("sys").executable, str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "done torch.Size([100000])"
    rows = {line.strip().split("  ")[0]: line for line in result.stderr.splitlines() if "->" in line}
    assert {"me -> bob", "bob -> me", "me -> alice", "alice -> me", "bob -> alice", "alice -> bob"} <= set(rows)
    assert "390.6 KiB" in rows["bob -> alice"] or "390.7 KiB" in rows["bob -> alice"]  # 400,000 bytes and a frame
    clock = [line for line in result.stderr.splitlines() if line.startswith("simulated time (account): ")]
    assert clock and float(clock[0].split(": ")[1].split(" s")[0]) >= 0.6  # three round trips of 2 x 100 ms


def test_status_shows_each_links_traffic(pair):
    bob, alice = pair["bob"], pair["alice"]
    torch.ones(20_000).send(bob).move(alice)
    result = _cli("status", "e2e-ledger")
    assert result.returncode == 0, result.stderr
    assert "  traffic:" in result.stdout
    assert any(line.strip().startswith("bob -> alice") for line in result.stdout.splitlines()), result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_ipc_bytes_are_counted(tmp_path, hook):
    workers = '[workers.bob]\ndevice = "cuda:0"\ngpu_memory_fraction = 0.25\n'
    with _sim(tmp_path, "e2e-net-cuda", "", workers) as sim:
        local = torch.ones(MiB // 4, device="cuda")  # 1 MiB of float32
        with sim.measure() as m:
            ptr = local.send(sim["bob"])
            back = (ptr * 2).get()
        assert back.device.type == "cuda"
        assert m.traffic.links[("me", "bob")].shm_bytes == MiB
        assert m.traffic.links[("bob", "me")].shm_bytes == MiB
        assert MiB <= m.traffic.links[("me", "bob")].bytes <= MiB + 4096
