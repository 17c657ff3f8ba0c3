"""The local backend's side of forked workers: the warm template and the workers it forks.

Owns `Template` (one template process per local backend: started, asked for workers,
restarted when it dies, stopped), the template prewarmed when simsyft is imported
(`prewarm`, `take_prewarmed`, `discard_prewarmed`: Note [Prewarmed template]),
`worker_env` (the environment every worker and template starts with), `ForkedProcess`
(a forked worker behind Popen's poll/wait/kill, so backends/local.py treats it like a
spawned one) and `become_subreaper`. The template process itself is worker/template.py
(Note [Forked workers] there). Imports errors and rundir only (neither imports torch: this
module runs at the top of ``import simsyft``); starts the template with
``python -m simsyft.worker.template``, never imports the worker.

Note [Prewarmed template]
    A simulation's template imports torch before it can fork a worker, and that import is
    most of what starting 64 workers costs (measured: 1.3 s of 2.4 s on 2 cores). So
    `import simsyft` starts one template at once, before it imports torch itself: the two
    imports run side by side, and the first simulation this process starts takes that
    template (warm by then, or nearly) instead of starting its own. It is taken only if its
    environment and working directory are exactly what a template started now would get (a
    variable set after the import, say CUDA_VISIBLE_DEVICES or OMP_NUM_THREADS, may matter
    when torch loads, so a template started before it must not be used) and only by a local
    simulation that forks; the first backend of any kind made in this process takes it or stops it, so
    after that simulation ends no template is left. Its stderr goes to an unlinked temporary
    file until the simulation's run directory exists (then the template copies it there).
    It costs one more `import torch` of CPU beside the user's, and a template's memory
    until taken: so it is not started where nothing would take it (a worker, a template, a
    script `simsyft run` attaches, a multiprocessing child, `simsyft status` and the other
    commands that start no simulation, `SIMSYFT_START=spawn`), nor on one CPU, where the two
    imports would take turns; `SIMSYFT_PREWARM=0` turns it off. If the user's process dies
    first (even kill -9) the template reads the end of its stdin once its import is done,
    and exits.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

from ..errors import SimsyftError
from ..rundir import RUN_DIR_ENV, TOKEN_ENV, pid_alive

__all__ = [
    "PACKAGE_PARENT",
    "PREWARM_ENV",
    "START_ENV",
    "ForkedProcess",
    "Template",
    "become_subreaper",
    "can_fork",
    "discard_prewarmed",
    "prewarm",
    "take_prewarmed",
    "worker_env",
]

# The folder holding the simsyft package: on every worker's PYTHONPATH (local and Ray).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How workers start when the config does not say ([simulation] start): "fork" or "spawn".
START_ENV = "SIMSYFT_START"
# "0" (or "false", "no", "off"): `import simsyft` starts no template (Note [Prewarmed template]).
PREWARM_ENV = "SIMSYFT_PREWARM"
# The CLI commands that start a simulation (the others never take a prewarmed template).
_LAUNCHING_COMMANDS = ("up", "run", "demo")
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_subreaper: bool | None = None
_subreaper_lock = threading.Lock()


def worker_env(token: str) -> dict[str, str]:
    """A worker's (and a template's) environment: this process's, simsyft importable, `token` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env.pop(RUN_DIR_ENV, None)
    env[TOKEN_ENV] = token  # Note [Nothing outside the run root is trusted] (rundir.py)
    return env
