"""Targets that run in child processes started with the "spawn" method.

Kept apart from `floors.py` so a spawned child imports only what it needs.
The parent and the children compare `clock()` readings: CLOCK_MONOTONIC is one
clock for the whole machine on Linux, so a difference across processes is a
real elapsed time.
"""

from __future__ import annotations

import time


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def queue_consumer(q_in, q_ack) -> None:
    """Take tensors from q_in; answer each with the time it arrived."""
    import torch  # noqa: F401  (unpickling a tensor needs torch loaded)

    q_ack.put("ready")
    while True:
        item = q_in.get()
        t = clock()
        if item is None:
            break
        q_ack.put(t)
        del item


def rpc_rank(rank: int, port: int, settings: dict, out_q) -> None:
    """One rank of a 2-process torch.distributed.rpc world on 127.0.0.1.

    Rank 0 measures a small synchronous call and pipelined async calls to rank
    1 and puts a dict of samples on out_q; rank 1 only serves.
    """
    import os

    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[rank % len(cpus)]})   # one rank per CPU, like the other two-party rows
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # Keep TensorPipe and Gloo on the loopback interface: nothing listens outside.
    os.environ.setdefault("TP_SOCKET_IFNAME", "lo")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed")
    import torch
    import torch.distributed.rpc as rpc

    torch.set_num_threads(1)
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{port}", num_worker_threads=4, rpc_timeout=60,
    )
    try:
        rpc.init_rpc(f"w{rank}", rank=rank, world_size=2, rpc_backend_options=opts)
    except Exception as exc:  # report to the parent instead of dying silently
        if rank == 0:
            out_q.put({"error": f"{type(exc).__name__}: {exc}"})
        raise
    result: dict = {}
    try:
        if rank == 0:
            x, y = torch.tensor([1.0, 2, 3, 4, 5]), torch.ones(5)
            for _ in range(settings["warmup"]):
                rpc.rpc_sync("w1", torch.add, args=(x, y))
            samples = []
            for _ in range(settings["reps"]):
                t0 = time.perf_counter()
                rpc.rpc_sync("w1", torch.add, args=(x, y))
                samples.append(time.perf_counter() - t0)
            result["small"] = samples
            rates = []
            window = 1000
            for _ in range(settings["bursts"]):
                n = settings["pipelined"]
                t0 = time.perf_counter()
                futs = []
                for i in range(n):
                    futs.append(rpc.rpc_async("w1", torch.add, args=(x, y)))
                    if len(futs) >= window:
                        torch.futures.wait_all(futs)
                        futs = []
                torch.futures.wait_all(futs)
                rates.append(n / (time.perf_counter() - t0))
            result["rates"] = rates
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if rank == 0:
            out_q.put(result)
        rpc.shutdown()
