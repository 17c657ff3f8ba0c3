"""simsyft rows, written against the public PySyft-style API only.

    hook = sy.TorchHook(torch); bob = sy.VirtualWorker(hook, id="bob")
    x_ptr = x.send(bob); z = x_ptr + y_ptr; z.get(); bob.pid; sy.shutdown()

(One exception, `simsyft_encode_decode_5`, times `simsyft.wire.codec` directly:
DESIGN.md sets a goal for it and no public call isolates it.)

Each `row_*` takes the mode's Settings and a `Lab` (the hook and the workers,
created on first use and shut down at the end) and returns Figures. Every
figure names the floor(s) it is compared with; `harness.resolve` computes the
ratios once all rows have run. A failing measurement becomes an "error: ..."
figure and the run goes on (`attempt`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable

from . import floors
from .floors import _touched, size_name, torch_threads
from .harness import (MB, Compare, Figure, Settings, Skip, failed, now, rate_figure, time_calls,
                      time_figure)

G = "simsyft"
# DESIGN.md: "the same work through torch.distributed.rpc and Ray: simsyft faster on every row".
# Functions, not lists: a Compare holds its figure's ratio, so no two figures may share one.
def peers_small() -> list[Compare]:
    return [Compare("torch_rpc_small", goal=1.0), Compare("ray_small", goal=1.0)]


def peers_rate() -> list[Compare]:
    return [Compare("torch_rpc_pipelined", goal=1.0), Compare("ray_pipelined", goal=1.0)]


class Lab:
    """The hook and the workers the rows share; `close()` stops them all."""

    def __init__(self) -> None:
        import torch

        import simsyft as sy

        self.sy = sy
        self.torch = torch
        self.hook = sy.TorchHook(torch)
        self.workers: dict[str, Any] = {}

    def worker(self, name: str):
        if name not in self.workers:
            w = self.sy.VirtualWorker(self.hook, id=name)
            self.torch.zeros(1).send(w).get()   # it answers: start-up is not charged to the first row
            self.workers[name] = w
        return self.workers[name]

    def cross(self, worker):
        """Pin this client to CPU 0 and `worker` to CPU 1 (Note [Pin both ends of a round trip])."""
        client_cpus, worker_cpus = floors.layout_cpus("cross")
        return floors.pinned((os.getpid(), client_cpus), (worker.pid, worker_cpus))

    def pool(self, n: int) -> list:
        return [self.worker(f"w{i}") for i in range(n)]

    def close(self) -> None:
        self.workers.clear()
        self.sy.shutdown()


def attempt(name: str, what: str, fn: Callable[[], list[Figure]], **kw: Any) -> list[Figure]:
    """Run one measurement; on any exception return an error figure in its place."""
    try:
        return fn()
    except Exception as exc:  # a benchmark row must report, not stop the run
        return [failed(name, G, what, exc, **kw)]


# --------------------------------------------------------------------------- small ops

def row_small_op(s: Settings, lab: Lab) -> list[Figure]:
    """`x_ptr + y_ptr` (5 elements), interleaved in blocks with a raw REQ/REP round trip.

    The two alternate in blocks of 250 calls so both see the same machine
    state, in each CPU layout (Note [Pin both ends of a round trip] in
    floors.py): "cross" (client CPU 0, worker CPU 1) carries DESIGN.md's goal;
    "samecpu" and "unpinned" are for information.
    """
    torch, bob = lab.torch, lab.worker("bob")
    x_ptr = torch.tensor([1.0, 2, 3, 4, 5]).send(bob)
    y_ptr = torch.ones(5).send(bob)

    def op() -> None:
        z = x_ptr + y_ptr
        del z

    block = 250
    out: list[Figure] = []
    for layout in floors.LAYOUTS:
        suffix = "" if layout == "cross" else f"_{layout}"
        floor_name = floors.REQREP_NAMES[layout] + "_paired"
        ours, raw = [], []
        client_cpus, worker_cpus = floors.layout_cpus(layout)
        with floors.reqrep_client(layout) as rr, floors.pinned((os.getpid(), client_cpus),
                                                               (bob.pid, worker_cpus)):
            time_calls(rr, 0, s.warmup)
            time_calls(op, 0, s.warmup)
            for _ in range(max(1, s.reps // block)):
                raw += time_calls(rr, block)
                ours += time_calls(op, block)
        where = floors.LAYOUT_WORDS[layout].replace("server", "worker")
        out.append(time_figure(
            raw, name=floor_name, group="floor",
            what=f"zmq REQ/REP, 64 B, {floors.LAYOUT_WORDS[layout]}, alternating with simsyft_small_op{suffix}",
            expected=(100e-6, 117e-6) if layout == "cross" else None))
        compare = [Compare(floor_name, goal=1.3, limit=2.0), Compare(floors.REQREP_NAMES[layout])]
        if layout == "cross":
            compare += peers_small()
        else:
            compare = [Compare(floor_name), Compare(floors.REQREP_NAMES[layout])]
        out.append(time_figure(ours, name=f"simsyft_small_op{suffix}", group=G,
                               what=f"x_ptr + y_ptr, 5 elements, synchronous, {where}",
                               compare=compare))
    del x_ptr, y_ptr
    return out


def row_traffic_cost(s: Settings, lab: Lab) -> list[Figure]:
    """The traffic ledger's cost: `x_ptr + y_ptr` with counting on, against the same op on the
    same link with counting off (`Link.counting`), alternating in blocks in one run.

    DESIGN.md's goal: accounting on costs at most 2 % of the small op (ratio <= 1.02).
    """
    torch, bob = lab.torch, lab.worker("bob")
    x_ptr = torch.tensor([1.0, 2, 3, 4, 5]).send(bob)
    y_ptr = torch.ones(5).send(bob)
    link = bob.connection

    def op() -> None:
        z = x_ptr + y_ptr
        del z

    block = 250
    counted, uncounted = [], []
    time_calls(op, 0, s.warmup)
    try:
        for _ in range(max(1, s.reps // block)):
            link.counting = False
            uncounted += time_calls(op, block)
            link.counting = True
            counted += time_calls(op, block)
    finally:
        link.__dict__.pop("counting", None)  # back to the class's: always on
    floor = "simsyft_small_op_uncounted"
    return [
        time_figure(uncounted, name=floor, group="floor",
                    what="x_ptr + y_ptr, 5 elements, traffic not counted, alternating with the counted op"),
        time_figure(counted, name="simsyft_small_op_counted", group=G,
                    what="x_ptr + y_ptr, 5 elements, traffic counted (the default)",
                    compare=[Compare(floor, goal=1.02, limit=1.05)]),
    ]


def row_send_get_small(s: Settings, lab: Lab) -> list[Figure]:
    """`send` of a 5-element tensor, and `get` of one."""
    torch, bob = lab.torch, lab.worker("bob")
    t = torch.tensor([1.0, 2, 3, 4, 5])

    def send() -> None:
        p = t.send(bob)
        del p

    with lab.cross(bob):
        out = attempt("simsyft_send_5", "t.send(bob), 5 elements", lambda: [time_figure(
            time_calls(send, s.reps, s.warmup), name="simsyft_send_5", group=G,
            what="t.send(bob), 5 elements (pointer dropped after), client CPU 0, worker CPU 1",
            compare=[Compare("zmq_reqrep"), Compare("zmq_reqrep_paired")])])
        out += attempt("simsyft_get_5", "ptr.get(), 5 elements", lambda: [time_figure(
            time_calls(lambda p: p.get(), s.reps, s.warmup, setup=lambda: t.send(bob)),
            name="simsyft_get_5", group=G, what="ptr.get(), 5 elements, client CPU 0, worker CPU 1",
            compare=[Compare("zmq_reqrep"), Compare("zmq_reqrep_paired")])])
    return out


def row_encode_decode(s: Settings, lab: Lab) -> list[Figure]:
    """simsyft.wire.codec encode + decode of a Store message carrying a 5-element tensor."""
    from simsyft.wire import codec, messages

    t = lab.torch.tensor([1.0, 2, 3, 4, 5])

    def roundtrip() -> None:
        codec.decode(codec.encode(messages.Store(1, 2, t)))

    return [time_figure(time_calls(roundtrip, s.reps, s.warmup), name="simsyft_encode_decode_5",
                        group=G, what="codec.encode+decode of Store(5-element tensor)",
                        compare=[Compare("raw_encode_5"), Compare("torch_pickle_5"),
                                 Compare.absolute(5e-6, 10e-6)])]


def row_chain(s: Settings, lab: Lab) -> list[Figure]:
    """N dependent ops (z = z + y) then one get, pipelined and synchronous; ops/s, CPU per op.

    Pipelined uses `with sy.pipeline():` when simsyft has it (else the row is
    skipped); CPU per op is measured on the pipelined chain, as DESIGN.md
    states the goal, or on the synchronous one when there is no pipeline.
    """
    import contextlib

    torch, bob = lab.torch, lab.worker("bob")
    pipeline = getattr(lab.sy, "pipeline", None)
    y_ptr = torch.ones(5).send(bob)
    n = s.pipelined

    def burst(count: int, pipelined: bool) -> float:
        z = torch.zeros(5).send(bob)
        t0 = now()
        with pipeline() if pipelined else contextlib.nullcontext():
            for _ in range(count):
                z = z + y_ptr
            got = z.get()
        elapsed = now() - t0
        if float(got[0]) != count:   # the chain really ran, in order
            raise RuntimeError(f"chain of {count} ops returned {got}")
        return elapsed

    def measure(pipelined: bool, count: int, bursts: int) -> tuple[list[float], float, float]:
        burst(max(100, count // 10), pipelined)
        c0, w0 = floors.cpu_seconds(), floors.cpu_seconds(bob.pid)
        rates = [count / burst(count, pipelined) for _ in range(bursts)]
        c1, w1 = floors.cpu_seconds(), floors.cpu_seconds(bob.pid)
        total = count * bursts
        return rates, (c1 - c0) / total, (w1 - w0) / total

    out: list[Figure] = []
    cpu_from = None
    with lab.cross(bob):
        if pipeline is None:
            out.append(failed("simsyft_chain", G, "pipelined chain",
                              Skip("simsyft has no sy.pipeline(); only the synchronous chain ran")))
        else:
            try:
                rates, client_cpu, worker_cpu = measure(True, n, s.bursts)
                fig = rate_figure(rates, "ops/s", name="simsyft_chain", group=G,
                                  what=f"{n} dependent ops z = z + y_ptr in sy.pipeline(), then one get; "
                                       "client CPU 0, worker CPU 1",
                                  compare=[Compare("zmq_pipelined_pickle", goal=0.6, limit=0.35),
                                           Compare("zmq_pipelined_raw"), *peers_rate()])
                fig.extra.update(client_cpu_us_per_op=client_cpu * 1e6, worker_cpu_us_per_op=worker_cpu * 1e6)
                out.append(fig)
                cpu_from = ("simsyft_chain", client_cpu, worker_cpu, n * s.bursts)
            except Exception as exc:  # the synchronous chain below still runs
                out.append(failed("simsyft_chain", G, "pipelined chain", exc))
        # The synchronous chain is bounded by round trips: fewer ops keep it short.
        n_sync = max(100, n // 3)
        rates, client_cpu, worker_cpu = measure(False, n_sync, s.bursts)
    fig = rate_figure(rates, "ops/s", name="simsyft_chain_sync", group=G,
                      what=f"{n_sync} dependent ops z = z + y_ptr, synchronous, then one get",
                      compare=[Compare("zmq_pipelined_pickle"), Compare("torch_rpc_pipelined")])
    fig.extra.update(client_cpu_us_per_op=client_cpu * 1e6, worker_cpu_us_per_op=worker_cpu * 1e6)
    out.append(fig)
    if cpu_from is None:
        cpu_from = ("simsyft_chain_sync", client_cpu, worker_cpu, n_sync * s.bursts)
    src, client_cpu, worker_cpu, total = cpu_from
    out += [
        Figure(name="simsyft_cpu_client_per_op", group=G, kind="time", p50=client_cpu, n=total,
               what=f"client CPU (user+sys, all threads) per op in {src}",
               compare=[Compare("zmq_pickle_cpu_client"), Compare.absolute(18e-6, 30e-6)]),
        Figure(name="simsyft_cpu_worker_per_op", group=G, kind="time", p50=worker_cpu, n=total,
               what=f"worker process CPU (all threads) per op in {src}",
               compare=[Compare("zmq_pickle_cpu_server"), Compare.absolute(23e-6, 40e-6)]),
    ]
    return out


# --------------------------------------------------------------------------- big tensors

def _big_goals(nbytes: int, goal: float, limit: float) -> dict:
    """DESIGN.md sets the big-transfer goals at 256 MB; smaller sizes are shown for information."""
    return {"goal": goal, "limit": limit} if nbytes >= 256 * MB else {}


def row_transfer_warm(s: Settings, lab: Lab) -> list[Figure]:
    """Repeated send / get of 1, 64, 256 MB float32 to one worker (warm: not the first use)."""
    bob = lab.worker("bob")
    out: list[Figure] = []
    with torch_threads(1), lab.cross(bob):
        for nbytes in s.sizes:
            sz = size_name(nbytes)
            reps = s.reps_for(nbytes)
            src = _touched(nbytes)
            floor = f"memcpy_{sz}"
            libc = f"libc_memcpy_{sz}"

            def send() -> None:
                p = src.send(bob)
                del p

            out += attempt(f"simsyft_send_warm_{sz}", f"send {sz} warm", lambda: [time_figure(
                time_calls(send, reps, warmup=2), name=f"simsyft_send_warm_{sz}", group=G,
                what=f"src.send(bob), {sz} float32, repeated (pointer dropped each time)",
                nbytes=nbytes, series="simsyft send (warm)",
                compare=[Compare(floor, **_big_goals(nbytes, 1.3, 2.0)), Compare(libc)])])

            out += attempt(f"simsyft_get_unchanged_{sz}", f"get {sz} unchanged", lambda: [time_figure(
                time_calls(lambda p: p.get(), reps, warmup=2, setup=lambda: src.send(bob)),
                name=f"simsyft_get_unchanged_{sz}", group=G,
                what=f"ptr.get() of a {sz} tensor sent and unchanged",
                nbytes=nbytes, series="simsyft get unchanged (warm)",
                compare=[Compare(floor, **_big_goals(nbytes, 0.1, 2.0)), Compare(libc)])])

            def get_computed() -> list[Figure]:
                x_ptr = src.send(bob)
                try:
                    samples = time_calls(lambda p: p.get(), reps, warmup=2, setup=lambda: x_ptr * 2)
                finally:
                    del x_ptr
                return [time_figure(
                    samples, name=f"simsyft_get_computed_{sz}", group=G,
                    what=f"ptr.get() of a {sz} tensor the worker computed (x_ptr * 2)",
                    nbytes=nbytes, series="simsyft get computed (warm)",
                    compare=[Compare(floor, **_big_goals(nbytes, 1.3, 3.0)), Compare(libc)])]

            out += attempt(f"simsyft_get_computed_{sz}", f"get {sz} computed", get_computed)
            del src
    return out


def row_transfer_cold(s: Settings, lab: Lab) -> list[Figure]:
    """First send (and first get) of each size, each sample in a fresh client and worker.

    `python -m bench._cold_probe NBYTES` starts a client process and one
    worker, creates a touched tensor, and times its very first send and the
    very first get of a tensor the worker computed. Only those calls are timed.
    """
    out: list[Figure] = []
    for nbytes in s.sizes:
        sz = size_name(nbytes)

        def probe() -> list[Figure]:
            sends, gets, paired = [], [], []
            for _ in range(s.cold_reps):
                # The paired floor first, in a fresh process too: after the warm rows have had the
                # kernel hand out and take back gigabytes, first-touch costs drift (cold 256 MB sends
                # read 126-322 ms across runs), so the goal is judged against this, not the floor
                # measured minutes earlier.
                paired.append(run_probe("bench._cold_probe", str(nbytes), "--floor")["share_memory_s"])
                r = run_probe("bench._cold_probe", str(nbytes))
                sends.append(r["send_s"])
                gets.append(r["get_computed_s"])
            big = nbytes >= 256 * MB
            return [
                time_figure(paired, name=f"share_memory_{sz}_paired", group="floor",
                            what=f"share_memory_() of {sz} in a fresh process, right before each cold probe",
                            nbytes=nbytes),
                time_figure(sends, name=f"simsyft_send_cold_{sz}", group=G,
                            what=f"first send of {sz} in a fresh client + worker",
                            nbytes=nbytes, series="simsyft send (cold)",
                            compare=[Compare(f"share_memory_{sz}_paired", goal=1.0 if big else None),
                                     Compare(f"share_memory_{sz}"),
                                     Compare(f"mp_queue_{sz}", limit=1.0 if big else None)]),
                time_figure(gets, name=f"simsyft_get_computed_cold_{sz}", group=G,
                            what=f"first get of a {sz} tensor the worker computed, fresh client + worker",
                            nbytes=nbytes, series="simsyft get computed (cold)",
                            compare=[Compare(f"memcpy_{sz}"), Compare(f"share_memory_{sz}_paired")]),
            ]

        out += attempt(f"simsyft_send_cold_{sz}", f"first send of {sz}", probe, nbytes=nbytes)
    return out


def run_probe(module: str, *args: str, timeout: float = 300) -> dict:
    """Run `python -m module args` and parse the JSON it prints last on stdout."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=floors.REPO, env=floors.child_env(), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{module} exited with {proc.returncode}: {' | '.join(tail)}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- many workers

