"""Segment hardening with real worker processes (segments.py, Note [Segment ownership]).

A transfer larger than the pool's budget, and a real 2.1 GiB one; a segment of another simulation
refused; a get() the client cannot take that leaves the object on the worker; a segment truncated
under a stored tensor that costs that object, not the worker.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.wire import codec, messages, segments, shm, tensors
from simsyft.links.link import rebuild_exception

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG = 1 << 20  # float32 elements: 4 MiB


def launch(directory, *names: str, name: str = "e2e-segments"):
    workers = "".join(f"\n[workers.{n}]\n" for n in names)
    path = directory / "sim.toml"
    path.write_text(f'[simulation]\nname = "{name}"\n{workers}')
    return sy.launch(str(path))


@pytest.fixture(scope="module")
def sim(tmp_path_factory, hook, process_bob):
    # process_bob first: the implicit simulation must exist before this one becomes the default.
    with launch(tmp_path_factory.mktemp("segments"), "seg_a") as simulation:
        yield simulation


@pytest.fixture
def seg_a(sim):
    worker = sim["seg_a"]
    worker.clear_objects()
    yield worker
    worker.clear_objects()


@pytest.fixture
def small_pool(tmp_path, hook, monkeypatch):
    """A simulation whose workers, and this client, keep at most 1 MiB of idle segments."""
    monkeypatch.setenv("SIMSYFT_POOL_BYTES", str(1 << 20))  # read at import by the workers
    monkeypatch.setattr(segments, "IDLE_MAX", 1 << 20)
    with launch(tmp_path, "seg_small", name="e2e-small-pool") as simulation:
        yield simulation["seg_small"]


def shm_names(namespace: str) -> set:
    return set(shm.list_segments(namespace))


# -- larger than the pool's budget -------------------------------------------------

def test_transfers_larger_than_the_pool_budget(small_pool):
    worker = small_pool
    x = torch.arange(BIG, dtype=torch.float32)  # 4 MiB, 4x the budget
    p = x.send(worker)
    assert torch.equal(worker._objects[p.id_at_location], x)
    assert torch.equal((p * 2).get(), x * 2)  # the worker's own segment, mapped here
    assert torch.equal(p.get(), x)  # handed back
    assert segments.lost(worker.connection.namespace) == []


HUGE = int(2.1 * (1 << 30))  # just over the default 2 GiB budget of idle segments


@pytest.mark.skipif(shutil.disk_usage(shm.SHM_DIR).free < 3 * HUGE or psutil.virtual_memory().available < 4 * HUGE,
                    reason="needs about 9 GiB of free memory and /dev/shm")
def test_a_2_1_gib_round_trip(tmp_path, hook):
    nbytes = HUGE
    assert nbytes > segments.IDLE_MAX
    with launch(tmp_path, "seg_huge", name="e2e-huge") as simulation:
        worker = simulation["seg_huge"]
        x = torch.ones(nbytes, dtype=torch.uint8)
        p = x.send(worker)
        del x
        q = p + 1  # a new 2.1 GiB tensor on the worker: its get() maps the worker's segment here
        del p
        worker.object_count()  # the worker has dropped p: the first segment is idle, and over the budget
        torch.ones(BIG).send(worker)  # a small transfer: both sides trim it, so at most 2 x 2.1 GiB live at once
        r = q.get()
        try:
            assert r.shape == (nbytes,) and int(r.min()) == 2 and int(r.max()) == 2
            assert worker.object_count() == 0
        finally:
            del r, q
            gc.collect()


# -- another simulation's segments -----------------------------------------------

def send_frames(connection, frames: list):
    """Send prepared frames as the next request (a forged message) and return the reply, or raise."""
    with connection._lock:
        connection._transmit(frames)
        reply = codec.decode(connection._recv(), namespace=connection.namespace)
    if isinstance(reply, messages.ErrorReply):
        raise rebuild_exception(reply)
    return reply


def test_a_segment_of_another_simulation_is_refused(seg_a, process_bob):
    victim, thief = process_bob, seg_a  # two simulations of one user
    assert victim.connection.namespace != thief.connection.namespace
    x = torch.arange(BIG, dtype=torch.float32)
    p = x.send(victim)
    # Store: a real Store of the victim's simulation, sent to the thief.
    conn = thief.connection
    mark = tensors.sending()
    frames = codec.encode(messages.Store(conn.next_seq(), 8, x * 3), victim.connection.namespace)
    armed = tensors.sent(mark)
    with pytest.raises(sy.ProtocolError, match="belongs to simulation"):
        send_frames(conn, frames)
    assert thief._objects == {}
    tensors.reclaim(armed)  # never received: free again (Connection.request does this itself)
    assert torch.equal(p.get(), x)  # unchanged, and still the victim's
    y = torch.full((BIG,), 5.0).send(victim)  # the victim's next sends reuse its segments as before
    assert torch.equal(y.get(), torch.full((BIG,), 5.0))


def test_move_between_simulations_is_refused(seg_a, process_bob):
    x = torch.ones(BIG).send(process_bob)
    with pytest.raises(sy.LocationMismatchError, match="different simulations"):
        x.move(seg_a)
    assert torch.equal(x.get(), torch.ones(BIG))


# -- a get() the client cannot take ---------------------------------------------

@pytest.mark.parametrize("result", ["sent", "computed"])
def test_a_failed_get_leaves_the_object_on_the_worker(seg_a, monkeypatch, result):
    worker = seg_a
    x = torch.arange(BIG, dtype=torch.float32)
    p = x.tag("#kept").send(worker)
    q, expected = (p, x) if result == "sent" else (p * 2, x * 2)
    real, calls = tensors._open_segment, []

    def failing(*args, **kwargs):  # this process cannot map the reply's segment, once
        calls.append(1)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real(*args, **kwargs)

    monkeypatch.setattr(tensors, "_open_segment", failing)
    with pytest.raises(sy.ProtocolError, match="still on the worker"):
        q.get()
    assert q.id_at_location in worker._objects
    assert [t.id_at_location for t in worker.search("#kept")] == [p.id_at_location]
    assert torch.equal(q.get(), expected)
    worker.clear_objects()
    assert segments.lost(worker.connection.namespace) == []


# -- a segment truncated under a stored tensor ----------------------------------

def test_a_truncated_segment_costs_its_object_not_the_worker(seg_a):
    worker = seg_a
    namespace = worker.connection.namespace
    keep_small = torch.tensor([1.0, 2.0]).send(worker)
    keep_big = torch.full((BIG,), 7.0).send(worker)
    before = shm_names(namespace)
    x = torch.arange(BIG, dtype=torch.float32).send(worker)
    (name,) = shm_names(namespace) - before
    view = x[10:]  # another object over the same segment
    pid = worker.pid
    os.truncate(os.path.join(shm.SHM_DIR, name), 0)  # another process of this user does it
    with pytest.raises(sy.ObjectNotFoundError, match=r"was lost: its shared-memory segment .* was truncated"):
        x + 1
    assert psutil.pid_exists(pid) and worker.pid == pid
    with pytest.raises(sy.ObjectNotFoundError):
        view.get()  # dropped with it
    with pytest.raises(sy.ObjectNotFoundError):
        x.get()
    assert sorted(worker._objects) == sorted([keep_small.id_at_location, keep_big.id_at_location])
    assert torch.equal(keep_big.get(), torch.full((BIG,), 7.0))
    assert torch.equal(keep_small.get(), torch.tensor([1.0, 2.0]))
    y = torch.arange(BIG, dtype=torch.float32).send(worker)  # this client does not reuse the broken segment
    assert torch.equal((y + 1).get(), torch.arange(BIG, dtype=torch.float32) + 1)


def test_a_truncated_free_segment_is_not_reused_by_its_creator(tmp_path):
    # In a child: on failure this would die of SIGBUS, which must not take the test run with it.
    script = textwrap.dedent("""
        import gc, os, sys, torch
        from simsyft.wire import segments, tensors
        ns = sys.argv[1]
        try:
            desc = tensors.encode_tensor(torch.ones(1 << 20), [], ns)
            out = tensors.decode_tensor(desc, [], ns)
            del out
            gc.collect()                                   # FREE, and pooled for the next send
            os.truncate(desc[3][1], 0)
            again = tensors.encode_tensor(torch.ones(1 << 20), [], ns)
            assert again[3][1] != desc[3][1]
            assert torch.equal(tensors.decode_tensor(again, [], ns), torch.ones(1 << 20))
            print("ok")
        finally:
            segments.sweep(ns)
    """)
    # The namespace carries this process's pid: whatever the child leaves (a failed assert, a
    # SIGBUS) is swept below, and the session's leak check would see it.
    ns = f"{os.getpid()}-child"
    try:
        done = subprocess.run([sys.executable, "-c", script, ns], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": ROOT})
    finally:
        segments.sweep(ns)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
