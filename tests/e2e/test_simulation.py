"""Simulations from config files: launch, placement, seeds, data and search, kill/restart, limits."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.wire import shm, tensors
from simsyft.config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))


def write(tmp_path, text: str, name: str = "sim.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def two_workers(tmp_path, hook):
    cpus = sorted(psutil.Process().cpu_affinity())
    config = write(tmp_path, f"""
        [simulation]
        name = "e2e-two"
        seed = 7

        [workers.bob]
        cpus = [{cpus[-1]}]
        threads = 2

        [workers.alice]
        device = "cpu"
    """)
    with sy.launch(config) as sim:
        yield sim


def test_launch_gives_the_same_handles_as_virtualworker(two_workers, hook):
    sim = two_workers
    assert list(sim.workers) == ["bob", "alice"]
    bob = sim["bob"]
    assert sim.workers["bob"] is bob
    assert sy.VirtualWorker(hook, id="bob") is bob
    assert bob.pid != sim["alice"].pid
    assert torch.equal((torch.ones(3).send(bob) * 2).get(), torch.full((3,), 2.0))
    with pytest.raises(KeyError, match="no worker 'carol'"):
        sim["carol"]


def test_cpu_affinity_and_threads_are_applied(two_workers):
    bob, alice = two_workers["bob"], two_workers["alice"]
    expected = sorted(psutil.Process().cpu_affinity())[-1]
    assert psutil.Process(bob.pid).cpu_affinity() == [expected]
    assert bob.info()["threads"] == 2
    assert alice.info()["threads"] == 1


def test_seed_is_offset_per_worker(two_workers):
    for index, name in enumerate(["bob", "alice"]):
        remote = torch.zeros(4).send(two_workers[name]).uniform_().get()
        torch.manual_seed(7 + index)
        assert torch.equal(remote, torch.zeros(4).uniform_())


def test_status_reports_every_worker(two_workers):
    bob = two_workers["bob"]
    keep = torch.zeros(1000).send(bob)
    status = two_workers.status()
    assert set(status) == {"bob", "alice"}
    row = status["bob"]
    assert row["state"] == "running" and row["pid"] == bob.pid and row["device"] == "cpu"
    assert row["objects"] == 1 and row["bytes"] == 4000
    assert row["rss"] > 0 and row["uptime"] >= 0 and row["messages_in"] >= 1 and len(row["cpus"]) == 1
    del keep


def test_kill_then_restart(two_workers):
    bob = two_workers["bob"]
    p = torch.ones(2).send(bob)
    old_pid = bob.pid
    two_workers.kill("bob")
    with pytest.raises(sy.WorkerCrashedError, match=rf"'bob' \(pid {old_pid}\) exited with -9"):
        p + 1
    assert two_workers.status()["bob"]["state"].startswith("exited")
    assert two_workers["bob"] is bob  # the same handle, reporting the crash
    restarted = two_workers.restart("bob")
    assert restarted is bob and bob.pid != old_pid
    assert psutil.Process(bob.pid).cpu_affinity() == [sorted(psutil.Process().cpu_affinity())[-1]]
    assert bob._objects == {}
    assert torch.equal((torch.ones(2).send(bob) + 1).get(), torch.full((2,), 2.0))
    with pytest.raises(sy.ObjectNotFoundError, match="has no object"):
        p + 1  # the old object died with the old process


def test_data_is_loaded_and_found_by_tag(tmp_path, hook):
    from make_hospital_data import make_shards

    make_shards(tmp_path / "data", seed=0, samples=20)
    config = write(tmp_path, """
        [simulation]
        name = "e2e-data"

        [workers.hospital_a.data]
        data = { path = "data/hospital_a_data.pt", tags = ["#data", "#train"], description = "features" }
        target = { path = "data/hospital_a_target.pt", tags = ["#target", "#train"] }
    """)
    with sy.launch(config) as sim:
        hospital = sim["hospital_a"]
        assert len(hospital._objects) == 2
        found = hospital.search("#data")
        assert len(found) == 1
        pointer = found[0]
        assert pointer.shape == torch.Size([20, 8]) and pointer.dtype == torch.float32
        assert "Tags: #data #train" in repr(pointer) and "Description: features..." in repr(pointer)
        assert len(hospital.search("#train")) == 2 and hospital.search("#nothing") == []
        expected = torch.load(tmp_path / "data" / "hospital_a_data.pt")
        assert torch.equal((pointer * 1).get(), expected)
        del pointer, found
        assert len(hospital._objects) == 2  # search pointers only observe: nothing was freed
        sent = torch.ones(2).tag("#mine").describe("sent by the client").send(hospital)
        assert [p.id_at_location for p in hospital.search("#mine")] == [sent.id_at_location]


def test_memory_limit_refuses_an_op_and_the_worker_lives_on(hook):
    config = parse_config({"simulation": {"name": "e2e-memory"},
                           "workers": {"small": {"memory_limit": "1GiB", "threads": 2}, "other": {}}})
    with sy.launch(config) as sim:
        small = sim["small"]
        x = torch.arange(3.0).send(small)
        # Tensors sent arrive in shared-memory segments, which the limit does not count: 1.25 GiB
        # is accepted, and reading all of it (its pages now count in the worker's RSS) is fine.
        big = torch.ones(5 * 2**26).send(small)
        assert big.sum().get().item() == 5 * 2**26
        # 3 GiB of float32: refused at allocation, with an error saying why and what to do.
        with pytest.raises(sy.MemoryLimitError) as info:
            x.repeat(2**28)
        assert isinstance(info.value, MemoryError) and isinstance(info.value, RuntimeError)
        assert str(info.value).startswith(
            "worker 'small' cannot allocate 3GiB more: that would pass its memory_limit of 1GiB (it holds ")
        assert str(info.value).endswith(
            "The op failed and stored nothing; the worker keeps running, with its objects. Free some "
            "(del their pointers, or .get() them), or raise [workers.small] memory_limit in the config")
        with pytest.raises(sy.MemoryLimitError, match="cannot allocate 3GiB more"):
            with sy.pipeline():  # pipelined: the failure comes out at the sync point
                x.repeat(2**28)
        assert small.info()["objects"] == 2
        assert torch.equal(small._objects[x.id_at_location], torch.arange(3.0))
        # Under the limit: torch's threads, new results, and a pointer chain (a new socket on the worker).
        assert torch.equal((x.repeat(2**20) + 1).sum().get(), torch.tensor(6.0 * 2**20))
        chain = torch.ones(2).send(sim["other"]).send(small)
        assert torch.equal((chain + 1).get().get(), torch.full((2,), 2.0))
        del big


def test_memory_limit_below_start_up_size_stops_the_worker_at_start(tmp_path, hook):
    torch.save(torch.ones(32 * 2**20), tmp_path / "big.pt")  # 128 MiB of data on top of 170-225 MiB
    config = parse_config({"simulation": {"name": "e2e-memory-start"},
                           "workers": {"tiny": {"memory_limit": "256MiB",
                                                "data": {"big": {"path": "big.pt", "tags": ["#big"]}}}}},
                          base_dir=tmp_path)
    with pytest.raises(sy.WorkerCrashedError,
                       match=r"(?s)'tiny'.*exited with 3.*memory_limit 256MiB is less than the .* this worker holds "
                             r"right after start-up \(Python, torch and its data\); raise \[workers.tiny\] memory_limit"):
        sy.launch(config)


@pytest.fixture(scope="module")
def stoppable(hook):
    config = parse_config({"simulation": {"name": "e2e-timeout", "request_timeout_s": 0.5}, "workers": {"bob": {}}})
    with sy.launch(config) as sim:
        yield sim


@pytest.fixture
def stopped(stoppable):
    """Bob, stopped with SIGSTOP for the test body; continued, whatever happens, afterwards."""
    bob = stoppable["bob"]
    os.kill(bob.pid, signal.SIGSTOP)
    try:
        yield bob
    finally:
        os.kill(bob.pid, signal.SIGCONT)


ADVICE = ("; it may be stopped, hung, or busy with a long op: check it with `simsyft status`, or raise "
          "[simulation] request_timeout_s (0 waits forever). This connection stays usable if the worker resumes")


@pytest.mark.parametrize("pipelined", [False, True], ids=["sync", "pipelined"])
def test_a_stopped_worker_times_out_and_works_once_continued(stoppable, pipelined):
    bob = stoppable["bob"]
    x = torch.ones(3).send(bob)
    os.kill(bob.pid, signal.SIGSTOP)
    try:
        with pytest.raises(sy.WorkerTimeoutError) as info:
            if pipelined:
                with sy.pipeline():
                    y = x + 1  # queued without waiting; the block's end is the sync point that times out
            else:
                x + 1
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, sy.SimsyftError)
        asked = "a sync point after 1 pipelined op" if pipelined else "torch.Tensor.__add__"
        assert str(info.value) == f"worker 'bob' (pid {bob.pid}) did not answer {asked} within 0.5 s" + ADVICE
        assert stoppable.status()["bob"]["state"] == "stopped (send SIGCONT to resume)"
    finally:
        os.kill(bob.pid, signal.SIGCONT)
    assert torch.equal((x * 2).get(), torch.full((3,), 2.0))  # the late answer to x + 1 was dropped
    if pipelined:
        assert torch.equal(y.get(), torch.full((3,), 2.0))  # the queued op ran once bob continued
    assert bob.info()["pid"] == bob.pid


def test_a_late_error_of_a_timed_out_call_is_dropped(stoppable):
    bob = stoppable["bob"]
    x, wrong = torch.ones(3).send(bob), torch.ones(4).send(bob)
    os.kill(bob.pid, signal.SIGSTOP)
    try:
        with pytest.raises(sy.WorkerTimeoutError):
            x + wrong  # fails on bob once it runs: that failure must not surface in a later call
    finally:
        os.kill(bob.pid, signal.SIGCONT)
    assert torch.equal((x + x).get(), torch.full((3,), 2.0))
    assert torch.equal((x + 1).get(), torch.full((3,), 2.0))


def test_get_and_send_time_out_too(stopped):
    x = torch.ones(2)
    with pytest.raises(sy.WorkerTimeoutError, match=r"^worker 'bob' \(pid \d+\) did not answer send\(\) within 0.5 s"):
        x.send(stopped)
    with pytest.raises(sy.WorkerTimeoutError, match=r"did not answer info\(\) within 0.5 s"):
        stopped.info()


def test_a_killed_worker_is_a_crash_not_a_timeout(stoppable):
    bob = stoppable["bob"]
    x = torch.ones(1).send(bob)
    os.kill(bob.pid, signal.SIGSTOP)
    with pytest.raises(sy.WorkerTimeoutError):
        x + 1
    os.kill(bob.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
    try:
        with pytest.raises(sy.WorkerCrashedError, match=rf"'bob' \(pid {bob.pid}\) exited with -9"):
            x + 1
    finally:
        stoppable.restart("bob")


def test_bad_config_is_refused_before_anything_starts(tmp_path, hook):
    config = write(tmp_path, """
        [simulation]
        name = "e2e-bad"

        [workers.bob]
        devcie = "cpu"
    """)
    with pytest.raises(sy.ConfigError, match=r"\[workers.bob\] devcie: unknown key"):
        sy.launch(config)


def test_an_attached_client_leaves_no_segment_of_its_own(two_workers):
    attached = sy.connect("e2e-two")
    namespace = attached.namespace
    big = torch.arange(tensors.INLINE_MAX, dtype=torch.float32)  # 4x the limit: a segment
    try:
        p = big.send(attached["bob"])
        mine = [n for n in shm.list_segments(namespace) if f"_{os.getpid()}_" in n]
        assert mine, "the tensor did not go through a segment of ours"
    finally:
        attached.shutdown()
    assert not [n for n in shm.list_segments(namespace) if f"_{os.getpid()}_" in n]
    assert torch.equal(two_workers["bob"]._objects[p.id_at_location], big)  # bob's tensor lives on


def test_connect_attaches_to_a_running_simulation(two_workers):
    attached = sy.connect("e2e-two")
    try:
        assert not attached.owner
        assert attached["bob"].pid == two_workers["bob"].pid
        p = torch.tensor([1.0, 2.0]).send(attached["bob"])
        assert p.id_at_location in two_workers["bob"]._objects
        assert torch.equal(p.get(), torch.tensor([1.0, 2.0]))
    finally:
        attached.shutdown()
    assert psutil.pid_exists(two_workers["bob"].pid)  # detaching stopped nothing
    assert torch.equal((torch.ones(1).send(two_workers["bob"]) + 1).get(), torch.tensor([2.0]))