def _run_burst(client, n: int, barrier: threading.Barrier, stop: threading.Event, seconds: float,
               join_timeout: float) -> float:
    """Run `client(i)` on n threads released together by `barrier`; stop them after `seconds`.

    Returns the wall time between the release and the stop (the clients count their calls).
    """
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = now()
    stop.wait(seconds)
    stop.set()
    elapsed = now() - t0
    for t in threads:
        t.join(timeout=join_timeout)
    return elapsed


def _zmq_threads_rate(n: int, seconds: float) -> float:
    """Aggregate REQ/REP calls/s: n client threads, each with its own server process."""
    import contextlib

    import zmq

    with contextlib.ExitStack() as stack:
        d = stack.enter_context(floors.private_dir())
        eps = [f"ipc://{d}/s{i}" for i in range(n)]
        for ep in eps:
            stack.enter_context(floors.server("reqrep", ep))
        ctx = zmq.Context()
        counts = [0] * n
        barrier = threading.Barrier(n + 1)
        stop = threading.Event()

        def client(i: int) -> None:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            sock.connect(eps[i])
            try:
                barrier.wait()
                while not stop.is_set():
                    sock.send(floors.SMALL_MSG)
                    sock.recv()
                    counts[i] += 1
                sock.send(b"stop")
                sock.recv()
            finally:
                sock.close()

        elapsed = _run_burst(client, n, barrier, stop, seconds, join_timeout=30)
        ctx.term()
        return sum(counts) / elapsed


