"""The Ray backend on a real two-node Ray cluster on this machine, bound to 127.0.0.1.

One cluster for the module (`ray start --head` plus a second `ray start --address=...`,
each node with a custom resource: "head", "second"), stopped at the end with every process
it started. The pointer-semantics suite (tests/e2e/test_pointers.py) and the state machine run
on a simulation whose workers are actors on the head node (the client's node: segments);
the two-node tests put one worker on each node (Ray objects cross between them). Skipped
where Ray is not installed, except the test that a ray config then says how to install it.
"""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib

import psutil
import pytest
import torch
from hypothesis import settings

import simsyft as sy
from simsyft.backends.ray import forget_cluster
from simsyft.config import SimulationConfig, WorkerConfig, parse_config
from simsyft.errors import ConfigError, WorkerCrashedError
from simsyft.simulation import release_default

# The pointer-semantics suite, collected here again with this module's bob and alice (Ray actors).
from tests.e2e.test_pointers import *  # noqa: F403

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Ray advertises the machine's address unless told this (then it binds nothing off the loopback);
# it reads it when first imported, so it is set before any test imports Ray. The cluster lives on
# the loopback of a test machine: no tokens between its processes.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
os.environ.update(LOOPBACK)
# `ray start`, except that a node may join a cluster with clusters "off" (so on the loopback), and
# 127.0.0.1 stays 127.0.0.1 (Ray would swap in the machine's address).
_RAY_START = ("import sys; from ray._private import ray_constants, services; ray_constants.ENABLE_RAY_CLUSTER = True; "
              "services.resolve_ip_for_localhost = lambda host: host; from ray.scripts.scripts import main; "
              "sys.argv[0] = 'ray'; main()")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(log_path: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": ROOT}
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-c", _RAY_START, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-node Ray cluster: its address. Every process it started is gone afterwards."""
    ray = pytest.importorskip("ray")
    logs = tmp_path_factory.mktemp("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    memory = str(300 * 2**20)
    nodes = [_start_node(str(logs / "head.log"), "--head", f"--port={port}", "--num-cpus=8",
                         "--include-dashboard=false", "--object-store-memory", memory,
                         "--resources", json.dumps({"head": 100}))]
    started: set[int] = set()
    try:
        _wait_for(lambda: "Ray runtime started" in (logs / "head.log").read_text(), 60, "the head node")
        nodes.append(_start_node(str(logs / "second.log"), f"--address={address}", "--num-cpus=4",
                                 "--object-store-memory", memory, "--resources", json.dumps({"second": 100})))
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        _wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 60, "the second node")
        yield address
    finally:
        for node in nodes:
            try:
                started.update(p.pid for p in psutil.Process(node.pid).children(recursive=True))
            except psutil.Error:
                pass
        if ray.is_initialized():
            ray.shutdown()
        for node in nodes:
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
        left = [p for p in map(_process, started) if p is not None]
        for proc in left:
            proc.kill()
        forget_cluster(address)
        assert not left, f"Ray processes left running: {[p.pid for p in left]}"


def _process(pid: int):
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def _config(name: str, address: str, **nodes: str) -> SimulationConfig:
    workers = tuple(WorkerConfig(worker, node=node) for worker, node in nodes.items())
    return SimulationConfig(name, None, workers, backend="ray", address=address, request_timeout_s=60.0)


@pytest.fixture(scope="module")
def sim(cluster, hook):
    simulation = sy.launch(_config("rayone", cluster, bob="head", alice="head"))
    release_default(simulation)  # other modules' sy.VirtualWorker(hook, id="bob") must not reach it
    yield simulation
    simulation.shutdown()


def _fresh(worker):
    worker.clear_objects()
    yield worker
    worker.clear_objects()


@pytest.fixture
def bob(sim):
    yield from _fresh(sim["bob"])


@pytest.fixture
def alice(sim):
    yield from _fresh(sim["alice"])


# -- this backend's own behaviour ----------------------------------------------------------

def test_workers_are_named_actors_in_the_simulations_namespace(sim):
    import ray

    names = {(a["namespace"], a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)}
    assert {(sim.backend.ray_namespace, "bob"), (sim.backend.ray_namespace, "alice")} <= names
    status = sim.status()
    assert status["bob"]["state"] == "running" and status["bob"]["objects"] == 0
    assert "127.0.0.1" in status["bob"]["node"]


def test_a_sync_op_is_one_actor_call_and_pipelined_ops_are_batched(bob):
    link = bob.connection
    x = torch.ones(4).send(bob)
    before = link.calls
    y = x + 1
    assert link.calls - before == 1
    before = link.calls
    with sy.pipeline():
        for _ in range(300):
            y = y + 1
    assert torch.equal(y.get(), torch.full((4,), 302.0))
    assert link.calls - before <= 4  # 300 ops: two batches of at most 256, the sync, the get


def test_pipelined_failure_surfaces_at_the_next_sync(bob):
    x = torch.ones(3).send(bob)
    with pytest.raises(RuntimeError, match="size of tensor"):
        with sy.pipeline():
            _ = x + torch.ones(4).send(bob)
            _ = x * 2
    assert torch.equal((x * 2).get(), torch.full((3,), 2.0))


def test_kill_is_a_crash_naming_the_worker_and_restart_gives_a_new_actor(cluster, hook):
    with sy.launch(_config("rayfaults", cluster, carol="head")) as s:
        carol = s["carol"]
        x = torch.ones(2).send(carol)
        s.kill("carol")
        with pytest.raises(WorkerCrashedError, match=r"worker 'carol' \(Ray actor on node .*\) died: .*ray\.kill"):
            x + 1
        assert s.backend.exit_status("carol") == -9
        s.restart("carol")
        assert carol._objects == {}
        assert torch.equal((torch.ones(2).send(carol) * 3).get(), torch.full((2,), 3.0))


def test_a_config_the_cluster_cannot_hold_fails_at_launch(cluster):
    greedy = SimulationConfig("greedy", None, (WorkerConfig("bob", threads=64),), backend="ray", address=cluster)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"worker 'bob' asks for CPU 64, which no node of the Ray cluster has: "
                                          r"node \w+ \(127\.0\.0\.1\): CPU \d") as refused:
        sy.launch(greedy)
    assert re.search(r"node \w+ \(127\.0\.0\.1\): CPU 8, head", str(refused.value))  # every node, in any order
    assert re.search(r"node \w+ \(127\.0\.0\.1\): CPU 4, second", str(refused.value))
    lost = _config("lost", cluster, bob="gpu-box")
    with pytest.raises(ConfigError, match=r"worker 'bob' asks for CPU 1, gpu-box 0\.001, which no node"):
        sy.launch(lost)
    four = SimulationConfig("four", None, tuple(WorkerConfig(f"w{i}", threads=3, node="second") for i in range(2)),
                            backend="ray", address=cluster)
    with pytest.raises(ConfigError, match=r"worker 'w1' asks for CPU 3, second 0\.001, but no node of the Ray "
                                          r"cluster has that free now \(free: node \w+: CPU [0-9]"):
        sy.launch(four)  # the second node has 4 CPUs: the first worker takes 3
    assert time.monotonic() - start < 30  # nothing waited for a placement that cannot happen


