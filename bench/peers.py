"""Peers: the same small work through torch.distributed.rpc and Ray.

DESIGN.md wants simsyft faster than both on every row. torch.distributed.rpc
runs a world of two spawned processes bound to 127.0.0.1 on a free port;
Ray runs only if `import ray` works, and is otherwise reported as skipped.
"""

from __future__ import annotations

import contextlib
import socket

from .harness import Figure, Settings, now, rate_figure, skipped, time_figure


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peer_torch_rpc(s: Settings) -> list[Figure]:
    """rpc_sync(torch.add) of two 5-element tensors, and pipelined rpc_async calls/s."""
    import queue

    import torch.multiprocessing as tmp

    from ._children import rpc_rank

    ctx = tmp.get_context("spawn")
    out_q = ctx.Queue()
    port = free_port()
    cfg = {"warmup": s.warmup, "reps": s.reps, "pipelined": s.pipelined, "bursts": s.bursts}
    procs = [ctx.Process(target=rpc_rank, args=(r, port, cfg, out_q), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        try:
            result = out_q.get(timeout=300)
        except queue.Empty:
            raise RuntimeError("torch.distributed.rpc ranks gave no result within 300 s") from None
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return [
        time_figure(result["small"], name="torch_rpc_small", group="peer",
                    what="torch.distributed.rpc rpc_sync(torch.add), 5 elements",
                    expected=(250e-6, 350e-6)),
        rate_figure(result["rates"], "calls/s", name="torch_rpc_pipelined", group="peer",
                    what="torch.distributed.rpc rpc_async(torch.add) pipelined",
                    expected=(6e3, 10e3)),
    ]


def peer_ray(s: Settings) -> list[Figure]:
    """A Ray actor's add(), synchronous and pipelined; skipped when ray is not installed."""
    names = ("ray_small", "ray_pipelined")
    try:
        import ray
    except Exception as exc:  # ImportError, or a broken install: either way not our failure
        why = "ray not installed" if isinstance(exc, ImportError) else f"import ray failed: {exc}"
        return [skipped(n, "peer", "Ray actor call", why) for n in names]
    import torch

    started = False
    try:
        if not ray.is_initialized():
            # Local only: a fresh node of our own (never a cluster found running), bound to 127.0.0.1.
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, _node_ip_address="127.0.0.1")
            started = True

        @ray.remote
        class Adder:
            def add(self, x, y):
                return x + y

        actor = Adder.remote()
        x, y = torch.tensor([1.0, 2, 3, 4, 5]), torch.ones(5)
        ray.get(actor.add.remote(x, y))
        warm, reps = min(s.warmup, 100), min(s.reps, 2000)
        for _ in range(warm):
            ray.get(actor.add.remote(x, y))
        samples = []
        for _ in range(reps):
            t0 = now()
            ray.get(actor.add.remote(x, y))
            samples.append(now() - t0)
        rates = []
        n = min(s.pipelined, 5000)
        for _ in range(s.bursts):
            t0 = now()
            ray.get([actor.add.remote(x, y) for _ in range(n)])
            rates.append(n / (now() - t0))
        return [
            time_figure(samples, name="ray_small", group="peer",
                        what="Ray actor add(), 5 elements, ray.get each", expected=(600e-6, 900e-6)),
            rate_figure(rates, "calls/s", name="ray_pipelined", group="peer",
                        what="Ray actor add() pipelined", expected=(700, 1100)),
        ]
    finally:
        if started:
            ray.shutdown()
