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
import time
from collections import deque

import torch

from .. import network
from ..errors import ProtocolError
from ..links.zmq import context as zmq_context
from ..wire import codec, messages, segments, shm
from . import limits
from .core import WorkerCore
from .peers import ZmqPeers
from .spec import WorkerLaunch

__all__ = ["main", "seed_torch", "serve"]


def _only_cpu_generators() -> bool:
    """Whether this torch build has no generator but the CPU's (no CUDA, MPS, XPU or custom device)."""
    try:
        return not (torch.backends.cuda.is_built() or torch.backends.mps.is_built() or torch.xpu._is_compiled()
                    or torch._C._get_privateuse1_backend_name() != "privateuseone")
    except AttributeError:  # a torch without one of these probes: do as torch does
        return False


def seed_torch(seed: int | None) -> None:
    """torch.manual_seed(seed), or torch.seed() for None: the same streams, for less where only CPU exists.

    torch's two visit every device's generators, which costs a forked worker ~2 ms of its
    ~5 ms start (mostly the pages of code and objects it touches); with a CPU-only build the
    CPU generator is all there is, so it is seeded alone.
    """
    if not _only_cpu_generators():
        torch.manual_seed(seed) if seed is not None else torch.seed()
    elif seed is not None:
        torch.default_generator.manual_seed(seed)
    else:
        torch.default_generator.seed()


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
        seed_torch(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if config.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    net = _network(launch)  # before any link to a peer is made: they stamp what they send
    pending = config.message_pending_time
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
    held: deque[list] = deque()  # messages that came while a handler waited for a delivery

    def answer(frames: list) -> None:
        if pending:
            time.sleep(pending)  # PySyft 0.2's message_pending_time: each message really waits
        reply = core.handle(frames[1:]) if net is None else _serve(core, net, frames)
        if reply is not None:
            sock.send(frames[0], more)
            if len(reply) == 1:
                sock.send(reply[0])
            else:
                sock.send_multipart(reply, copy=False)

    def pump(timeout_s: float) -> bool:
        # Note [One-way deals] (worker/mpc.py): serve a triple delivery now, hold anything else
        # (at most 1024: past that the rest stay queued in the socket, and the wait runs out).
        if len(held) >= 1024 or not sock.poll(max(1, int(timeout_s * 1000))):
            if held and len(held) >= 1024:
                time.sleep(timeout_s)
            return False
        frames = sock.recv_multipart()
        if codec.is_delivery(frames[1:2]):
            answer(frames)
        else:
            held.append(frames)
        return True

    core.pump = pump
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
                frames = held.popleft() if held else sock.recv_multipart()
            except zmq.Again:
                if parent and os.getppid() != parent:
                    _cleanup_after_parent(launch)
                    return 0
                continue
            answer(frames)
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


def _network(launch: WorkerLaunch) -> network.Network | None:
    """This worker's side of the simulation's network model, if it has one (network.json)."""
    found = network.read(launch.run_dir)
    if found is None or found[0].mode == "off":
        return None
    config, origin = found
    worker = launch.config
    return network.install(launch.namespace, network.Network(
        config, worker.name, worker.compute_factor, worker.offline, origin))


def _serve(core: WorkerCore, net: network.Network, frames: list) -> list | None:
    """Handle one stamped request (frames: routing id, the message, its stamp) on the simulated
    clock: start at max(our clock, its arrival), take CPU time x compute_factor, stamp the reply."""
    stamp = frames.pop() if len(frames) > 2 else b""
    body = frames[1:]
    try:
        src, arrival = net.arrival(stamp)
    except ProtocolError:
        src, arrival = "?", None  # a malformed message: the decoder refuses it, without the clock
    if arrival is None:  # quiet: status, readiness, the ledger's questions
        reply = core.handle(body)
        return None if reply is None else [*reply, network.QUIET_STAMP]
    seq = codec.peek_seq(body)
    if net.is_offline(arrival) and seq >= 0:  # a Free (no seq) is still applied: it only drops garbage
        window = next((a, b) for a, b in net.offline if a <= arrival < b)
        text = (f"worker {core.name!r} is offline at simulated time {arrival:.3f} s (its offline window "
                f"[{window[0]:g}, {window[1]:g}) s): the call from {src!r} changed nothing on it; retry after "
                f"{window[1]:g} s")
        refusal = messages.ErrorReply(seq, "simsyft.errors", "WorkerUnavailableError", text, "", core.name)
        return [*codec.encode(refusal), net.stamp(at=arrival)]  # refused at once: the clock does not move
    net.clock.arrive(arrival)
    cpu = time.process_time()
    reply = core.handle(body)
    if net.enforce and net.factor != 1.0:
        net.clock.extend((net.factor - 1.0) * (time.process_time() - cpu))
    return None if reply is None else [*reply, net.stamp()]