def test_move_between_nodes_goes_actor_to_actor(cluster, hook):
    with sy.launch(_config("raytwo", cluster, bob="head", alice="second")) as s:
        bob, alice = s["bob"], s["alice"]
        assert s.status()["bob"]["node"] != s.status()["alice"]["node"]
        big = torch.randn(256 * 1024)  # 1 MiB: above the inline limit
        ptr = big.send(bob)
        before = s.traffic()
        moved = ptr.move(alice)
        after = s.traffic() - before
        assert after.links[("bob", "alice")].shm_bytes == big.numel() * 4  # the bytes went worker to worker
        assert after.links[("me", "bob")].bytes < 1024 and ("me", "alice") not in after.links
        assert torch.equal((moved * 2).get(), big * 2)
        # A chain across nodes: bob holds a pointer to alice's tensor, ops forward to alice.
        chain = torch.arange(5.0).send(alice).send(bob)
        assert torch.equal((chain + chain).get().get(), torch.arange(5.0) * 2)
        # A tensor bob holds over a segment (it came from us, on his node) leaves for alice's node as
        # a Ray object: alice points to it, then takes it (remote_get) across nodes.
        local_big = torch.randn(256 * 1024)
        held = local_big.send(bob).send(alice)
        held.remote_get()
        assert torch.equal(held.get(), local_big)
        # the traffic ledger counts the client's links and the workers' own
        ledger = s.traffic()
        assert ledger.links[("alice", "me")].shm_bytes >= big.numel() * 4


def test_state_machine_on_ray(sim):
    from simsyft.testing import PointerMachine, WorkerPool

    pool = WorkerPool({"bob": sim["bob"], "alice": sim["alice"]}, simulation=sim, backend="ray")
    PointerMachine.run(pool, settings(max_examples=8, stateful_step_count=12, deadline=None, derandomize=True))


