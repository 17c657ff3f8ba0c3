"""The in-process backend: every worker is a WorkerCore in this very process.

Every message is still encoded and decoded (tensors still cross as descriptors
and segments), but no process or socket exists, so pointer semantics can be
tested in microseconds per op (simsyft.testing's `in_process_worker` and
`WorkerPool.in_process()` use it). Workers reach each other directly
(`InProcessPeers`), so chains and `move` work as between processes. A killed
worker reports WorkerCrashedError, as a crashed process would. Imports
config, links, wire and worker; never handles or pointers.
"""

from __future__ import annotations

import os
import secrets

from ..config import REQUEST_TIMEOUT_S, WorkerConfig
from ..errors import WorkerCrashedError
from ..links.link import Link
from ..wire import segments
from ..worker.core import WorkerCore
from ..worker.peers import Peers
from .base import Backend

__all__ = ["InProcessBackend", "InProcessLink"]


class InProcessLink(Link):
    """A link whose other end is a WorkerCore in this process: each message handled at once."""

    def __init__(self, core: WorkerCore, source: str = "me") -> None:
        super().__init__(core.name, core.namespace, source=source)
        self.core = core
        self.killed = False
        self._replies: list[list] = []

    def _check_open(self) -> None:
        if self.killed:
            raise WorkerCrashedError(f"worker {self.name!r} (in process) was killed")
        super()._check_open()

    def _send(self, frames: list) -> None:
        reply = self.core.handle([bytes(f) for f in frames])
        if reply is not None:
            self._replies.append([bytes(f) for f in reply])

    def _recv(self) -> list:
        return self._replies.pop(0)


class InProcessPeers(Peers):
    """A worker's links to the other in-process workers of its backend."""

    def __init__(self, backend: "InProcessBackend") -> None:
        super().__init__(backend.request_timeout_s)
        self.backend = backend

    def _connect(self, name: str) -> Link:
        core = self.backend.cores.get(name)
        if core is None:
            return super()._connect(name)
        return InProcessLink(core, source=self.core.name)


class InProcessBackend(Backend):
    """Workers as WorkerCores in this process, under one segment namespace.

    >>> backend = InProcessBackend("tests")
    >>> backend.start(WorkerConfig("bob"))
    >>> backend.link("bob")               # an InProcessLink: the same protocol, no process
    """

    kind = "inprocess"
    link_class: type[InProcessLink] = InProcessLink  # tests substitute broken links (mutants)

    def __init__(self, name: str = "inprocess", request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        super().__init__(name, request_timeout_s)
        self.namespace = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.cores: dict[str, WorkerCore] = {}
        self._configs: dict[str, WorkerConfig] = {}
        self._links: dict[str, InProcessLink] = {}
        self._exits: dict[str, int] = {}

    def start(self, config: WorkerConfig) -> None:
        core = WorkerCore(config.name, self.namespace, config.device, InProcessPeers(self))
        core.load_data(config.data)
        self.cores[config.name] = core
        self._configs[config.name] = config
        self._links[config.name] = self.link_class(core)
        self._exits.pop(config.name, None)

    def stop(self, name: str, timeout: float = 5.0) -> None:
        core = self.cores.pop(name, None)
        link = self._links.pop(name, None)
        self._configs.pop(name, None)
        self._exits.pop(name, None)
        if core is not None:
            core.store.clear()
            core.peers.close()
        if link is not None:
            link.close("shut down")
        if not self.cores:
            segments.sweep(self.namespace)  # the last one out: nothing of ours can be in use

    def kill(self, name: str) -> None:
        """As a crash: the worker's objects are gone and its link raises WorkerCrashedError."""
        self._links[name].killed = True
        self.cores[name].store.clear()
        self._exits[name] = -9

    def names(self) -> list[str]:
        return list(self.cores)

    def config(self, name: str) -> WorkerConfig:
        return self._configs[name]

    def exit_status(self, name: str) -> int | None:
        return self._exits.get(name)

    def link(self, name: str) -> InProcessLink:
        return self._links[name]

    def facts(self, name: str) -> dict:
        return {"pid": os.getpid(), "device": self._configs[name].device}

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for name in list(self.cores):
            self.stop(name)
        segments.sweep(self.namespace)
