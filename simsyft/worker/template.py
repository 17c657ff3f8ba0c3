"""The warm template local workers are forked from (``[simulation] start = "fork"``).

Owns the template process, ``python -m simsyft.worker.template``: it imports torch, numpy
and the worker's code once, then forks workers on request. The owner (backends/template.py)
writes one JSON line per batch of workers on its stdin, a list of ``{"launch": <WorkerLaunch
JSON>, "log": PATH}``, and reads back one line, their pids; or ``{"log": PATH}``: stderr goes
there from now on (a prewarmed template learning its simulation's run directory). End of
stdin (the owner closed it, or died) ends the template; its workers are not its children
and live on. Imports torch, numpy and
worker/main.py; never the user layer.

Note [Forked workers]
    A fork copies only the calling thread, so a thread pool, a ZeroMQ context (its IO thread)
    or a CUDA context made before it would be broken in the child. The template therefore
    runs no torch op, opens no ZeroMQ socket and never touches CUDA; each worker applies its
    own settings after the fork (worker/main.py's serve: threads, affinity, seed, device,
    memory limit) and opens its own sockets. `gc.freeze()` moves the template's objects out
    of the collector's reach, so a collection in a worker does not write to (and so copy)
    the pages they lie in: those stay shared between every worker, which is what keeps a
    worker's unique memory small.

    Every worker is forked twice (template -> short-lived middle -> worker) so that it is
    adopted by the owner, which made itself a child subreaper (PR_SET_CHILD_SUBREAPER): the
    owner reaps it and reads its exit status like a child it spawned, the worker's "my
    parent died" check (serve: getppid() != parent_pid) keeps working, and a template that
    dies takes no worker with it. The middle is the expensive part (measured on 2 cores with
    a 225 MB template: a fork 2.9 ms, fork + middle 13.6 ms), so one middle forks a whole batch:
    a simulation's workers are asked for in one request. The worker carries the simulation's token because the
    template was started with it in its environment (Note [Nothing outside the run root is
    trusted], rundir.py): /proc/<pid>/environ of a fork is its parent's.

    What is taken from Python's multiprocessing.forkserver (which torch.multiprocessing
    reuses): a server that preloads the heavy modules once and forks one child per request,
    the child dropping the server's descriptors and reseeding `random`. What differs: requests
    are JSON lines on a pipe instead of pickles and passed descriptors on a unix socket (a
    worker needs only its `WorkerLaunch`, and its log path), and the double fork: a
    forkserver's children stay the server's, their exit codes sent back over a socket, so a
    dying server would orphan them and lose their statuses.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback

__all__ = ["main"]

_READY = b"ready\n"
_PER_MIDDLE = 16  # a batch is split between middles (one per CPU at most) only past this many each


def _adopted(middle: int, gone: int) -> None:
    """Wait until the middle process is gone and this one belongs to the owner.

    `gone` reads end-of-file once the middle exited (it held the only other write end): a
    batch's first worker waits for all of the batch's forks without spending CPU on it, which
    the forks need. The kernel closes a process's files just before it hands its children on,
    so getppid() may still name the middle for a moment after.
    """
    try:
        while os.read(gone, 64):
            pass
    finally:
        os.close(gone)
    deadline = time.monotonic() + 10
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.0002)


def _run_worker(request: dict, middle: int, gone: int) -> int:
    """In the forked worker: take its own stdio, seeds and sockets, then serve."""
    import random

    import numpy

    from .main import seed_torch, serve
    from .spec import WorkerLaunch

    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # drops the template's request pipe, so only the template holds it
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    gc.enable()
    _adopted(middle, gone)
    launch = WorkerLaunch.from_json(request["launch"])
    # Every fork starts from the template's random state: without a seed of its own, draw a
    # fresh one (as a spawned worker would), or every worker's torch.rand would agree.
    if launch.config.seed is None:
        seed_torch(None)
    random.seed()
    numpy.random.seed()
    return serve(launch)


def _fork(requests: list[dict]) -> list[int]:
    """Fork one worker per request; their pids (adopted by the owner), 0 for any not forked.

    Through middle processes (Note [Forked workers]): one per batch, or one per CPU for a big
    batch, so that the forks (each copying the template's page tables) run side by side.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = 1
    parts = max(1, min(cpus, len(requests) // _PER_MIDDLE))
    size = -(-len(requests) // parts)
    middles = [_start_middle(requests[i:i + size]) for i in range(0, len(requests), size)]
    pids: list[int] = []
    for (middle, read_end), part in zip(middles, (requests[i:i + size] for i in range(0, len(requests), size))):
        chunks = []
        while chunk := os.read(read_end, 4096):  # the middle writes the pids, then exits (closing the pipe)
            chunks.append(chunk)
        os.close(read_end)
        # Once the middle is gone its workers are the owner's children: only then are their pids
        # given out, so the owner can wait for them (and a caller sees its parent) from the first moment.
        os.waitpid(middle, 0)
        got = [int(p) for p in b"".join(chunks).split()]
        pids += got + [0] * (len(part) - len(got))  # 0: not forked (the middle's traceback is in our log)
    return pids


def _start_middle(requests: list[dict]) -> tuple[int, int]:
    """Fork a middle process that forks these workers and writes their pids; (its pid, the pipe to read)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle:
        os.close(write_end)
        return middle, read_end
    code = 0
    try:
        os.close(read_end)
        me = os.getpid()
        gone_read, gone_write = os.pipe()  # each worker reads it to its end: this process exited
        pids = []
        for request in requests:
            try:
                worker = os.fork()
            except OSError:  # out of processes or memory: the owner kills those already forked
                traceback.print_exc()
                code = 1
                break
            if worker == 0:
                os.close(write_end)
                os.close(gone_write)
                try:
                    code = _run_worker(request, me, gone_read)
                except BaseException:  # the worker's last words go to its log; then it exits
                    traceback.print_exc()
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            pids.append(worker)
        os.write(write_end, " ".join(map(str, pids)).encode())
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _relog(path: str) -> None:
    """Send our stderr to `path` from now on, with what we wrote before (a prewarmed template's)."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        written = b""
        try:
            written = os.pread(2, 1 << 16, 0)  # a prewarmed template's stderr is an unlinked temp file
        except OSError:
            pass  # a pipe or a terminal: nothing to carry over
        if written:
            os.write(log, written)
        os.dup2(log, 2)
    finally:
        os.close(log)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle (as for workers)
    import random  # noqa: F401  (what every worker needs, imported once for all of them)

    import numpy.random  # noqa: F401
    import psutil  # noqa: F401  (serve: cpus, memory_limit)
    import torch  # noqa: F401
    import zmq  # noqa: F401  (the module only: serve makes the context, and its IO thread, after the fork)

    from . import main as _worker_main  # noqa: F401  (the worker's code: core, execute, peers, zmq, wire)

    gc.collect()
    gc.freeze()
    gc.disable()  # nothing here makes garbage worth a collection; workers re-enable it
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    replies.write(_READY)
    replies.flush()
    for line in requests:  # ends when the owner closes our stdin (or dies)
        # A request: {"log": PATH} alone (stderr goes there from now on: a prewarmed template
        # learns its simulation's run directory), or a list of {"launch", "log"} (fork these).
        count = 1
        try:
            request = json.loads(line)
            if isinstance(request, dict):
                _relog(request["log"])
                pids = []
            else:
                count = len(request)
                pids = _fork(request)
        except Exception:  # a bad request or a failed fork: say so, stay up for the next one
            traceback.print_exc()
            pids = [0] * count
        replies.write((" ".join(map(str, pids)) + "\n").encode())
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