def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (once); whether it could (Linux only).

    Forked workers are orphaned on purpose (Note [Forked workers]): this is how they become
    this process's children. Side effect: any other orphan below this process is adopted too
    (and reaped only at exit, or by whoever waits for it).
    """
    global _subreaper
    with _subreaper_lock:
        if _subreaper is None:
            _subreaper = False
            if sys.platform.startswith("linux"):
                import ctypes

                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
                except (OSError, AttributeError):
                    _subreaper = False
        return _subreaper


def can_fork() -> bool:
    """Whether workers can be forked from a template here (Linux, and this process can adopt them)."""
    return hasattr(os, "fork") and become_subreaper()


class ForkedProcess:
    """A worker the template forked and this process adopted: the part of Popen the backend uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Not ours (this process could not adopt it, or someone else reaped it):
                # judge by /proc, and ask waitpid again next time.
                return None if pid_alive(self.pid) else -1
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        # Unreaped, the pid cannot have been reused: it is still this worker (or its zombie).
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Template:
    """One template process (worker/template.py) forking the workers of one simulation.

    >>> template = Template(env, "/run/dir/.template.log")
    >>> workers = template.fork_many([(launch.to_json(), "/run/dir/bob.log"), ...])  # ForkedProcesses
    >>> template.close()
    """

    def __init__(self, env: dict[str, str], log_path: str | None, ready_timeout_s: float = 120.0) -> None:
        self.env = env  # carries the simulation's token: every fork inherits it
        self.log_path = log_path  # None: an unlinked temporary file, until `relog` names one
        self.ready_timeout_s = ready_timeout_s
        self.popen: subprocess.Popen | None = None
        self.starts = 0  # how many template processes were started (a dead one is replaced)
        self.cwd: str | None = None
        self._stderr: IO[bytes] | None = None
        self._relog = False  # the template must be told log_path before its next batch
        self._buffer = b""
        self._ready = False
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def start(self) -> None:
        """Start the template process (it imports torch meanwhile); returns at once."""
        if self.popen is not None and self.popen.poll() is None:
            return
        if self.log_path is None:
            self._stderr = tempfile.TemporaryFile()  # unlinked: nothing to clean up after a kill -9
            stderr = self._stderr
        else:
            stderr = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "simsyft.worker.template"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=self.env, close_fds=True,
            )
        finally:
            if stderr is not self._stderr:
                stderr.close()
        os.set_blocking(self.popen.stdout.fileno(), False)
        self.cwd = os.getcwd()  # its workers' working directory too
        self._buffer = b""
        self._ready = False
        self._relog = False  # a fresh process writes to log_path from the start
        self.starts += 1

    def relog(self, log_path: str) -> None:
        """From now on the template's stderr goes to `log_path` (with what it wrote so far)."""
        with self._lock:
            self.log_path = log_path
            self._relog = self.popen is not None

    def fork(self, launch_json: str, log_path: str) -> ForkedProcess:
        """A new worker, forked from the template (started, or restarted if it died)."""
        return self.fork_many([(launch_json, log_path)])[0]

    def fork_many(self, workers: list[tuple[str, str]]) -> list[ForkedProcess]:
        """New workers, one per (WorkerLaunch JSON, log path), forked in one request."""
        if not become_subreaper():
            raise SimsyftError("cannot fork workers here (this process cannot adopt them: Linux only); "
                               'use [simulation] start = "spawn"')
        request = (json.dumps([{"launch": launch, "log": log} for launch, log in workers]) + "\n").encode()
        with self._lock:
            for attempt in range(2):  # a template that died is replaced once per request
                self.start()
                try:
                    if not self._ready:
                        self._expect_ready()
                    if self._relog:
                        self._ask((json.dumps({"log": self.log_path}) + "\n").encode(), 30.0)
                        self._relog = False
                    pids = [int(p) for p in self._ask(request, 30.0 + 0.1 * len(workers)).split()]
                except (BrokenPipeError, _TemplateGone):
                    self._discard()
                    if attempt:
                        raise SimsyftError(f"the worker template died twice in a row; its log: "
                                           f"{self._log_tail() or '(empty)'}") from None
                    continue
                if len(pids) != len(workers) or min(pids) <= 0:
                    for pid in pids:  # the ones it did fork: not half a simulation
                        if pid > 0:
                            ForkedProcess(pid).kill()
                    raise SimsyftError(f"the worker template could not fork a worker; its log: "
                                       f"{self._log_tail() or '(empty)'}")
                return [ForkedProcess(pid) for pid in pids]
        raise AssertionError("unreachable")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the template (its workers are not its children: they are not touched)."""
        with self._lock:
            popen, self.popen = self.popen, None
            if popen is not None:
                try:
                    popen.stdin.close()  # end of requests: it exits
                except OSError:
                    pass
                if not self._ready:
                    popen.kill()  # still importing (it reads stdin only after): it has forked nothing
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
                popen.stdout.close()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    # -- internals ----------------------------------------------------------------------------
    def _ask(self, request: bytes, timeout: float) -> str:
        self.popen.stdin.write(request)
        self.popen.stdin.flush()
        return self._readline(timeout)

    def _expect_ready(self) -> None:
        line = self._readline(self.ready_timeout_s)
        if line != "ready":
            raise _TemplateGone()
        self._ready = True

    def _readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimsyftError(f"the worker template (pid {self.popen.pid}) did not answer in {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if self.popen.poll() is not None:
                    raise _TemplateGone()
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise _TemplateGone()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def _discard(self) -> None:
        popen, self.popen = self.popen, None
        if popen is not None:
            popen.kill()
            popen.wait()
            for pipe in (popen.stdin, popen.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        if self.log_path is not None and self._stderr is not None:
            self._stderr.close()  # the replacement writes to log_path
            self._stderr = None

    def _log_tail(self, lines: int = 10) -> str:
        try:
            if self._stderr is not None and (self.log_path is None or self._relog):
                text = os.pread(self._stderr.fileno(), 1 << 16, 0)  # not yet told where: the temp file
            else:
                with open(self.log_path, "rb") as f:
                    text = f.read()
        except OSError:
            return ""
        return "\n".join(text.decode("utf-8", "replace").strip().splitlines()[-lines:])


# -- the template prewarmed at import (Note [Prewarmed template]) ------------------------------
_prewarmed: tuple[Template, str] | None = None  # (template, the token it was started with)
_prewarm_lock = threading.Lock()


def _should_prewarm() -> bool:
    env = os.environ
    if env.get(PREWARM_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if TOKEN_ENV in env or RUN_DIR_ENV in env or env.get(START_ENV) == "spawn":
        return False  # a worker or template; a script `simsyft run` attaches; spawned workers
    if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
        return False
    try:
        if len(os.sched_getaffinity(0)) < 2:
            return False
    except (AttributeError, OSError):
        return False
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        return False  # a child of the user's program: its parent has (or had) the simulation
    argv = getattr(sys, "argv", None) or [""]  # an embedded interpreter may have none
    # `simsyft CMD` or `python -m simsyft CMD` (whose argv[0] is "-m" while the package imports)
    if os.path.basename(argv[0]) == "simsyft" or argv[0] == "-m":
        return len(argv) > 1 and argv[1] in _LAUNCHING_COMMANDS
    return True


def prewarm() -> None:
    """Start the first simulation's template now, unless nothing would take it (once per process)."""
    global _prewarmed
    with _prewarm_lock:
        if _prewarmed is not None or not _should_prewarm():
            return
        token = secrets.token_hex(16)
        template = Template(worker_env(token), None)
        try:
            template.start()
        except OSError:
            template.close()
            return
        _prewarmed = (template, token)
    atexit.register(discard_prewarmed)


