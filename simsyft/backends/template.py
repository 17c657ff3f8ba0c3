"""The local backend's side of forked workers: the warm template and the workers it forks.

Owns `Template` (one template process per local backend: started, asked for workers,
restarted when it dies, stopped), `ForkedProcess` (a forked worker behind Popen's
poll/wait/kill, so backends/local.py treats it like a spawned one) and `become_subreaper`.
The template process itself is worker/template.py (Note [Forked workers] there). Imports
rundir and errors; starts the template with ``python -m simsyft.worker.template``, never
imports the worker.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

from ..errors import SimsyftError
from ..rundir import pid_alive

__all__ = ["ForkedProcess", "Template", "become_subreaper", "can_fork"]

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_subreaper: bool | None = None
_subreaper_lock = threading.Lock()


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
    >>> worker = template.fork(launch.to_json(), "/run/dir/bob.log")   # a ForkedProcess
    >>> template.close()
    """

    def __init__(self, env: dict[str, str], log_path: str, ready_timeout_s: float = 120.0) -> None:
        self.env = env  # carries the simulation's token: every fork inherits it
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.popen: subprocess.Popen | None = None
        self.starts = 0  # how many template processes were started (a dead one is replaced)
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
        if not become_subreaper():
            raise SimsyftError("cannot fork workers here (this process cannot adopt them: Linux only); "
                               'use [simulation] start = "spawn"')
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "simsyft.worker.template"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env, close_fds=True,
            )
        os.set_blocking(self.popen.stdout.fileno(), False)
        self._buffer = b""
        self._ready = False
        self.starts += 1

    def fork(self, launch_json: str, log_path: str) -> ForkedProcess:
        """A new worker, forked from the template (started, or restarted if it died)."""
        import json

        request = (json.dumps({"launch": launch_json, "log": log_path}) + "\n").encode()
        with self._lock:
            for attempt in range(2):  # a template that died is replaced once per request
                self.start()
                try:
                    if not self._ready:
                        self._expect_ready()
                    self.popen.stdin.write(request)
                    self.popen.stdin.flush()
                    pid = int(self._readline(30.0))
                except (BrokenPipeError, _TemplateGone):
                    self._discard()
                    if attempt:
                        raise SimsyftError(f"the worker template died twice in a row; its log: "
                                           f"{self._log_tail() or '(empty)'}") from None
                    continue
                if pid <= 0:
                    raise SimsyftError(f"the worker template could not fork a worker; its log: "
                                       f"{self._log_tail() or '(empty)'}")
                return ForkedProcess(pid)
        raise AssertionError("unreachable")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the template (its workers are not its children: they are not touched)."""
        with self._lock:
            popen, self.popen = self.popen, None
            if popen is None:
                return
            try:
                popen.stdin.close()  # end of requests: it exits
            except OSError:
                pass
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            popen.stdout.close()

    # -- internals ----------------------------------------------------------------------------
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
                chunk = os.read(fd, 4096)
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

    def _log_tail(self, lines: int = 10) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class _TemplateGone(Exception):
    """The template process ended (or closed its stdout) before answering."""