def _simsyft_threads_rate(lab: Lab, n: int, seconds: float) -> float:
    """Aggregate `x_ptr + y_ptr` ops/s: one client thread per worker, n workers."""
    torch = lab.torch
    workers = lab.pool(n)
    ptrs = [(torch.tensor([1.0, 2, 3, 4, 5]).send(w), torch.ones(5).send(w)) for w in workers]
    counts = [0] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1)
    stop = threading.Event()

    def client(i: int) -> None:
        x_ptr, y_ptr = ptrs[i]
        try:
            barrier.wait()
            while not stop.is_set():
                z = x_ptr + y_ptr
                del z
                counts[i] += 1
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)
            stop.set()

    elapsed = _run_burst(client, n, barrier, stop, seconds, join_timeout=60)
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def row_scaling(s: Settings, lab: Lab) -> list[Figure]:
    """1, 2, 4, 8 workers doing the small-op loop at once; aggregate ops/s vs raw zmq threads."""
    out: list[Figure] = []
    for n in s.scaling:
        out += attempt(f"zmq_reqrep_threads_{n}w", f"raw REQ/REP, {n} threads", lambda: [rate_figure(
            [_zmq_threads_rate(n, s.scaling_s)], "calls/s", name=f"zmq_reqrep_threads_{n}w",
            group="floor", what=f"raw zmq REQ/REP, {n} client threads, {n} server processes")])
        cmp = [Compare(f"zmq_reqrep_threads_{n}w")]
        if n != s.scaling[0]:
            cmp.append(Compare(f"simsyft_scaling_{s.scaling[0]}w"))
        out += attempt(f"simsyft_scaling_{n}w", f"{n} workers", lambda: [rate_figure(
            [_simsyft_threads_rate(lab, n, s.scaling_s)], "ops/s", name=f"simsyft_scaling_{n}w",
            group=G, what=f"{n} workers, one client thread each, x_ptr + y_ptr loop", compare=cmp)])
    return out