def _script(body: str, tmp_path) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_tutorial_part1_under_simsyft_run_on_ray_matches_the_notebook(cluster, tmp_path):
    """`simsyft run CONFIG -- python examples/tutorial_part1.py`: the unchanged script's
    sy.VirtualWorker(hook, id="bob") reaches a Ray actor of the simulation `run` launched."""
    from tests.e2e.test_tutorial import GOLDEN, mask

    config = tmp_path / "ray.toml"
    config.write_text(f'[simulation]\nname = "tutorial"\nbackend = "ray"\naddress = "{cluster}"\n'
                      '[workers.bob]\nnode = "second"\n')
    result = subprocess.run([sys.executable, "-m", "simsyft", "run", str(config), "--", sys.executable,
                             os.path.join(ROOT, "examples", "tutorial_part1.py")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **LOOPBACK, "PYTHONPATH": ROOT}, start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(GOLDEN) as f:
        assert mask(result.stdout) == f.read()
    assert "traffic" in result.stderr  # run's summary (the script's sy.shutdown() leaves no ledger to count)


def test_actors_leave_after_kill_9_of_the_users_process(cluster, tmp_path):
    import ray

    driver = _script(f"""
        import time, torch, simsyft as sy
        from simsyft.config import SimulationConfig, WorkerConfig
        hook = sy.TorchHook(torch)
        sim = sy.launch(SimulationConfig("orphan", None, (WorkerConfig("w1", node="head"),
                                          WorkerConfig("w2", node="second")), backend="ray", address={cluster!r}))
        (torch.randn(100_000).send(sim["w1"]) + 1)   # a segment on this node
        print(sim.backend.ray_namespace, flush=True)
        time.sleep(600)
    """, tmp_path)
    proc = subprocess.Popen([sys.executable, driver], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **LOOPBACK, "PYTHONPATH": ROOT}, start_new_session=True)
    try:
        namespace = proc.stdout.readline().strip()
        assert namespace.startswith("simsyft-"), namespace

        def actors():
            return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]

        assert len(actors()) == 2
        proc.kill()
        proc.wait()
        _wait_for(lambda: not actors(), 30, "the orphaned actors to leave")
        prefix = f"simsyft_{namespace.removeprefix('simsyft-')}_"
        # Segments on the owner's node: the actors' watch on the owner removes them when it sees the
        # death before Ray removes the actors; else the next simsyft start's sweep of leftovers does.
        from simsyft import rundir

        rundir.sweep_stale()
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
        assert not os.path.exists(os.path.join(rundir.run_root(), namespace.removeprefix("simsyft-")))
    finally:
        proc.kill()
        proc.wait()


def test_without_address_a_local_ray_on_the_loopback_is_started_and_stopped(tmp_path):
    pytest.importorskip("ray")
    driver = _script("""
        import psutil, ray, torch, simsyft as sy
        from simsyft.config import SimulationConfig, WorkerConfig
        hook = sy.TorchHook(torch)
        with sy.launch(SimulationConfig("mine", None, (WorkerConfig("bob"),), backend="ray")) as sim:
            assert sim.backend.started_ray
            assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
            assert torch.equal((torch.ones(3).send(sim["bob"]) * 2).get(), torch.full((3,), 2.0))
            print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
        assert not ray.is_initialized()
    """, tmp_path)
    result = subprocess.run([sys.executable, driver], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT}, start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    pids = [int(p) for p in result.stdout.split()]
    assert pids, "a local Ray starts processes of its own"
    _wait_for(lambda: not [p for p in map(_process, pids) if p is not None], 20, "the local Ray to stop")


# -- without Ray, and the config keys ------------------------------------------------------

def test_without_ray_a_ray_config_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    config = SimulationConfig("noray", None, (WorkerConfig("bob"),), backend="ray")
    with pytest.raises(ConfigError, match=r'needs Ray, which is not installed: pip install -e "\.\[ray\]"'):
        sy.launch(config)


def test_config_keys_address_and_node():
    def parse(text):
        return parse_config(tomllib.loads(text))

    config = parse('[simulation]\nname = "c"\nbackend = "ray"\naddress = "10.0.0.5:6379"\n[workers.bob]\nnode = "site-a"\n')
    assert config.address == "10.0.0.5:6379" and config.worker("bob").node == "site-a"
    assert WorkerConfig.from_dict(config.worker("bob").to_dict()) == config.worker("bob")
    with pytest.raises(ConfigError, match=r'\[simulation\] address: only backend = "ray" connects to a cluster'):
        parse('[simulation]\nname = "c"\naddress = "auto"\n[workers.bob]\n')
    with pytest.raises(ConfigError, match=r'\[workers.bob\] node: places a worker on a Ray node: it needs backend'):
        parse('[simulation]\nname = "c"\n[workers.bob]\nnode = "x"\n')
    with pytest.raises(ConfigError, match=r'\[simulation\] address: expected "auto" or "host:port"'):
        parse('[simulation]\nname = "c"\nbackend = "ray"\naddress = "nowhere"\n[workers.bob]\n')
