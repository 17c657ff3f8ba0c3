"""A worker process of the local backend: a ZeroMQ ROUTER socket in front of a WorkerCore.

Owns `main()`, the process's loop: read the `WorkerLaunch` from the command line, apply the
worker's settings (threads, CPU affinity, seed, device, memory limit), load its data, then
serve messages in arrival order until shut down, and clean up after an owner that died.
Run as ``python -m simsyft.worker '<WorkerLaunch JSON>'`` (backends/local.py does this).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

import torch

from ..links.zmq import context as zmq_context
from ..wire import segments, shm
from . import limits
from .core import WorkerCore
from .peers import ZmqPeers
from .spec import WorkerLaunch

__all__ = ["main", "serve"]


def _cleanup_after_parent(launch: WorkerLaunch) -> None:
    # The owner died without shutting us down (kill -9): remove what it would have.
    # A worker started by an attached process must leave the owner's simulation alone.
    if launch.owns_run_dir:
        segments.sweep(launch.namespace)
        shutil.rmtree(launch.run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return serve(WorkerLaunch.from_json((argv if argv is not None else sys.argv[1:])[0]))


def serve(launch: WorkerLaunch) -> int:
    """Be the worker `launch` describes until shut down (a spawned worker, or a fork of worker/template.py)."""
    import zmq

    config = launch.config
    shm.raise_fd_limit()  # every segment it maps keeps two descriptors (shm.intact)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the user's terminal is the client's to handle
    torch.set_num_threads(config.threads)
    if config.cpus:
        import psutil

        psutil.Process().cpu_affinity(list(config.cpus))
    if config.seed is not None:
        torch.manual_seed(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if config.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    peers = ZmqPeers(launch.run_dir, launch.request_timeout_s)
    core = WorkerCore(config.name, launch.namespace, str(device), peers)
    core.load_data(config.data)
    parent = launch.parent_pid
    memory_limit = config.memory_limit or 0
    if memory_limit:
        import psutil

        me = psutil.Process()

    ctx = zmq_context()  # the one pointer chains' links use: no IO thread to start later
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 250)
    sock.bind(launch.endpoint)
    more = int(zmq.SNDMORE)  # a plain int: or-ing zmq's enum flags costs ~1 us a send
    try:
        if memory_limit and device.type == "cpu" and sys.platform == "linux":
            problem = limits.enforce(core.name, memory_limit, config.threads)
            if problem is not None:
                print(f"simsyft worker {core.name!r}: {problem}; stopping", file=sys.stderr, flush=True)
                return 3
            core.memory_limit = memory_limit
        while core.running:
            try:
                # Copies: frames are small (tensor data above INLINE_MAX travels in segments),
                # and bytes are cheaper to make than zmq Frames.
                frames = sock.recv_multipart()
            except zmq.Again:
                if parent and os.getppid() != parent:
                    _cleanup_after_parent(launch)
                    return 0
                continue
            reply = core.handle(frames[1:])
            if reply is not None:
                sock.send(frames[0], more)
                if len(reply) == 1:
                    sock.send(reply[0])
                else:
                    sock.send_multipart(reply, copy=False)
            # The backstop of Note [Memory limit]. RSS also counts the pages of shared-memory
            # segments the worker touched (tensors sent to it), which the limit does not: only
            # when RSS alone is over is /proc read to leave them out.
            if memory_limit and me.memory_info().rss > memory_limit:
                used = limits.private_resident() or me.memory_info().rss
                if used > memory_limit:
                    print(f"simsyft worker {core.name!r}: memory limit exceeded: {used} bytes resident "
                          f"(not counting shared-memory segments) > memory_limit {memory_limit} bytes; stopping",
                          file=sys.stderr, flush=True)
                    return 3
    finally:
        sock.close(0)
        peers.close()
        ctx.term()
    return 0