FEDAVG_SHAPES = ((784, 1024), (1024,), (1024, 192), (192,), (192, 10), (10,))  # 1,005,770 parameters


def row_fedavg(s: Settings, lab: Lab) -> list[Figure]:
    """One FedAvg-like round: send a ~1M-parameter model to N workers, a step, get, average.

    Floor: the same round in one process, each transfer one memcpy into a
    ready destination and the same arithmetic (`* 0.99`, stack + mean).
    """
    torch = lab.torch
    params = [torch.randn(shape) for shape in FEDAVG_SHAPES]
    out: list[Figure] = []
    with torch_threads(1):
        for n in s.fedavg:
            def floor_round() -> None:
                outs = []
                for dsts in floor_bufs:
                    copies = [d.copy_(p) for d, p in zip(dsts[0], params)]   # "send"
                    stepped = [c * 0.99 for c in copies]                     # "step"
                    outs.append([d.copy_(c) for d, c in zip(dsts[1], stepped)])  # "get"
                [torch.stack(group).mean(0) for group in zip(*outs)]

            def round_() -> None:
                workers = lab.pool(n)
                results = []
                for w in workers:
                    ptrs = [p.send(w) for p in params]
                    stepped = [q * 0.99 for q in ptrs]
                    del ptrs
                    results.append([q.get() for q in stepped])
                [torch.stack(group).mean(0) for group in zip(*results)]

            reps = s.fedavg_rounds
            floor_bufs = [([torch.zeros(shape) for shape in FEDAVG_SHAPES],
                           [torch.zeros(shape) for shape in FEDAVG_SHAPES]) for _ in range(n)]
            out.append(time_figure(time_calls(floor_round, max(3, reps), warmup=1),
                                   name=f"fedavg_local_{n}w", group="floor",
                                   what=f"FedAvg round in one process, {n} x 2 memcpys of 4 MB + arithmetic"))
            del floor_bufs
            out += attempt(f"simsyft_fedavg_{n}w", f"FedAvg round, {n} workers", lambda: [time_figure(
                time_calls(round_, reps, warmup=1), name=f"simsyft_fedavg_{n}w", group=G,
                what=f"FedAvg round: send 1.0M params to {n} workers, x * 0.99, get, average",
                compare=[Compare(f"fedavg_local_{n}w")])])
    return out