def take_prewarmed() -> tuple[Template, str] | None:
    """The prewarmed template and its token, if it can serve a simulation starting now; else None.

    Only the first caller can get it; a template it cannot use (the environment or the working
    directory changed since the import, or the template died) is stopped.
    """
    global _prewarmed
    with _prewarm_lock:
        prewarmed, _prewarmed = _prewarmed, None
    if prewarmed is None:
        return None
    template, token = prewarmed
    try:
        cwd = os.getcwd()
    except OSError:  # removed since: whatever a template started now would get, it is not that one's
        cwd = None
    if (template.env != worker_env(token) or template.cwd != cwd or template.popen is None
            or template.popen.poll() is not None):
        template.close()
        return None
    return template, token


def _forget_in_child() -> None:
    """In a fork of this process (a multiprocessing or DataLoader worker): the prewarmed template
    is the parent's; this process never takes or stops it, and holds none of its pipes."""
    global _prewarmed
    prewarmed, _prewarmed = _prewarmed, None
    if prewarmed is not None:
        popen = prewarmed[0].popen
        for pipe in (popen.stdin, popen.stdout):
            try:
                pipe.close()  # our copies only: the parent's stay open
            except OSError:
                pass
        popen.returncode = 0  # not our child: nothing for Popen to wait for or warn about


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def discard_prewarmed() -> None:
    """Stop the prewarmed template if no simulation took it (the first backend made does this)."""
    global _prewarmed
    with _prewarm_lock:
        prewarmed, _prewarmed = _prewarmed, None
    if prewarmed is not None:
        prewarmed[0].close()


class _TemplateGone(Exception):
    """The template process ended (or closed its stdout) before answering."""
