"""Many workers: forked from a warm template, worker groups, and no leaks at 64 workers
(`simsyft down`, Ctrl-C and kill -9 of the user's process). Real processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.config import parse_config
from simsyft.rundir import is_worker_of, pid_alive, read_pids
from simsyft.wire import shm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {k: v for k, v in os.environ.items() if k not in ("SIMSYFT_RUN_DIR", "SIMSYFT_START")}
ENV["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
MANY = 64

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers: Linux only")


@pytest.fixture
def test_timeout_s() -> int:
    return 240  # 64 workers start in seconds, but this machine's 2 cores are shared


def group_config(name: str, count: int, **simulation) -> object:
    return parse_config({"simulation": {"name": name, **simulation},
                         "workers": {"client": {"count": count, "cpus": "spread"}}})


def gone(pids, namespace: str, run_dir: str, timeout: float = 60.0) -> tuple[list[int], list[str], bool]:
    """Wait (up to `timeout`) until no pid lives, no segment of `namespace` and no run dir remain."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        segments = [n for n in shm.list_segments() if n.startswith(f"simsyft_{namespace}_")]
        left_dir = os.path.exists(run_dir)
        if (not alive and not segments and not left_dir) or time.monotonic() > deadline:
            return alive, segments, left_dir
        time.sleep(0.1)


def test_workers_are_forked_from_a_template_and_adopted_by_their_owner(hook):
    with sy.launch(group_config("many-fork", 3, start="fork")) as sim:
        backend = sim.backend
        assert backend.start_method == "fork"
        template = psutil.Process(backend.template.pid)
        # Note [Forked workers]: nothing started a thread before the forks.
        assert template.num_threads() == 1
        clients = sim.group("client")
        pids = [c.pid for c in clients]
        assert len(set(pids)) == 3 and template.pid not in pids
        for client in clients:
            proc = psutil.Process(client.pid)
            assert proc.ppid() == os.getpid()  # adopted: reaped by us, exit status known
            assert "simsyft.worker.template" in proc.cmdline()
            assert is_worker_of(client.pid, backend.token)  # the token crossed the fork
        # Isolation after the fork: each worker has its own store.
        kept = torch.arange(3).send(clients[0])
        assert list(clients[0]._objects) == [kept.id_at_location] and clients[1]._objects == {}
        status = sim.status()
        for row in status.values():
            assert row["group"] == "client"
            assert 0 < row["uss"] < row["rss"] / 2  # most of a forked worker is the template's pages


def test_unseeded_forks_draw_different_random_numbers(hook):
    with sy.launch(group_config("many-rand", 2, start="fork")) as sim:
        a, b = sim.group("client")
        assert not torch.equal(torch.zeros(8).send(a).uniform_().get(), torch.zeros(8).send(b).uniform_().get())


def test_seeded_forks_follow_seed_plus_index(hook):
    with sy.launch(group_config("many-seed", 2, seed=11, start="fork")) as sim:
        for i, client in enumerate(sim.group("client")):
            torch.manual_seed(11 + i)
            expected = torch.zeros(5).uniform_()
            assert torch.equal(torch.zeros(5).send(client).uniform_().get(), expected)


def test_a_dead_template_takes_no_worker_down_and_is_replaced(hook):
    with sy.launch(group_config("many-template", 2, start="fork")) as sim:
        first = sim.backend.template.pid
        os.kill(first, signal.SIGKILL)
        for client in sim.group("client"):
            assert torch.equal((torch.ones(3).send(client) + 1).get(), torch.full((3,), 2.0))
        sim.restart("client_1")  # needs a fork: a new template is started
        assert sim.backend.template.pid != first and sim.backend.template.starts == 2
        assert torch.equal((torch.ones(2).send(sim["client_1"]) * 3).get(), torch.full((2,), 3.0))
        killed = sim["client_0"]
        sim.kill("client_0")
        with pytest.raises(sy.WorkerCrashedError, match=r"exited with -9 \(SIGKILL\)"):
            torch.ones(1).send(killed)


def test_start_env_chooses_the_default(monkeypatch):
    from simsyft.backends.local import START_ENV, default_start

    monkeypatch.setenv(START_ENV, "spawn")
    assert default_start() == "spawn"
    monkeypatch.setenv(START_ENV, "fork")
    assert default_start() == "fork"


