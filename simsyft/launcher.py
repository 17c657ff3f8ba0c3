"""Simulations from a config file: `launch`, `connect`, and the `Simulation` users hold.

Owns the user-facing `Simulation` (a context manager over a Cluster whose
workers are the same handles `sy.VirtualWorker` returns), `launch(config)` and
`connect(name)`. Imports config, simulation and workers; nothing below
imports it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import workers

from .wire import messages
from .config import SimulationConfig, load_config
from .errors import SimsyftError, WorkerTimeoutError
from .simulation import Cluster, find_run_dir
from .workers import VirtualWorker

__all__ = ["Simulation", "connect", "launch"]

# status() asks each running worker for its numbers, but a worker busy with a long op answers
# only when it is done: past this, the row says so instead of holding up the whole table.
_STATUS_TIMEOUT_S = 2.0


class Simulation:
    """A running simulation.

    >>> with simsyft.launch("configs/default.toml") as sim:
    ...     bob = sim["bob"]                         # same handle as sy.VirtualWorker(hook, id="bob")
    ...     (torch.ones(3).send(bob) * 2).get()
    tensor([2., 2., 2.])
    """

    def __init__(self, cluster: Cluster, config: SimulationConfig | None = None) -> None:
        self.cluster = cluster
        self.config = config

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def run_dir(self) -> str:
        return self.cluster.run_dir

    @property
    def workers(self) -> dict[str, VirtualWorker]:
        """Handles by name, in config order."""
        return {name: workers.handle_for(self.cluster, name, start=False) for name in list(self.cluster.workers)}

    def __getitem__(self, name: str) -> VirtualWorker:
        if name not in self.cluster.workers:
            known = ", ".join(self.cluster.workers) or "none"
            raise KeyError(f"simulation {self.name!r} has no worker {name!r} (workers: {known})")
        return workers.handle_for(self.cluster, name, start=False)

    def __contains__(self, name: str) -> bool:
        return name in self.cluster.workers

    def __iter__(self):
        return iter(list(self.cluster.workers))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per worker: state, pid, device, cpus, rss, objects, bytes, messages in/out, uptime."""
        import psutil

        report: dict[str, dict[str, Any]] = {}
        for name, process in list(self.cluster.workers.items()):
            row: dict[str, Any] = {"name": name, "pid": process.pid, "device": process.spec.get("device", "?"),
                                   "state": "running"}
            code = process.exit_code()
            if code is not None:
                row["state"] = f"exited ({code})"
            else:
                try:
                    proc = psutil.Process(process.pid)
                    row["cpus"] = proc.cpu_affinity()
                    row["rss"] = proc.memory_info().rss
                    if proc.status() == psutil.STATUS_STOPPED:  # SIGSTOP, or Ctrl-Z: it cannot answer
                        row["state"] = "stopped (send SIGCONT to resume)"
                        report[name] = row
                        continue
                    info = process.connection.request(lambda seq: messages.Info(seq), timeout_s=_STATUS_TIMEOUT_S).value
                    row.update({k: info[k] for k in ("device", "objects", "bytes", "messages_in",
                                                     "messages_out", "uptime", "threads")})
                except WorkerTimeoutError:
                    row["state"] = f"busy or hung (no answer in {_STATUS_TIMEOUT_S:g} s)"
                except (psutil.Error, SimsyftError) as exc:
                    row["state"] = f"unreachable ({type(exc).__name__})"
            report[name] = row
        return report

    def kill(self, name: str) -> None:
        """SIGKILL worker `name` (fault injection): its pointers then raise WorkerCrashedError."""
        self[name]
        self.cluster.kill(name)

    def restart(self, name: str, wait: bool = True) -> VirtualWorker:
        """Start worker `name` again, empty, with the same config; the handle keeps working."""
        handle = self[name]
        process = self.cluster.restart(name)
        workers.register(self.cluster, handle)
        handle._rebind(process)
        if wait:
            self.cluster.wait_ready([name])
        return handle

    def shutdown(self) -> None:
        """Stop the simulation (an attached one only detaches)."""
        workers.release_default(self.cluster)
        workers.forget(self.cluster)
        self.cluster.shutdown()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        role = "" if self.cluster.owner else " (attached)"
        return f"<Simulation {self.name!r}{role} workers: {', '.join(self.cluster.workers)}>"


def launch(config: str | os.PathLike | SimulationConfig, wait: bool = True) -> Simulation:
    """Start every worker of a config file; returns when all answer (or raises).

    The simulation becomes the default one, so `sy.VirtualWorker(hook, id="bob")`
    reaches its bob.
    """
    cfg = config if isinstance(config, SimulationConfig) else load_config(config)
    cluster = Cluster(cfg.name, request_timeout_s=cfg.request_timeout_s)
    try:
        for spec in cfg.workers:
            cluster.start_worker(spec.to_dict())  # all start in parallel: each imports torch on its own
        if wait:
            cluster.wait_ready()
    except BaseException:
        cluster.shutdown()
        raise
    workers.adopt_default(cluster)
    return Simulation(cluster, cfg)


def connect(name: str | None = None, timeout: float = 0.0) -> Simulation:
    """Attach this process to a running simulation (started by `simsyft up` or `launch`).

    Waits up to `timeout` seconds for it to appear. Shutting the returned
    Simulation down only detaches; the owner keeps it running.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            run_dir = find_run_dir(name)
            break
        except SimsyftError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    cluster = Cluster(run_dir=run_dir)
    workers.adopt_default(cluster)
    return Simulation(cluster)
