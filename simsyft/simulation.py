"""Worker processes of one simulation: spawn, pin, supervise, tear down.

Owns `Cluster`: the private run directory (inside the per-user run root of
rundir.py, Note [Nothing outside the run root is trusted]: ipc endpoints,
worker logs, `simulation.json`, `pids.json`), the namespace that names every
shared-memory segment of the simulation, the token its workers carry, the
worker processes, and the sweep of leftovers from simulations whose owner died. A cluster is either *owned*
(this process started it and stops it) or *attached* (another process owns
it: `simsyft.connect`, `simsyft run`). Knows pids and endpoints, never
handles or pointers (workers.py builds those on top).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import rundir

from .wire import codec, messages, segments, shm
from .config import REQUEST_TIMEOUT_S
from .connection import ZmqConnection, pid_alive, signal_name
from .errors import SimsyftError, WorkerTimeoutError
from .rundir import TOKEN_ENV, is_worker_of, owner_alive, read_meta, read_pids

__all__ = ["Cluster", "WorkerProcess", "find_run_dir", "owned_by_cli", "running_simulations", "sweep_stale"]

_SHM_RE = re.compile(r"simsyft_((\d+)-[0-9a-f]+)_")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DIR_ENV = "SIMSYFT_RUN_DIR"


@dataclass
class WorkerProcess:
    """One worker: its process (ours, or another owner's), endpoint, log and client connection."""

    name: str
    spec: dict
    pid: int
    log_path: str
    connection: ZmqConnection | None = None
    popen: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)

    def exit_code(self) -> int | None:
        """None while running; the exit status once gone (-1 if not our child and unknown)."""
        if self.popen is not None:
            return self.popen.poll()
        return None if pid_alive(self.pid) else -1

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
        code = self.exit_code()
        status = "an unknown status" if code == -1 and self.popen is None else f"{code}{signal_name(code)}"
        tail = self.log_tail()
        return (
            f"worker {self.name!r} (pid {self.pid}) exited with {status}; "
            f"last stderr: {tail if tail else '(empty)'}"
        )


