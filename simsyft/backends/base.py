"""The Backend interface: where a simulation's workers run, and the one seam for it.

A backend starts, stops, kills and restarts workers, tells each one's exit status,
gives the link to it, and names the segments its tensor bytes cross through
(`namespace`). `Simulation` and the handles know only this interface, never
pids, Popen or sockets. Today's implementations: backends/local.py (worker
processes on this machine) and backends/inprocess.py (workers in this process).
A new backend is one module subclassing `Backend` plus one line in
backends/__init__.py's registry (docs/architecture.md, "A new backend").
Imports config, links, errors and backends/template.py (to stop an unused prewarmed template).
"""

from __future__ import annotations

import abc
import time
from typing import Any, ClassVar

from ..config import REQUEST_TIMEOUT_S, WorkerConfig
from ..errors import WorkerTimeoutError
from ..links.link import Link
from ..wire import messages
from .template import discard_prewarmed

__all__ = ["Backend"]


class Backend(abc.ABC):
    """The workers of one simulation, wherever they run.

    A backend either owns its workers (it started them and stops them) or is attached to a
    simulation another process owns (`owner` False: shutting down only detaches).
    """

    kind: ClassVar[str] = ""  # its name in the registry and in `[simulation] backend`

    def __init__(self, name: str, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.name = name
        self.request_timeout_s = request_timeout_s  # every link to a worker, ours and the workers' own
        self.owner = True
        self.closed = False
        self.namespace = ""  # names the simulation's shared-memory segments: set by the subclass
        discard_prewarmed()  # the first backend made takes it (local, forking) or nobody will

    # -- what every backend does ------------------------------------------------------------
    @abc.abstractmethod
    def start(self, config: WorkerConfig) -> None:
        """Start a worker; returns at once (`wait_ready` waits until it answers)."""

    def start_many(self, configs: list[WorkerConfig]) -> None:
        """Start these workers (a backend that can start several at once for less says so here)."""
        for config in configs:
            self.start(config)

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 5.0) -> None:
        """Ask worker `name` to exit (forcing it after `timeout`), and forget it."""

    @abc.abstractmethod
    def kill(self, name: str) -> None:
        """Kill worker `name` at once, as a crash would (fault injection): its link then reports it."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The workers this backend knows, in start order (running or not)."""

    @abc.abstractmethod
    def config(self, name: str) -> WorkerConfig:
        """The config worker `name` was started with."""

    @abc.abstractmethod
    def exit_status(self, name: str) -> int | None:
        """None while worker `name` runs; its exit status once it is gone."""

    @abc.abstractmethod
    def link(self, name: str) -> Link:
        """The link from this process to worker `name`."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Owned: stop every worker and remove what the simulation made. Attached: detach."""

    # -- shared behaviour, overridable --------------------------------------------------------
    def restart(self, name: str) -> None:
        """Start worker `name` again, empty, with the same config."""
        config = self.config(name)
        self.stop(name)
        self.start(config)

    def alive(self, name: str) -> bool:
        return self.exit_status(name) is None

    def pid(self, name: str) -> int | None:
        """The worker's process id, where it is a process of this machine."""
        return None

    def facts(self, name: str) -> dict[str, Any]:
        """What a status table shows beyond the worker's own account: pid, cpus, rss, ..."""
        return {"pid": self.pid(name)}

    def wait_ready(self, names: list[str] | None = None, timeout: float = 120.0) -> None:
        """Block until each worker answers; a worker that dies on the way raises WorkerCrashedError."""
        deadline = time.monotonic() + timeout
        for name in names or self.names():
            # Start-up (importing torch) has its own timeout, not request_timeout_s.
            try:
                self.link(name).request(lambda seq: messages.Info(seq),
                                        timeout_s=max(deadline - time.monotonic(), 0.001), quiet=True)
            except WorkerTimeoutError:
                raise WorkerTimeoutError(f"worker {name!r} took more than {timeout:.0f}s to start") from None
        self.ready()

    def ready(self) -> None:
        """Every worker answered (a local backend records it for `simsyft up --detach`)."""

    def __repr__(self) -> str:
        role = "owned" if self.owner else "attached"
        return f"<{type(self).__name__} {self.name!r} {role} workers={self.names()}>"