def test_spawn_start_runs_a_fresh_interpreter_per_worker(hook):
    with sy.launch(group_config("many-spawn", 1, start="spawn")) as sim:
        assert sim.backend.template is None
        cmdline = psutil.Process(sim["client_0"].pid).cmdline()
        assert "simsyft.worker" in cmdline and "simsyft.worker.template" not in cmdline


def test_many_workers_answer_fold_in_status_and_leave_nothing(hook):
    with sy.launch(group_config("many-64", MANY, start="fork")) as sim:
        clients = sim.group("client")
        assert [c.id for c in clients] == [f"client_{i}" for i in range(MANY)]
        pointers = [torch.full((2,), float(i)).send(c) for i, c in enumerate(clients)]
        assert [p.get()[0].item() for p in pointers] == [float(i) for i in range(MANY)]
        big = torch.ones(64 * 1024).send(clients[-1])  # through a segment: the shutdown must remove it
        pids, namespace, run_dir = [c.pid for c in clients], sim.namespace, sim.run_dir
        template = sim.backend.template.pid
        from simsyft.cli import format_status

        table = format_status(sim.name, sim.status()).splitlines()
        assert len(table) == 3 and table[2].startswith(f"client [{MANY}]") and f"running {MANY}" in table[2]
        del big
    assert gone(pids + [template], namespace, run_dir) == ([], [], False)


# -- no leaks when the user's process stops: simsyft down, Ctrl-C, kill -9 ----------------------

SCRIPT = """
import json, os, sys, time, torch, simsyft as sy
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started where SIGINT is ignored (nohup, &)
hook = sy.TorchHook(torch)
sim = sy.launch(sys.argv[1])
clients = sim.group("client")
kept = [torch.ones(64 * 1024).send(c) for c in clients[:4]]  # segments, to see them removed
print(json.dumps({"pids": [c.pid for c in clients] + [sim.backend.template.pid],
                  "namespace": sim.namespace, "run_dir": sim.run_dir}), flush=True)
time.sleep(600)
"""


def write_group_config(tmp_path, what: str) -> tuple[str, str]:
    name = f"many-{what}-{secrets.token_hex(3)}"
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[simulation]\nname = "{name}"\n\n[workers.client]\ncount = {MANY}\ncpus = "spread"\n')
    return str(path), name


def start_script(tmp_path, what: str) -> tuple[subprocess.Popen, dict]:
    config, _ = write_group_config(tmp_path, what)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), config], stdout=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT)
    facts = json.loads(proc.stdout.readline())
    assert len(facts["pids"]) == MANY + 1
    return proc, facts


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_the_user_process_stopping_leaves_nothing(tmp_path, how):
    proc, facts = start_script(tmp_path, how)
    try:
        assert [n for n in shm.list_segments() if n.startswith(f"simsyft_{facts['namespace']}_")]
        proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        proc.wait(60)
        # Ctrl-C: the script's shutdown stops everything. kill -9: each worker sees its owner
        # gone and cleans up; the template sees its requests end.
        assert gone(facts["pids"], facts["namespace"], facts["run_dir"]) == ([], [], False)
    finally:
        proc.kill()
        proc.wait()


def test_simsyft_down_leaves_nothing(tmp_path):
    config, name = write_group_config(tmp_path, "down")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "simsyft", *args], capture_output=True, text=True,
                              timeout=180, env=ENV, cwd=ROOT)

    up = run("up", config, "--detach")
    try:
        assert up.returncode == 0, up.stderr
        status = run("status", name)
        assert f"client [{MANY}]" in status.stdout and f"running {MANY}" in status.stdout
        every = run("status", name, "--all")
        assert every.stdout.count("client_") == MANY
        run_dir = next(line.split("run dir ")[1].strip() for line in status.stdout.splitlines() if "run dir" in line)
        namespace = os.path.basename(run_dir)
        pids = list(read_pids(run_dir).values())
        assert len(pids) == MANY
    finally:
        down = run("down", name)
    assert down.returncode == 0, down.stderr
    assert gone(pids, namespace, run_dir) == ([], [], False)
