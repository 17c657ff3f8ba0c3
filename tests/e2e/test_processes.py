"""Real worker processes: identity, private endpoints, crashes, shutdown, kill -9 of the client."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.wire import shm
from simsyft.backends.local import LocalBackend
from simsyft.config import WorkerConfig
from simsyft.simulation import Simulation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_each_worker_is_its_own_process(process_bob, process_alice):
    me = os.getpid()
    assert process_bob.pid not in (None, me) and process_alice.pid not in (None, me)
    assert process_bob.pid != process_alice.pid
    for worker in (process_bob, process_alice):
        proc = psutil.Process(worker.pid)
        assert proc.ppid() == me
        assert any("simsyft.worker" in part for part in proc.cmdline())
    assert process_bob.info()["pid"] == process_bob.pid


def test_same_name_reaches_same_worker(hook, process_bob):
    again = sy.VirtualWorker(hook, id="bob")
    assert again is process_bob and again.pid == process_bob.pid
    p = torch.ones(1).send(again)
    assert p.id_at_location in process_bob._objects
    del p


def test_run_directory_is_private_and_holds_the_endpoint(process_bob):
    sim = process_bob.simulation
    mode = stat.S_IMODE(os.stat(sim.run_dir).st_mode)
    assert mode == 0o700
    endpoint = os.path.join(sim.run_dir, "bob.sock")
    assert stat.S_ISSOCK(os.stat(endpoint).st_mode)


def test_worker_runs_one_torch_thread(process_bob):
    assert process_bob.info()["threads"] == 1


def test_killed_worker_raises_crash_error_within_a_second(hook):
    victim = sy.VirtualWorker(hook, id="victim")
    p = torch.ones(3).send(victim)
    pid = victim.pid
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(sy.WorkerCrashedError) as err:
        p + 1
    assert time.monotonic() - start < 1.0
    text = str(err.value)
    assert "'victim'" in text and str(pid) in text and "-9" in text
    with pytest.raises(sy.WorkerCrashedError):
        p.get()
    fresh = sy.VirtualWorker(hook, id="victim")  # the name can be used again: a new process
    assert fresh.pid != pid
    assert torch.equal((torch.ones(2).send(fresh) * 3).get(), torch.full((2,), 3.0))
    fresh.shutdown()


def test_crash_during_a_pending_call_surfaces_within_a_second(hook):
    victim = sy.VirtualWorker(hook, id="victim2")
    a = torch.randn(1500, 1500).send(victim)
    pid = victim.pid
    timer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
    timer.start()
    start = time.monotonic()
    with pytest.raises(sy.WorkerCrashedError, match="victim2"):
        for _ in range(1000):  # long enough to still be running when the kill lands
            a = a @ a
            a = a / a.norm()
    timer.join()
    assert time.monotonic() - start < 0.3 + 1.0


def test_shutdown_one_worker(hook):
    temp = sy.VirtualWorker(hook, id="temp")
    p = torch.ones(2).send(temp)
    pid = temp.pid
    temp.shutdown()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(sy.WorkerShutdownError, match="'temp'"):
        p + 1
    del p  # freeing after shutdown is silently dropped


def test_worker_log_tail_in_crash_message(hook, tmp_path):
    sim = Simulation(LocalBackend("logs"))
    try:
        sim.backend.start(WorkerConfig("broken", cpus=(10_000,)))  # affinity fails at start
        handle = sim["broken"]
        with pytest.raises(sy.WorkerCrashedError, match=r"(?s)broken.*exited with 1;.*last stderr:.*ValueError: invalid CPU 10000"):
            torch.ones(1).send(handle)
    finally:
        sim.shutdown()


SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    import simsyft as sy
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    keep = [torch.randn(4 * 1024 * 1024).send(w) for w in (bob, alice)]   # shared-memory sized
    sim = bob.simulation
    print(json.dumps({"pids": [bob.pid, alice.pid], "namespace": sim.namespace, "run_dir": sim.run_dir}), flush=True)
    if sys.argv[1] == "shutdown":
        sy.shutdown()
        print("done", flush=True)
    elif sys.argv[1] == "exit":
        pass  # atexit must clean up
    else:
        time.sleep(600)
""")


def _start_script(mode: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    facts = json.loads(proc.stdout.readline())
    return proc, facts


def _gone(facts: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in facts["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        left = shm.list_segments(facts["namespace"])
        if not alive and not left and not os.path.exists(facts["run_dir"]):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mode", ["shutdown", "exit"])
def test_shutdown_and_exit_leave_nothing(mode):
    proc, facts = _start_script(mode)
    assert proc.wait(timeout=60) == 0
    assert _gone(facts, timeout=5), "workers, segments or run dir left behind"


def test_kill_9_of_the_client_leaves_nothing():
    proc, facts = _start_script("sleep")
    assert shm.list_segments(facts["namespace"]) == [] or True  # segments were consumed by the workers
    proc.kill()
    proc.wait()
    assert _gone(facts, timeout=5), "workers did not notice their parent died, or left leftovers"


def test_stale_leftovers_are_swept():
    from simsyft.rundir import run_root
    from simsyft.rundir import sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    namespace = f"{dead.pid}-deadbeef"
    run_dir = os.path.join(run_root(), namespace)
    os.mkdir(run_dir, 0o700)
    segment = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(namespace)}1_0")
    open(segment, "wb").close()
    removed = sweep_stale()
    assert run_dir in removed and not os.path.exists(run_dir)
    assert not os.path.exists(segment)
