"""ZeroMQ links: a DEALER socket to a worker's ROUTER over ipc://, and the process's context.

Owns `ZmqLink` (crash and timeout detection while waiting: a dead worker is a
WorkerCrashedError within ~100 ms, a silent live one a WorkerTimeoutError past
the request timeout) and the one ZeroMQ context of a process. Imports pyzmq,
links/link.py and errors.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..config import REQUEST_TIMEOUT_S
from ..errors import WorkerCrashedError, WorkerTimeoutError
from ..network import lookup as network_of
from .link import Link

__all__ = ["ZmqLink", "context"]

# A blocking receive with a timeout beats poll()+recv() by ~25 us per round trip
# (DESIGN.md); 100 ms bounds how late a crash, or the end of request_timeout_s, is noticed.
_RECV_TIMEOUT_MS = 100
# Before a request, whether the worker process still exists is asked at most this often
# (a waitpid, or /proc for an attached client: 2-10 us, more than the rest of a small op's
# client work). In between, a dead worker is still noticed by the send or receive timeout.
_LIVENESS_INTERVAL_S = 0.05


class ZmqLink(Link):
    """A DEALER socket connected to the worker's ROUTER over ipc://."""

    def __init__(self, name: str, endpoint: str, namespace: str, exit_status: Callable[[], Any],
                 describe_exit: Callable[[], str], timeout_s: float = REQUEST_TIMEOUT_S,
                 pid: int | None = None, source: str = "me") -> None:
        import zmq

        super().__init__(name, namespace, timeout_s, source)
        self._zmq = zmq
        self._exit_status = exit_status  # returns the exit code once the process is gone, else None
        self._describe_exit = describe_exit
        self.pid = pid
        self.net = network_of(namespace)  # the simulation's network model in this process, if any
        self._started = 0.0  # when the current request began (set in _check_open)
        self._sock = context().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, _RECV_TIMEOUT_MS)
        self._sock.setsockopt(zmq.SNDTIMEO, _RECV_TIMEOUT_MS)
        # A worker just started may not have bound yet: retry after 5 ms, not ZeroMQ's 100 ms
        # (measured: 64 forked workers answered 0.2 s later), backing off to 100 ms for one gone.
        self._sock.setsockopt(zmq.RECONNECT_IVL, 5)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        self._sock.connect(endpoint)
        self._next_liveness_check = 0.0

    def _dead(self) -> WorkerCrashedError | None:
        if self._exit_status() is None:
            return None
        message = self._describe_exit()
        self.closed_reason = "crashed"
        self._sock.close(0)
        return WorkerCrashedError(message)

    def _check_open(self) -> None:
        if self.closed_reason == "crashed":
            raise WorkerCrashedError(self._describe_exit())
        super()._check_open()
        now = time.monotonic()
        self._started = now  # the request's clock for request_timeout_s (read only once it waits)
        if now >= self._next_liveness_check:
            self._next_liveness_check = now + _LIVENESS_INTERVAL_S
            crashed = self._dead()
            if crashed is not None:
                raise crashed

    def _send(self, frames: list) -> None:
        while True:
            try:
                if len(frames) == 1:  # a compact or small message: skip send_multipart's checks
                    self._sock.send(frames[0])
                else:
                    # Zero-copy only pays for large frames; below that pyzmq's tracking costs more than a copy.
                    self._sock.send_multipart(frames, copy=False)
                return
            except self._zmq.Again:
                self._still_there()

    def _recv(self) -> list:
        while True:
            try:
                return self._sock.recv_multipart(copy=True)
            except self._zmq.Again:
                self._still_there()

    def _still_there(self) -> None:
        """After 100 ms without progress: a dead worker is a crash (checked first, so a crash is
        never reported as a timeout), and one that is alive but silent past the timeout, a timeout."""
        crashed = self._dead()
        if crashed is not None:
            raise crashed from None
        if self._wait_s and time.monotonic() - self._started >= self._wait_s:
            # request() and post() replace this text with one that names what was asked.
            raise WorkerTimeoutError(f"worker {self.name!r} did not answer within {self._wait_s:g} s")

    def _close(self) -> None:
        self._sock.close(0)


_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def context():
    global _CONTEXT
    import zmq

    with _CONTEXT_LOCK:
        if _CONTEXT is None or _CONTEXT.closed:
            _CONTEXT = zmq.Context()
    return _CONTEXT
