"""Bench rows for the Ray backend, beside the local backend and a bare Ray actor call, in one run.

    python -m bench.ray_rows            # prints a markdown table (docs/cluster.md keeps the figures)

Starts its own two-node Ray cluster on 127.0.0.1 (a head node and a second node with the custom
resource "second", as tests/e2e/test_ray.py does) and stops it at the end. Rows:

- small op: `x + y` on 5 elements, synchronous, p50; Ray backend / local backend / one bare
  actor call (`ray.get(actor.add.remote(x, y))`). Goal: Ray backend <= 1.2x the bare call.
- pipelined ops/s: a chain of `y = y + 1` under `sy.pipeline()`; against one actor call per op.
  Goal: >= 5x.
- 64 MB send + get: Ray backend on the client's node through simsyft's segments, the same
  through Ray's object store (what crosses nodes), and the local backend. The faster of the
  first two is what the backend uses on one node.
- cross-node move of 64 MB (head -> second node, actor to actor) beside a same-node move.
- start of 4 workers: `sy.launch` of 4 Ray actors until all answer, and of 4 local processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
os.environ.update(ENV)  # before Ray is imported: it reads them then
_RAY_START = ("import sys; from ray._private import ray_constants, services; ray_constants.ENABLE_RAY_CLUSTER = True; "
              "services.resolve_ip_for_localhost = lambda host: host; from ray.scripts.scripts import main; "
              "sys.argv[0] = 'ray'; main()")
MB64 = 16 * 2**20  # float32 elements


def _node(log: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RAY_START, "start", "--block", "--node-ip-address=127.0.0.1",
                             "--disable-usage-stats", "--object-store-memory", str(1024 * 2**20), *args],
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _cluster(folder: str) -> tuple[str, list[subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head_log = os.path.join(folder, "head.log")
    nodes = [_node(head_log, "--head", f"--port={port}", "--num-cpus=8", "--include-dashboard=false",
                   "--resources", json.dumps({"head": 100}))]
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in open(head_log).read():
        if time.monotonic() > deadline:
            raise RuntimeError("the head node did not start")
        time.sleep(0.2)
    nodes.append(_node(os.path.join(folder, "second.log"), f"--address=127.0.0.1:{port}", "--num-cpus=8",
                       "--resources", json.dumps({"second": 100})))
    return f"127.0.0.1:{port}", nodes


def _p50(fn, reps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> int:
    import ray
    import torch

    import simsyft as sy
    from simsyft.config import SimulationConfig, WorkerConfig
    from simsyft.backends.ray import forget_cluster

    torch.set_num_threads(1)
    sy.TorchHook(torch)  # Tensor.send
    folder = tempfile.mkdtemp(prefix="simsyft-ray-bench-")
    address, nodes = _cluster(folder)
    rows: list[tuple[str, str, str, str]] = []
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            time.sleep(0.2)

        # -- start of 4 workers ---------------------------------------------------------------
        t = time.perf_counter()
        sim = sy.launch(SimulationConfig("bench", None, (WorkerConfig("bob", node="head"),
                                                          WorkerConfig("alice", node="second"),
                                                          WorkerConfig("carol", node="head"),
                                                          WorkerConfig("dave", node="head")),
                                         backend="ray", address=address))
        ray_start = time.perf_counter() - t
        t = time.perf_counter()
        local = sy.launch(SimulationConfig("benchlocal", None, tuple(WorkerConfig(n) for n in ("lb", "la", "lc", "ld"))))
        local_start = time.perf_counter() - t
        rows.append(("start of 4 workers", f"{ray_start:.2f} s", f"{local_start:.2f} s", "-"))

        bob, alice, carol, lb, la = sim["bob"], sim["alice"], sim["carol"], local["lb"], local["la"]

        # -- small op -------------------------------------------------------------------------
        @ray.remote(num_cpus=1, resources={"head": 0.001})
        class Bare:
            def add(self, x, y):
                return x + y

            def echo(self, payload):
                return payload

        bare = Bare.remote()
        a, b = torch.ones(5), torch.ones(5)
        bare_small = _p50(lambda: ray.get(bare.add.remote(a, b)), 300)
        payload = bytes(100)
        bare_echo = _p50(lambda: ray.get(bare.echo.remote(payload)), 300)
        xr, yr = a.send(bob), b.send(bob)
        xl, yl = a.send(lb), b.send(lb)
        ray_small = _p50(lambda: xr + yr, 300)
        local_small = _p50(lambda: xl + yl, 300)
        rows.append(("small op (p50)", f"{ray_small * 1e6:.0f} us", f"{local_small * 1e6:.0f} us",
                     f"bare add() of tensors {bare_small * 1e6:.0f} us (ray backend / that = {ray_small / bare_small:.2f}x; "
                     f"goal <= 1.2x); bare echo of 100 bytes {bare_echo * 1e6:.0f} us ({ray_small / bare_echo:.2f}x)"))

        # -- pipelined ------------------------------------------------------------------------
        def pipelined(worker, n: int = 2000) -> float:
            y = torch.zeros(5).send(worker)
            t = time.perf_counter()
            with sy.pipeline():
                for _ in range(n):
                    y = y + 1
            y.get()
            return n / (time.perf_counter() - t)

        pipelined(bob, 200)
        ray_rate = statistics.median(pipelined(bob) for _ in range(3))
        local_rate = statistics.median(pipelined(lb) for _ in range(3))
        rows.append(("pipelined ops/s", f"{ray_rate:,.0f}", f"{local_rate:,.0f}",
                     f"{1 / bare_small:,.0f} one call per op (ray backend / that = {ray_rate * bare_small:.1f}x; "
                     "goal >= 5x)"))

        # -- 64 MB send + get, on the client's node -------------------------------------------
        big = torch.randn(MB64)

        def send_get(worker) -> float:
            return _p50(lambda: big.send(worker).get(), 5, warmup=2)

        seg = send_get(bob)
        link = bob.connection
        link.remote_node = True  # the path between nodes: Ray's object store
        objects = send_get(bob)
        link.remote_node = False
        local_sg = send_get(lb)
        rows.append(("64 MB send + get (same node)", f"{seg * 1e3:.0f} ms segments / {objects * 1e3:.0f} ms object store",
                     f"{local_sg * 1e3:.0f} ms", f"segments kept on one node ({objects / seg:.1f}x faster)"
                     if seg < objects else "object store faster: switch"))

        # -- move of 64 MB ----------------------------------------------------------------------
        def move(src, dst) -> float:
            ptr = big.send(src)
            t = time.perf_counter()
            moved = ptr.move(dst)
            elapsed = time.perf_counter() - t
            del moved
            return elapsed

        cross = statistics.median(move(bob, alice) for _ in range(3))
        same = statistics.median(move(bob, carol) for _ in range(3))
        local_move = statistics.median(move(lb, la) for _ in range(3))
        rows.append(("64 MB move", f"{cross * 1e3:.0f} ms across nodes / {same * 1e3:.0f} ms same node",
                     f"{local_move * 1e3:.0f} ms", "-"))
        sim.shutdown()
        local.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in nodes:
            os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        for node in nodes:
            node.wait(timeout=60)
        forget_cluster(address)

    print(f"| row | ray backend | local backend | reference |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
