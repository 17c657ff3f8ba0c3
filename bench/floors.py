"""Physical floors: what the machine itself costs, measured in the same run.

Each `floor_*` function takes the mode's `Settings` and returns a list of
`Figure`s named as simsyft rows refer to them ("zmq_reqrep", "memcpy_256MB"...).
`expected` carries DESIGN.md's figure for this machine, so the table shows
whether today's run is in the usual range (figures drift +-30% run to run).

Servers run in their own processes (`bench/_servers.py`, `bench/_children.py`),
so every round trip crosses processes for real. IPC endpoints live in a
private temp dir (mode 0700) that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from .harness import MB, Figure, Settings, Skip, now, rate_figure, time_calls, time_figure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_MSG = b"x" * 64


def size_name(nbytes: int) -> str:
    return f"{nbytes // MB}MB" if nbytes >= MB else f"{nbytes}B"


# --------------------------------------------------------------------------- processes

@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    """A temp dir only we can enter, removed on exit."""
    path = tempfile.mkdtemp(prefix="simsyft-bench-")
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def server(kind: str, where: str, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Start `python -m bench._servers kind where`; wait for its "ready" line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", kind, where],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=child_env(),
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            err = proc.stderr.read1(4000).decode(errors="replace") if proc.poll() is not None else ""
            raise RuntimeError(f"{kind} server did not start: {line!r} {err}")
        yield proc
    finally:
        with contextlib.suppress(Exception):
            proc.wait(timeout=2)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of a process, at nanosecond resolution.

    psutil's cpu_times tick at 10 ms, too coarse for microseconds per message;
    our own process uses CLOCK_PROCESS_CPUTIME_ID, another one the sum of its
    threads' /proc/PID/task/TID/schedstat (falling back to psutil).
    """
    if pid is None or pid == os.getpid():
        return time.process_time()
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
    except OSError:
        pass
    if found:
        return total / 1e9
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# --------------------------------------------------------------------------- CPU placement
# Note [Pin both ends of a round trip]
#     On this 2-vCPU VM a cross-process round trip costs ~17 us when both ends
#     run on one CPU (a context switch) and ~55-100 us when the peer must be
#     woken on the other, idle, CPU (an IPI through the hypervisor). Unpinned,
#     the scheduler picks either, and the same loop measures 18 us in one run
#     and 150 us in the next. Two-party rows therefore pin every thread of the
#     client to CPU 0 and every thread of the peer to CPU 1 ("cross"), the
#     layout of a simulation that gives each worker its own core, and also
#     report the same-CPU and unpinned layouts for information.

def pair_cpus() -> tuple[set[int], set[int]] | None:
    """(client CPUs, peer CPUs) for a cross-CPU layout; None with fewer than 2 CPUs."""
    avail = sorted(os.sched_getaffinity(0))
    return ({avail[0]}, {avail[1]}) if len(avail) >= 2 else None


LAYOUTS = ("cross", "samecpu", "unpinned")


