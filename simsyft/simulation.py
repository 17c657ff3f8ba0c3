"""Worker processes of one simulation: spawn, pin, supervise, tear down.

Owns the private run directory (mode 0700: the ipc endpoints and worker logs
live there), the namespace that names every shared-memory segment of the
simulation, the worker processes, and the sweep of leftovers from
simulations whose owner died. Knows pids and endpoints, never handles or
pointers (workers.py builds those on top). Imports connection, sharing, errors.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from . import protocol, sharing
from .connection import ZmqConnection, signal_name
from .errors import WorkerTimeoutError

__all__ = ["Simulation", "WorkerProcess", "sweep_stale"]

_RUN_DIR_RE = re.compile(r"simsyft-(\d+)-([0-9a-f]+)")
_SHM_RE = re.compile(r"simsyft_(\d+)-([0-9a-f]+)_")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tmp_root() -> str:
    return tempfile.gettempdir()


@dataclass
class WorkerProcess:
    """One running worker: its process, endpoint, log and client connection."""

    name: str
    spec: dict
    popen: subprocess.Popen
    log_path: str
    connection: ZmqConnection
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 10) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def describe_exit(self) -> str:
        code = self.popen.poll()
        tail = self.log_tail()
        return (
            f"worker {self.name!r} (pid {self.pid}) exited with {code}{signal_name(code)}; "
            f"last stderr: {tail if tail else '(empty)'}"
        )


class Simulation:
    """A set of worker processes sharing one run directory and shm namespace.

    >>> sim = Simulation("demo")
    >>> bob = sim.start_worker({"name": "bob"})
    >>> sim.shutdown()
    """

    def __init__(self, name: str = "default") -> None:
        sweep_stale()
        self.name = name
        self.namespace = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.run_dir = os.path.join(_tmp_root(), f"simsyft-{self.namespace}")
        os.mkdir(self.run_dir, 0o700)
        os.chmod(self.run_dir, 0o700)  # umask can only narrow mkdir's mode; be explicit anyway
        with open(os.path.join(self.run_dir, "simulation.json"), "w") as f:
            json.dump({"name": name, "owner_pid": os.getpid(), "namespace": self.namespace}, f)
        self.workers: dict[str, WorkerProcess] = {}
        self.closed = False

    def start_worker(self, spec: dict[str, Any]) -> WorkerProcess:
        """Spawn a worker process; returns at once (the worker answers once torch is imported)."""
        name = spec["name"]
        if self.closed:
            raise RuntimeError(f"simulation {self.name!r} is shut down")
        if name in self.workers and self.workers[name].exit_code() is None:
            raise ValueError(f"worker {name!r} is already running (pid {self.workers[name].pid})")
        endpoint = f"ipc://{self.run_dir}/{name}.sock"
        full = {
            "device": "cpu", "threads": 1, "cpus": None, "seed": None, **spec,
            "endpoint": endpoint, "namespace": self.namespace, "run_dir": self.run_dir,
            "parent_pid": os.getpid(),
        }
        log_path = os.path.join(self.run_dir, f"{name}.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "simsyft.worker", json.dumps(full)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                close_fds=True,
            )
        holder: dict[str, WorkerProcess] = {}
        connection = ZmqConnection(
            name, endpoint, self.namespace,
            exit_status=popen.poll,
            describe_exit=lambda: holder["w"].describe_exit(),
        )
        worker = WorkerProcess(name, full, popen, log_path, connection)
        holder["w"] = worker
        self.workers[name] = worker
        self._write_pids()
        return worker

    def wait_ready(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Block until each worker answers (or raise its crash / a timeout)."""
        deadline = time.monotonic() + timeout
        for name in names or list(self.workers):
            worker = self.workers[name]
            while True:
                try:
                    worker.connection.request(lambda seq: protocol.Info(seq))
                    break
                except WorkerTimeoutError:
                    if time.monotonic() > deadline:
                        raise

    def stop_worker(self, name: str, timeout: float = 5.0) -> None:
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        if worker.exit_code() is None and worker.connection.closed_reason is None:
            try:
                worker.connection._lock.acquire(timeout=timeout)
                try:
                    frames = protocol.encode(protocol.Shutdown(worker.connection.next_seq()))
                    worker.connection._transmit(frames)
                finally:
                    worker.connection._lock.release()
            except Exception:  # noqa: BLE001 - best effort; the process is killed below if it stays
                pass
        worker.connection.close("shut down")
        try:
            worker.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.popen.kill()
            worker.popen.wait()
        self._write_pids()

    def kill(self, name: str) -> None:
        """SIGKILL a worker (fault injection); its connection then reports the crash."""
        self.workers[name].popen.kill()
        self.workers[name].popen.wait()

    def shutdown(self) -> None:
        """Stop every worker, remove every segment and the run directory."""
        if self.closed:
            return
        self.closed = True
        for name in list(self.workers):
            self.stop_worker(name)
        sharing.sweep(self.namespace)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        return {name: w.pid for name, w in self.workers.items()}

    def _write_pids(self) -> None:
        try:
            with open(os.path.join(self.run_dir, "pids.json"), "w") as f:
                json.dump(self.pids(), f)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"<Simulation {self.name!r} workers={sorted(self.workers)} run_dir={self.run_dir}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove run dirs, worker processes and segments of simulations whose owner is dead."""
    removed: list[str] = []
    root = _tmp_root()
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    for entry in entries:
        m = _RUN_DIR_RE.fullmatch(entry)
        if not m or _alive(int(m.group(1))):
            continue
        path = os.path.join(root, entry)
        _kill_recorded_workers(path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for name in sharing.list_segments():
        m = _SHM_RE.match(name)
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(sharing.SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _kill_recorded_workers(run_dir: str) -> None:
    try:
        with open(os.path.join(run_dir, "pids.json")) as f:
            pids = json.load(f)
    except (OSError, ValueError):
        return
    for pid in pids.values():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"simsyft.worker" in cmdline:  # never kill a recycled pid that is not our worker
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
