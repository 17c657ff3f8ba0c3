"""The local backend: every worker is its own process on this machine.

Owns `LocalBackend`: the private run directory (inside the per-user run root
of rundir.py, Note [Nothing outside the run root is trusted]: ipc endpoints,
worker logs, `simulation.json`, `pids.json`, `groups.json`), the namespace that
names every shared-memory segment of the simulation, the token its workers carry,
and the worker processes: forked from the simulation's warm template
(backends/template.py, ``start = "fork"``, the default on Linux) or spawned as
``python -m simsyft.worker '<WorkerLaunch>'`` (``start = "spawn"``); either way
pinned by worker/main.py, supervised, torn down. A local backend is either
*owned* (this process started it and stops it) or *attached* (another process
owns it: `simsyft.connect`, `simsyft run`). Imports config, links, rundir,
wire and worker.spec; never handles or pointers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import rundir
from ..config import REQUEST_TIMEOUT_S, WorkerConfig
from ..errors import SimsyftError, unknown_worker
from ..links.zmq import ZmqLink
from ..rundir import is_worker_of, pid_alive, read_meta, read_pids, signal_name
from ..wire import segments
from ..worker.spec import WorkerLaunch
from .base import Backend
from .template import START_ENV, ForkedProcess, Template, can_fork, take_prewarmed, worker_env

__all__ = ["START_ENV", "LocalBackend", "WorkerProcess", "default_start"]

_TEMPLATE_LOG = ".template.log"  # a dot: no worker name can clash with it, and `up -v` does not stream it


def default_start() -> str:
    """$SIMSYFT_START if set, else "fork" where workers can be forked (Linux), else "spawn"."""
    wanted = os.environ.get(START_ENV)
    if wanted in ("fork", "spawn"):
        return wanted
    return "fork" if can_fork() else "spawn"


@dataclass
class WorkerProcess:
    """One worker: its process (ours, or another owner's), log and link."""

    config: WorkerConfig
    pid: int
    log_path: str
    link: ZmqLink | None = None
    popen: subprocess.Popen | ForkedProcess | None = None
    started: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.config.name

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


class LocalBackend(Backend):
    """The worker processes of one simulation, sharing a run directory and shm namespace.

    >>> backend = LocalBackend("demo")
    >>> backend.start(WorkerConfig("bob")); backend.wait_ready()
    >>> backend.shutdown()
    """

    kind = "local"

    def __init__(self, name: str = "default", request_timeout_s: float = REQUEST_TIMEOUT_S,
                 start: str | None = None) -> None:
        self.start_method = start or default_start()
        # Taken before Backend.__init__, which stops a prewarmed template nobody took.
        prewarmed = take_prewarmed() if self.start_method == "fork" else None
        try:
            self._init(name, request_timeout_s, prewarmed)
        except BaseException:
            if prewarmed is not None:
                prewarmed[0].close()  # taken, but this simulation never came to be
            raise

    def _init(self, name: str, request_timeout_s: float, prewarmed: tuple[Template, str] | None) -> None:
        self.template: Template | None = None
        super().__init__(name, request_timeout_s)
        rundir.sweep_stale()
        self.workers: dict[str, WorkerProcess] = {}
        self.namespace = rundir.new_namespace()
        self.run_dir = os.path.join(rundir.run_root(), self.namespace)
        os.mkdir(self.run_dir, 0o700)
        os.chmod(self.run_dir, 0o700)  # umask can only narrow mkdir's mode; be explicit anyway
        self.owner_pid = os.getpid()
        self.owner_started = rundir.process_started(self.owner_pid)
        if prewarmed is not None:  # Note [Prewarmed template] (backends/template.py)
            self.template, self.token = prewarmed
            self.template.relog(os.path.join(self.run_dir, _TEMPLATE_LOG))
        else:
            self.token = secrets.token_hex(16)
        self._write_meta(ready=False)
        if self.start_method == "fork":
            self._template().start()  # it imports torch while the caller gets its workers ready

    @classmethod
    def attach(cls, run_dir: str) -> "LocalBackend":
        """The simulation another process owns, in run directory `run_dir`: its workers, reached by us."""
        run_dir = rundir.verify_run_dir(run_dir)
        meta = read_meta(run_dir)
        self = object.__new__(cls)
        Backend.__init__(self, meta["name"], float(meta.get("request_timeout_s", REQUEST_TIMEOUT_S)))
        self.owner = False
        self.workers = {}
        self.namespace = meta["namespace"]
        self.run_dir = run_dir
        self.owner_pid = meta["owner_pid"]
        self.owner_started = meta.get("owner_started")
        self.token = meta["token"]
        self.start_method = default_start()  # for workers this process starts (sy.VirtualWorker)
        self.template = None  # started on first use
        groups = _read_groups(run_dir)
        for name, pid in read_pids(run_dir).items():
            worker = WorkerProcess(WorkerConfig(name, group=groups.get(name)), pid,
                                   os.path.join(run_dir, f"{name}.log"))
            worker.link = self._connect(worker)
            self.workers[name] = worker
        return self

    # -- Backend ------------------------------------------------------------------------------
    def start(self, config: WorkerConfig) -> None:
        """Start a worker process; returns at once (`wait_ready` waits until it answers)."""
        self.start_many([config])

    def start_many(self, configs: list[WorkerConfig]) -> None:
        """Start these workers; forked, they are asked of the template in one request."""
        if self.closed:
            raise SimsyftError(f"simulation {self.name!r} is shut down")
        launches = []
        for config in configs:
            existing = self.workers.get(config.name)
            if existing is not None and existing.exit_code() is None:
                raise SimsyftError(f"worker {config.name!r} is already running (pid {existing.pid})")
            launch = WorkerLaunch(config, self.namespace, self.run_dir, self._endpoint(config.name), os.getpid(),
                                  self.owner, self.request_timeout_s)
            launches.append((launch.to_json(), os.path.join(self.run_dir, f"{config.name}.log")))
        try:
            if self.start_method == "fork":
                popens = self._template().fork_many(launches) if launches else []
                for config, (_, log_path), popen in zip(configs, launches, popens):
                    self._add(config, log_path, popen)
            else:
                for config, (launch_json, log_path) in zip(configs, launches):
                    with open(log_path, "ab") as log:
                        popen = subprocess.Popen(
                            [sys.executable, "-m", "simsyft.worker", launch_json], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=self._env(), close_fds=True,
                        )
                    self._add(config, log_path, popen)  # at once: one failing later leaves none unknown
        finally:
            self._write_pids()

    def _add(self, config: WorkerConfig, log_path: str, popen: subprocess.Popen | ForkedProcess) -> None:
        worker = WorkerProcess(config, popen.pid, log_path, popen=popen)
        self.workers[config.name] = worker
        worker.link = self._connect(worker)

    def stop(self, name: str, timeout: float = 5.0) -> None:
        """Ask a worker to exit (killing it after `timeout`), and forget it."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        link = worker.link
        if link is not None:
            if worker.exit_code() is None:
                link.ask_to_exit(timeout)
            else:
                link.close("shut down")
        self._reap(worker, timeout)
        self._write_pids()

    def kill(self, name: str) -> None:
        """SIGKILL a worker (fault injection); its link then reports the crash."""
        worker = self.workers[name]
        if worker.popen is not None:
            worker.popen.kill()  # a no-op once reaped: never a recycled pid
            worker.popen.wait()
            return
        if is_worker_of(worker.pid, self.token):
            os.kill(worker.pid, 9)
        deadline = time.monotonic() + 5
        while pid_alive(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self, name: str) -> None:
        """Stop (or clean up after) a worker and start it again with the same config, empty."""
        config = self.config(name)
        self.stop(name)
        try:
            os.unlink(self._endpoint(name).removeprefix("ipc://"))
        except FileNotFoundError:
            pass
        self.start(config)

    def names(self) -> list[str]:
        return list(self.workers)

    def config(self, name: str) -> WorkerConfig:
        return self._worker(name).config

    def exit_status(self, name: str) -> int | None:
        return self._worker(name).exit_code()

    def link(self, name: str) -> ZmqLink:
        return self._worker(name).link

    def pid(self, name: str) -> int | None:
        return self._worker(name).pid

    def facts(self, name: str) -> dict[str, Any]:
        import psutil

        worker = self._worker(name)
        facts: dict[str, Any] = {"pid": worker.pid, "device": worker.config.device}
        try:
            proc = psutil.Process(worker.pid)
            if proc.status() == psutil.STATUS_STOPPED:
                facts["stopped"] = True
            facts["cpus"] = proc.cpu_affinity()
            facts["rss"] = proc.memory_info().rss
            # Unique memory: RSS counts every page shared with the template (and the other
            # workers) again in each worker; USS is what this worker alone costs.
            facts["uss"] = proc.memory_full_info().uss
        except psutil.Error:
            pass
        return facts

    def ready(self) -> None:
        if self.owner:
            self._write_meta(ready=True)

    def shutdown(self) -> None:
        """Owned: stop every worker, remove every segment and the run directory.
        Attached: stop only the workers this process started; close the rest's links."""
        if self.closed:
            return
        self.closed = True
        for name, worker in list(self.workers.items()):
            if self.owner or worker.popen is not None:
                self.stop(name)
            elif worker.link is not None:
                worker.link.close("detached")
        if self.template is not None:
            self.template.close()
        if self.owner:
            segments.sweep(self.namespace)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            # Our pooled segments carry the simulation's name, so its sweep would get them, but
            # only when it ends: a script that attached and left must not leave them until then.
            segments.close(self.namespace)

    # -- internals ----------------------------------------------------------------------------
    def _worker(self, name: str) -> WorkerProcess:
        try:
            return self.workers[name]
        except KeyError:
            raise unknown_worker(self.name, name, self.workers) from None

    def _env(self) -> dict[str, str]:
        """A worker's (and the template's) environment: simsyft importable, the token set."""
        return worker_env(self.token)

    def _template(self) -> Template:
        if self.template is None:
            self.template = Template(self._env(), os.path.join(self.run_dir, _TEMPLATE_LOG))
        return self.template

    def _endpoint(self, name: str) -> str:
        return f"ipc://{self.run_dir}/{name}.sock"

    def _connect(self, worker: WorkerProcess) -> ZmqLink:
        return ZmqLink(worker.name, self._endpoint(worker.name), self.namespace,
                       exit_status=worker.exit_code, describe_exit=worker.describe_exit,
                       timeout_s=self.request_timeout_s, pid=worker.pid)

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

    def _write_pids(self) -> None:
        if not os.path.isdir(self.run_dir):
            return
        known = read_pids(self.run_dir) if not self.owner else {}
        known.update({name: w.pid for name, w in self.workers.items()})
        rundir.write_json(os.path.join(self.run_dir, "pids.json"), known)
        groups = _read_groups(self.run_dir) if not self.owner else {}
        groups.update({name: w.config.group for name, w in self.workers.items() if w.config.group})
        rundir.write_json(os.path.join(self.run_dir, "groups.json"), groups)

    def _write_meta(self, ready: bool) -> None:
        rundir.write_json(os.path.join(self.run_dir, "simulation.json"), {
            "name": self.name, "owner_pid": self.owner_pid, "owner_started": self.owner_started,
            "namespace": self.namespace, "token": self.token, "ready": ready,
            "request_timeout_s": self.request_timeout_s, "backend": self.kind,
        })

    def __repr__(self) -> str:
        role = "owned" if self.owner else "attached"
        return f"<LocalBackend {self.name!r} {role} workers={sorted(self.workers)} run_dir={self.run_dir}>"


def _read_groups(run_dir: str) -> dict[str, str]:
    """groups.json: worker name -> its group (`[workers.<group>] count = N`), for status and sim.group."""
    import json

    try:
        with open(os.path.join(run_dir, "groups.json")) as f:
            return {str(k): str(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, AttributeError):
        return {}