def layout_cpus(layout: str) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (client, peer) in a layout; None means leave as is."""
    pair = pair_cpus()
    if layout == "unpinned":
        return None, None
    if pair is None:
        raise Skip(f"layout {layout!r} needs at least 2 usable CPUs")
    return (pair[0], pair[1]) if layout == "cross" else (pair[0], pair[0])


def _set_affinity(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    old = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            old[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return old


@contextlib.contextmanager
def pinned(*placements: tuple[int, set[int] | None]) -> Iterator[None]:
    """Pin every thread of each (pid, cpus); restore on exit. cpus None: leave alone.

    Threads started while pinned inherit the pinning; on exit they get the
    process's original mask.
    """
    saved = []
    try:
        for pid, cpus in placements:
            if cpus is not None:
                saved.append((pid, _set_affinity(pid, cpus)))
        yield
    finally:
        for pid, old in saved:
            base = old.get(pid) or next(iter(old.values()), None)
            with contextlib.suppress(OSError):
                for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                        os.sched_setaffinity(tid, old.get(tid, base))


# --------------------------------------------------------------------------- transport

@contextlib.contextmanager
def reqrep_client(layout: str = "cross") -> Iterator:
    """A REQ/REP server process and a `call()` doing one 64-byte round trip to it.

    Both ends are placed per `layout` (Note [Pin both ends of a round trip]).
    """
    import zmq

    client_cpus, server_cpus = layout_cpus(layout)
    with private_dir() as d:
        ep = f"ipc://{d}/reqrep"
        with server("reqrep", ep) as proc, pinned((os.getpid(), client_cpus), (proc.pid, server_cpus)):
            ctx = zmq.Context()
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            sock.connect(ep)
            send, recv = sock.send, sock.recv

            def call() -> None:
                send(SMALL_MSG)
                recv()

            try:
                yield call
                send(b"stop")
                recv()
            finally:
                sock.close()
                ctx.term()


REQREP_NAMES = {"cross": "zmq_reqrep", "samecpu": "zmq_reqrep_samecpu", "unpinned": "zmq_reqrep_unpinned"}
LAYOUT_WORDS = {"cross": "client CPU 0, server CPU 1", "samecpu": "both on CPU 0",
                "unpinned": "unpinned"}


def floor_zmq_reqrep(s: Settings) -> list[Figure]:
    """REQ/REP round trip of a 64-byte message over ipc, server in another process."""
    out = []
    for layout in LAYOUTS:
        with reqrep_client(layout) as call:
            samples = time_calls(call, s.reps, s.warmup)
        out.append(time_figure(
            samples, name=REQREP_NAMES[layout], group="floor",
            what=f"pyzmq REQ/REP round trip, 64 B, ipc, cross-process, {LAYOUT_WORDS[layout]}",
            expected=(100e-6, 117e-6) if layout == "cross" else None))
    return out


def floor_unix_pingpong(s: Settings) -> list[Figure]:
    """A bare AF_UNIX stream ping-pong: what zmq adds on top of the kernel."""
    import socket

    out = []
    for layout in ("cross", "samecpu"):
        client_cpus, server_cpus = layout_cpus(layout)
        with private_dir() as d:
            path = os.path.join(d, "sock")
            with server("unix", path) as proc, pinned((os.getpid(), client_cpus), (proc.pid, server_cpus)):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(10)
                c.connect(path)
                try:
                    def call() -> None:
                        c.sendall(SMALL_MSG)
                        got = 0
                        while got < len(SMALL_MSG):
                            got += len(c.recv(4096))

                    samples = time_calls(call, s.reps, s.warmup)
                    c.sendall(b"stop")
                finally:
                    c.close()
        out.append(time_figure(
            samples, name="unix_pingpong" + ("" if layout == "cross" else "_samecpu"), group="floor",
            what=f"bare AF_UNIX ping-pong, 64 B, cross-process, {LAYOUT_WORDS[layout]}",
            expected=(36e-6, 44e-6) if layout == "cross" else None))
    return out


def _pipelined_burst(sock, n: int, use_pickle: bool, window: int = 1000) -> float:
    """Send n commands keeping at most `window` unacknowledged; seconds until all acked."""
    import zmq

    dumps, loads = pickle.dumps, pickle.loads
    send, recv = sock.send, sock.recv
    inflight = 0
    t0 = now()
    for i in range(n):
        if use_pickle:
            # Shaped like a simsyft command: (op, args with refs, kwargs, result id).
            send(dumps(("torch.add", (("ref", 11), ("ref", 12)), {}, i), protocol=5))
        else:
            send(SMALL_MSG)
        inflight += 1
        while inflight:
            try:
                msg = recv(zmq.NOBLOCK) if inflight < window else recv()
            except zmq.Again:
                break
            if use_pickle:
                loads(msg)
            inflight -= 1
    while inflight:
        msg = recv()
        if use_pickle:
            loads(msg)
        inflight -= 1
    return now() - t0


def floor_zmq_pipelined(s: Settings) -> list[Figure]:
    """DEALER -> ROUTER, pipelined; raw echo and pickle at both ends. Also CPU per message."""
    import zmq

    out = []
    for use_pickle in (False, True):
        name = "zmq_pipelined_pickle" if use_pickle else "zmq_pipelined_raw"
        with private_dir() as d:
            ep = f"ipc://{d}/router"
            client_cpus, server_cpus = layout_cpus("cross")
            with server("router-pickle" if use_pickle else "router", ep) as proc, \
                    pinned((os.getpid(), client_cpus), (proc.pid, server_cpus)):
                ctx = zmq.Context()
                sock = ctx.socket(zmq.DEALER)
                for opt, val in ((zmq.LINGER, 0), (zmq.RCVTIMEO, 10_000),
                                 (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
                    sock.setsockopt(opt, val)
                sock.connect(ep)
                try:
                    _pipelined_burst(sock, max(100, s.pipelined // 10), use_pickle)  # warm-up
                    c0, p0 = cpu_seconds(), cpu_seconds(proc.pid)
                    rates = [s.pipelined / _pipelined_burst(sock, s.pipelined, use_pickle)
                             for _ in range(s.bursts)]
                    c1, p1 = cpu_seconds(), cpu_seconds(proc.pid)
                    sock.send(b"stop")
                    sock.recv()
                finally:
                    sock.close()
                    ctx.term()
        total = s.pipelined * s.bursts
        fig = rate_figure(
            rates, "msgs/s", name=name, group="floor",
            what=("pyzmq DEALER/ROUTER pipelined, client CPU 0, server CPU 1, " +
                  ("pickle.dumps/loads at both ends" if use_pickle else "raw 64 B echo")),
            expected=(70e3, 86e3) if use_pickle else (95e3, 115e3),
        )
        client_cpu, server_cpu = (c1 - c0) / total, (p1 - p0) / total
        fig.extra.update(client_cpu_us_per_msg=client_cpu * 1e6, server_cpu_us_per_msg=server_cpu * 1e6)
        out.append(fig)
        if use_pickle:
            # psutil's CPU times tick at 10 ms: bursts are long enough for a few percent.
            out.append(Figure(name="zmq_pickle_cpu_client", group="floor", kind="time",
                              p50=client_cpu, n=total,
                              what="client CPU per message in zmq_pipelined_pickle"))
            out.append(Figure(name="zmq_pickle_cpu_server", group="floor", kind="time",
                              p50=server_cpu, n=total,
                              what="server CPU per message in zmq_pipelined_pickle"))
    return out


# --------------------------------------------------------------------------- memory

@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _touched(nbytes: int):
    import torch

    t = torch.empty(nbytes // 4, dtype=torch.float32)
    t.fill_(1.0)
    return t


def floor_memcpy(s: Settings) -> list[Figure]:
    """One single-thread copy into a preallocated, already-touched destination."""
    import ctypes

    out = []
    with torch_threads(1):
        for nbytes in s.sizes:
            src, dst = _touched(nbytes), _touched(nbytes)
            reps = s.reps_for(nbytes)
            samples = time_calls(lambda: dst.copy_(src), reps, warmup=2)
            # libc's memcpy on the same buffers: on this machine torch's copy kernel is
            # ~1.6x slower than glibc's for 256 MB, so both are shown.
            d, p = dst.data_ptr(), src.data_ptr()
            libc = time_calls(lambda: ctypes.memmove(d, p, nbytes), reps, warmup=2)
            del src, dst
            sz = size_name(nbytes)
            expected = (20e-3, 26e-3) if nbytes == 256 * MB else None
            out.append(time_figure(
                samples, name=f"memcpy_{sz}", group="floor",
                what=f"torch dst.copy_(src), {sz}, 1 thread, warm dst",
                nbytes=nbytes, series="floor: memcpy (torch copy_)", expected=expected,
            ))
            out.append(time_figure(
                libc, name=f"libc_memcpy_{sz}", group="floor",
                what=f"libc memmove via ctypes, {sz}, same buffers",
                nbytes=nbytes, series="floor: memcpy (libc)", expected=expected,
            ))
    return out


def floor_share_memory(s: Settings) -> list[Figure]:
    """`share_memory_()` of a fresh (touched, private) tensor: copy into new shm pages."""
    out = []
    with torch_threads(1):
        for nbytes in s.sizes:
            samples = time_calls(lambda t: t.share_memory_(), s.reps_for(nbytes),
                                 warmup=1, setup=lambda: _touched(nbytes))
            out.append(time_figure(
                samples, name=f"share_memory_{size_name(nbytes)}", group="floor",
                what=f"tensor.share_memory_(), {size_name(nbytes)}, fresh tensor each time",
                nbytes=nbytes, series="floor: share_memory_ (cold)",
                expected=(170e-3, 190e-3) if nbytes == 256 * MB else None,
            ))
    return out


def floor_mp_queue(s: Settings) -> list[Figure]:
    """torch.multiprocessing Queue: put a fresh tensor here, time until another process has it."""
    import torch
    import torch.multiprocessing as tmp

    from ._children import clock, queue_consumer

    ctx = tmp.get_context("spawn")
    q_in, q_ack = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=queue_consumer, args=(q_in, q_ack), daemon=True)
    proc.start()
    out = []
    client_cpus, peer_cpus = layout_cpus("cross")
    try:
        if q_ack.get(timeout=60) != "ready":
            raise RuntimeError("queue consumer did not start")
        with torch_threads(1), pinned((os.getpid(), client_cpus), (proc.pid, peer_cpus)):
            for nbytes in s.sizes:
                samples = []
                for i in range(s.reps_for(nbytes) + 1):   # first one is warm-up
                    t = _touched(nbytes)
                    t0 = clock()
                    q_in.put(t)
                    t1 = q_ack.get(timeout=60)
                    del t
                    if i:
                        samples.append(t1 - t0)
                out.append(time_figure(
                    samples, name=f"mp_queue_{size_name(nbytes)}", group="floor",
                    what=f"torch.multiprocessing Queue hand-off, {size_name(nbytes)}, fresh tensor, CPU 0 -> 1",
                    nbytes=nbytes, series="floor: mp Queue (cold)",
                ))
        q_in.put(None)
        proc.join(timeout=10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return out


def import_torch_x4_once() -> float:
    t0 = now()
    procs = [subprocess.Popen([sys.executable, "-c", "import torch"]) for _ in range(4)]
    codes = [p.wait(timeout=120) for p in procs]
    elapsed = now() - t0
    if any(codes):
        raise RuntimeError(f"python -c 'import torch' exited with {codes}")
    return elapsed


def floor_import_torch(s: Settings) -> list[Figure]:
    """Wall time of 4 parallel `python -c "import torch"` until all have exited."""
    samples = [import_torch_x4_once() for _ in range(s.spawn_reps)]
    return [time_figure(samples, name="import_torch_x4", group="floor",
                        what='4 parallel `python -c "import torch"`, wall until all exit')]


def floor_tensor_pickle(s: Settings) -> list[Figure]:
    """Encoding a 5-element tensor: torch's pickle vs raw (dtype, shape, bytes)."""
    import torch

    t = torch.tensor([1.0, 2, 3, 4, 5])
    dumps, loads = pickle.dumps, pickle.loads

    def torch_pickle() -> None:
        loads(dumps(t))

    def raw() -> None:
        msg = dumps((str(t.dtype), tuple(t.shape), t.numpy().tobytes()), protocol=5)
        dt, shape, data = loads(msg)
        torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)

    return [
        time_figure(time_calls(torch_pickle, s.reps, s.warmup), name="torch_pickle_5",
                    group="floor", what="pickle.dumps+loads of a 5-element tensor (torch's reducer)",
                    expected=(110e-6, 150e-6)),
        time_figure(time_calls(raw, s.reps, s.warmup), name="raw_encode_5",
                    group="floor", what="raw (dtype, shape, bytes) encode+decode, 5 elements",
                    expected=(3e-6, 5e-6)),
    ]