# --------------------------------------------------------------------------- start-up

def row_startup(s: Settings, lab: Lab) -> list[Figure]:
    """Start 4 workers and wait until each answers (send + get), two ways.

    Each rep also times the floor (4 parallel `python -c "import torch"`)
    right before, so a busy moment costs both sides alike.
    """
    sy, torch = lab.sy, lab.torch
    counter = iter(range(10_000))

    def with_virtualworker() -> None:
        k = next(counter)
        ws = [sy.VirtualWorker(lab.hook, id=f"start{k}_{i}") for i in range(4)]
        try:
            for w in ws:
                torch.zeros(1).send(w).get()
        finally:
            for w in ws:
                w.shutdown()

    def with_launch(path: str) -> None:
        sim = sy.launch(path)
        try:
            for i in range(4):
                torch.zeros(1).send(sy.VirtualWorker(lab.hook, id=f"s{i}")).get()
        finally:
            sim.shutdown()

    floor, vw, launched = [], [], []
    errors: dict[str, Exception] = {}
    with tempfile.TemporaryDirectory(prefix="simsyft-bench-") as d:
        path = os.path.join(d, "four.toml")
        with open(path, "w") as f:
            f.write('[simulation]\nname = "bench_start4"\n\n')
            for i in range(4):
                f.write(f"[workers.s{i}]\nthreads = 1\n\n")
        for _ in range(s.spawn_reps):
            floor.append(floors.import_torch_x4_once())
            for name, fn, samples in (("vw", with_virtualworker, vw),
                                      ("launch", lambda: with_launch(path), launched)):
                if name in errors:
                    continue
                try:
                    t0 = now()
                    fn()
                    samples.append(now() - t0)
                except Exception as exc:  # reported as this figure's error below
                    errors[name] = exc
    out = [time_figure(floor, name="import_torch_x4_paired", group="floor",
                       what='4 parallel `python -c "import torch"`, alternating with the start-up rows')]
    for key, name, what, samples in (
        ("vw", "simsyft_start4_virtualworker", "4 x sy.VirtualWorker(hook, id=...) then send+get on each", vw),
        ("launch", "simsyft_start4_launch", "sy.launch(4-worker TOML) then send+get on each", launched),
    ):
        if key in errors:
            out.append(failed(name, G, what, errors[key]))
        else:
            out.append(time_figure(samples, name=name, group=G, what=what,
                                   compare=[Compare("import_torch_x4_paired", goal=1.5, limit=2.0),
                                            Compare("import_torch_x4")]))
    return out