class Cluster:
    """The worker processes of one simulation, sharing a run directory and shm namespace.

    >>> cluster = Cluster("demo")
    >>> bob = cluster.start_worker({"name": "bob"})
    >>> cluster.shutdown()
    """

    def __init__(self, name: str = "default", *, run_dir: str | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.workers: dict[str, WorkerProcess] = {}
        self.closed = False
        if run_dir is None:  # a new simulation owned by this process
            sweep_stale()
            self.owner = True
            self.name = name
            self.request_timeout_s = request_timeout_s  # every connection to a worker, ours and theirs
            self.namespace = rundir.new_namespace()
            self.run_dir = os.path.join(rundir.run_root(), self.namespace)
            os.mkdir(self.run_dir, 0o700)
            os.chmod(self.run_dir, 0o700)  # umask can only narrow mkdir's mode; be explicit anyway
            self.owner_pid = os.getpid()
            self.owner_started = rundir.process_started(self.owner_pid)
            self.token = secrets.token_hex(16)
            self._write_meta(ready=False)
        else:  # attach to a simulation another process owns
            run_dir = rundir.verify_run_dir(run_dir)
            meta = read_meta(run_dir)
            self.owner = False
            self.name = meta["name"]
            self.namespace = meta["namespace"]
            self.run_dir = run_dir
            self.owner_pid = meta["owner_pid"]
            self.owner_started = meta.get("owner_started")
            self.token = meta["token"]
            self.request_timeout_s = float(meta.get("request_timeout_s", REQUEST_TIMEOUT_S))
            for worker_name, pid in read_pids(run_dir).items():
                self._adopt(worker_name, pid)

    # -- starting -------------------------------------------------------------
    def start_worker(self, spec: dict[str, Any]) -> WorkerProcess:
        """Spawn a worker process; returns at once (the worker answers once torch is imported)."""
        name = spec["name"]
        if self.closed:
            raise SimsyftError(f"simulation {self.name!r} is shut down")
        existing = self.workers.get(name)
        if existing is not None and existing.exit_code() is None:
            raise SimsyftError(f"worker {name!r} is already running (pid {existing.pid})")
        full = {
            "device": "cpu", "threads": 1, "cpus": None, "seed": None, **spec,
            "endpoint": self._endpoint(name), "namespace": self.namespace, "run_dir": self.run_dir,
            "parent_pid": os.getpid(), "owns_run_dir": self.owner, "request_timeout_s": self.request_timeout_s,
        }
        log_path = os.path.join(self.run_dir, f"{name}.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        env.pop(RUN_DIR_ENV, None)
        env[TOKEN_ENV] = self.token  # Note [Nothing outside the run root is trusted]
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "simsyft.worker", json.dumps(full)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, close_fds=True,
            )
        worker = WorkerProcess(name, full, popen.pid, log_path, popen=popen)
        worker.connection = self._connect(worker)
        self.workers[name] = worker
        self._write_pids()
        return worker

    def _adopt(self, name: str, pid: int) -> WorkerProcess:
        worker = WorkerProcess(name, {"name": name, "endpoint": self._endpoint(name)}, pid,
                               os.path.join(self.run_dir, f"{name}.log"))
        worker.connection = self._connect(worker)
        self.workers[name] = worker
        return worker

    def _endpoint(self, name: str) -> str:
        return f"ipc://{self.run_dir}/{name}.sock"

    def _connect(self, worker: WorkerProcess) -> ZmqConnection:
        return ZmqConnection(worker.name, self._endpoint(worker.name), self.namespace,
                             exit_status=worker.exit_code, describe_exit=worker.describe_exit,
                             timeout_s=self.request_timeout_s, pid=worker.pid)

    def wait_ready(self, names: list[str] | None = None, timeout: float = 120.0) -> None:
        """Block until each worker answers; a worker that dies on the way raises WorkerCrashedError."""
        deadline = time.monotonic() + timeout
        for name in names or list(self.workers):
            worker = self.workers[name]
            # request() returns once the worker bound its socket and answered, or raises on a crash.
            # Start-up (importing torch) has its own timeout, not request_timeout_s.
            try:
                worker.connection.request(lambda seq: messages.Info(seq),
                                          timeout_s=max(deadline - time.monotonic(), 0.001))
            except WorkerTimeoutError:
                raise WorkerTimeoutError(f"worker {name!r} took more than {timeout:.0f}s to start") from None
        if self.owner:
            self._write_meta(ready=True)

    # -- stopping -------------------------------------------------------------
    def stop_worker(self, name: str, timeout: float = 5.0) -> None:
        """Ask a worker to exit (killing it after `timeout`), and forget it."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        conn = worker.connection
        if worker.exit_code() is None and conn is not None and conn.closed_reason is None:
            if conn._lock.acquire(timeout=timeout):
                try:
                    conn._transmit(codec.encode(messages.Shutdown(conn.next_seq())))
                except Exception:  # noqa: BLE001 - best effort; the process is killed below if it stays
                    pass
                finally:
                    conn._lock.release()
        if conn is not None:
            conn.close("shut down")
        self._reap(worker, timeout)
        self._write_pids()

    def _reap(self, worker: WorkerProcess, timeout: float) -> None:
        if worker.popen is not None:
            try:
                worker.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                worker.popen.kill()
                worker.popen.wait()
            return
        deadline = time.monotonic() + timeout
        while pid_alive(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(worker.pid) and is_worker_of(worker.pid, self.token):
            os.kill(worker.pid, 9)

    def kill(self, name: str) -> None:
        """SIGKILL a worker (fault injection); its connection then reports the crash."""
        worker = self.workers[name]
        if worker.popen is not None:
            worker.popen.kill()  # a no-op once reaped: never a recycled pid
            worker.popen.wait()
            return
        if is_worker_of(worker.pid, self.token):
            os.kill(worker.pid, 9)
        else:
            deadline = time.monotonic() + 5
            while pid_alive(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def restart(self, name: str) -> WorkerProcess:
        """Stop (or clean up after) a worker and start it again with the same spec, empty."""
        worker = self.workers[name]
        spec = {k: v for k, v in worker.spec.items() if k not in ("endpoint", "namespace", "run_dir", "parent_pid", "owns_run_dir")}
        self.stop_worker(name)
        try:
            os.unlink(self._endpoint(name).removeprefix("ipc://"))
        except FileNotFoundError:
            pass
        return self.start_worker(spec)

    def shutdown(self) -> None:
        """Owned: stop every worker, remove every segment and the run directory.
        Attached: stop only the workers this process started; close the rest's connections."""
        if self.closed:
            return
        self.closed = True
        for name, worker in list(self.workers.items()):
            if self.owner or worker.popen is not None:
                self.stop_worker(name)
            elif worker.connection is not None:
                worker.connection.close("detached")
        if self.owner:
            segments.sweep(self.namespace)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            # Our pooled segments carry the simulation's name, so its sweep would get them, but
            # only when it ends: a script that attached and left must not leave them until then.
            segments.close(self.namespace)

    # -- facts ----------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        return {name: w.pid for name, w in self.workers.items()}

    def _write_pids(self) -> None:
        if not os.path.isdir(self.run_dir):
            return
        known = read_pids(self.run_dir) if not self.owner else {}
        known.update(self.pids())
        rundir.write_json(os.path.join(self.run_dir, "pids.json"), known)

    def _write_meta(self, ready: bool) -> None:
        rundir.write_json(os.path.join(self.run_dir, "simulation.json"), {
            "name": self.name, "owner_pid": self.owner_pid, "owner_started": self.owner_started,
            "namespace": self.namespace, "token": self.token, "ready": ready,
            "request_timeout_s": self.request_timeout_s,
        })

    def __repr__(self) -> str:
        role = "owned" if self.owner else "attached"
        return f"<Cluster {self.name!r} {role} workers={sorted(self.workers)} run_dir={self.run_dir}>"


def running_simulations() -> list[tuple[str, dict]]:
    """(run_dir, simulation.json) of every simulation of this user whose owner is alive."""
    found = []
    for path in rundir.run_dirs():
        try:
            meta = read_meta(path)
        except SimsyftError:
            continue
        if owner_alive(meta):
            found.append((path, meta))
    return found


def owned_by_cli(meta: dict) -> bool:
    """Whether a simulation's owner is a `simsyft up` process (not some user's Python script)."""
    try:
        with open(f"/proc/{int(meta['owner_pid'])}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, KeyError, ValueError):
        return False
    return b"up" in argv and any(part.endswith(b"simsyft") for part in argv)


def find_run_dir(name: str | None = None) -> str:
    """The run directory of the running simulation called `name` (the only one, if None).

    Simulations started by `simsyft up` win over ones that user scripts own."""
    running = running_simulations()
    matches = [(d, m) for d, m in running if name is None or m.get("name") == name]
    if len(matches) > 1 and any(owned_by_cli(m) for _, m in matches):
        matches = [(d, m) for d, m in matches if owned_by_cli(m)]
    if not matches:
        known = ", ".join(sorted({m.get("name", "?") for _, m in running})) or "none"
        wanted = f"called {name!r}" if name else "at all"
        raise SimsyftError(f"no running simulation {wanted} (running: {known}); start one with `simsyft up CONFIG`")
    if len(matches) > 1:
        raise SimsyftError(
            f"{len(matches)} running simulations match{' ' + repr(name) if name else ''}: "
            + ", ".join(f"{m.get('name')} (owner pid {m.get('owner_pid')})" for _, m in matches)
            + "; name one"
        )
    return matches[0][0]


def sweep_stale() -> list[str]:
    """Remove run dirs, worker processes and segments of this user's simulations whose owner is dead.

    Only what lies in the run root is read, only processes proven to be that simulation's workers
    are killed, and only segments this uid owns are unlinked (Note [Nothing outside the run root
    is trusted]).
    """
    removed: list[str] = []
    alive: dict[str, bool] = {}  # namespace -> whether its owner lives
    for path in rundir.run_dirs():
        namespace = os.path.basename(path)
        try:
            meta = read_meta(path)
        except SimsyftError:
            meta = None  # being created right now, or broken: judge by the pid in its name
        if meta is not None:
            alive[namespace] = owner_alive(meta)
        else:
            alive[namespace] = pid_alive(int(namespace.split("-", 1)[0]))
        if alive[namespace]:
            continue
        token = meta.get("token", "") if meta is not None else ""
        for pid in read_pids(path).values():
            if is_worker_of(pid, token):  # never a recycled pid, nor another simulation's worker
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    uid = os.getuid()
    for name in shm.list_segments():
        m = _SHM_RE.match(name)
        if not m:
            continue
        owner_lives = alive.get(m.group(1))
        if owner_lives is None:
            owner_lives = pid_alive(int(m.group(2)))
        if owner_lives:
            continue
        path = os.path.join(shm.SHM_DIR, name)
        try:
            if os.lstat(path).st_uid != uid:
                continue  # another user's: not ours to judge (root could unlink it)
            os.unlink(path)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
