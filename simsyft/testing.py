"""Test support: an in-process worker behind the real protocol.

`in_process_worker("bob")` returns a VirtualWorker handle whose connection
runs a WorkerCore in this process: every message is still encoded and
decoded (tensors still cross as descriptors and segments), but no process
or socket exists, so pointer semantics can be unit-tested in milliseconds.
Imported by tests only; nothing in simsyft imports it.
"""

from __future__ import annotations

import os
import secrets
from collections import deque

from . import sharing
from .connection import Connection
from .worker import WorkerCore
from .workers import VirtualWorker

__all__ = ["InProcessConnection", "in_process_worker"]


class InProcessConnection(Connection):
    """Same interface as ZmqConnection; the 'worker' is a WorkerCore in this process."""

    def __init__(self, name: str) -> None:
        super().__init__(name, namespace=f"{os.getpid()}-{secrets.token_hex(4)}")
        self.core = WorkerCore(name, self.namespace)
        self._replies: deque[list] = deque()

    def _send(self, frames: list) -> None:
        reply = self.core.handle([bytes(f) for f in frames])
        if reply is not None:
            self._replies.append([bytes(f) for f in reply])

    def _recv(self) -> list:
        return self._replies.popleft()

    def _close(self) -> None:
        self.core.store.clear()
        sharing.sweep(self.namespace)


def in_process_worker(name: str = "bob") -> VirtualWorker:
    """A worker handle backed by an in-process WorkerCore (no process, same protocol)."""
    return VirtualWorker.over(InProcessConnection(name), name)
