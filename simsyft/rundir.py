"""Where simulations live on disk, and who may be signalled: the per-user run root.

Owns the run root (``$TMPDIR/simsyft-<uid>``, or ``$SIMSYFT_ROOT``), the run
directories inside it (one per simulation, named by its namespace), their
``simulation.json`` and ``pids.json``, finding running simulations by name, the
sweep of leftovers of simulations whose owner died, and the identity checks
made before any process is signalled. Imports the standard library, psutil,
wire.shm (segment names, inside the sweep only: this module is imported before torch,
Note [Prewarmed template] in backends/template.py) and simsyft.errors; it starts nothing.

Note [Nothing outside the run root is trusted]
    The temp dir is shared by every local user, so anything in it may have been
    planted: a fake simulation (a `simulation.json` and a socket that receive
    the victim's tensors), a `pids.json` naming the victim's own processes, a
    directory swapped for a symlink. So simsyft reads and writes only inside
    one root that it creates mode 0700 and verifies before every use: a real
    directory (not a symlink), owned by this uid, writable by nobody else.
    Anything else is refused with an error saying what is wrong; nothing
    outside the root is ever read. Inside it, only this uid can have written.

    A pid read from a file can still be stale (the process exited and the pid
    was reused), so a worker is signalled only after checking that it runs as
    this uid with its simulation's token in its environment (`is_worker_of`),
    and an owner only if its start time matches the one recorded
    (`owner_alive`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
from typing import Any

from .errors import SimsyftError

__all__ = [
    "ROOT_ENV",
    "RUN_DIR_ENV",
    "find_run_dir",
    "owned_by_cli",
    "running_simulations",
    "sweep_stale",
    "TOKEN_ENV",
    "is_worker_of",
    "owner_alive",
    "pid_alive",
    "process_started",
    "read_meta",
    "read_pids",
    "run_dirs",
    "run_root",
    "signal_name",
    "verify_run_dir",
    "write_json",
]

ROOT_ENV = "SIMSYFT_ROOT"
# `simsyft run CONFIG -- CMD` names the simulation CMD attaches to here.
RUN_DIR_ENV = "SIMSYFT_RUN_DIR"
_SHM_RE = re.compile(r"simsyft_((\d+)-[0-9a-f]+)_")
# Every worker process carries its simulation's token here; /proc/<pid>/environ is readable
# only by the same uid (and root), unlike the command line.
TOKEN_ENV = "SIMSYFT_SIM_TOKEN"
_NAMESPACE_RE = re.compile(r"(\d+)-([0-9a-f]+)")


def run_root() -> str:
    """The verified per-user directory holding every simulation of this uid (created if missing)."""
    root = os.environ.get(ROOT_ENV) or os.path.join(tempfile.gettempdir(), f"simsyft-{os.getuid()}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SimsyftError(f"cannot create simsyft's run root {root}: {exc.strerror or exc}; "
                           f"set {ROOT_ENV} to a private directory") from None
    _verify_private(root, "run root", f"remove it, or set {ROOT_ENV} to a private directory of yours")
    return root


def _verify_private(path: str, what: str, remedy: str) -> None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SimsyftError(f"simsyft {what} {path}: {exc.strerror or exc}") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.getuid():
        problem = f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem is not None:
        raise SimsyftError(f"refusing to use {path} as simsyft's {what}: it {problem}; {remedy}")


def verify_run_dir(path: str) -> str:
    """`path` if it is a run directory directly inside the verified run root; SimsyftError otherwise."""
    root = run_root()
    real = os.path.abspath(path)
    if os.path.dirname(real) != os.path.abspath(root) or not _NAMESPACE_RE.fullmatch(os.path.basename(real)):
        raise SimsyftError(f"{path} is not a simsyft run directory (they live in {root})")
    _verify_private(real, "run directory", "it was not made by simsyft")
    return real


def run_dirs() -> list[str]:
    """Every run directory in the run root (live or stale), sorted."""
    root = run_root()
    found = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if _NAMESPACE_RE.fullmatch(entry) and os.path.isdir(path) and not os.path.islink(path):
            found.append(path)
    return found


def new_namespace() -> str:
    """A fresh simulation namespace: `<owner pid>-<random hex>` (segment names start with it)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # readers (simsyft status) never see half a file


def read_meta(run_dir: str) -> dict:
    """A run directory's simulation.json (name, namespace, owner pid and start time, token, ready)."""
    try:
        with open(os.path.join(run_dir, "simulation.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise SimsyftError(f"{run_dir} is not a running simsyft simulation ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("owner_pid"), int) or not isinstance(meta.get("token"), str):
        raise SimsyftError(f"{run_dir} is not a running simsyft simulation (its simulation.json is incomplete)")
    return meta


def read_pids(run_dir: str) -> dict[str, int]:
    try:
        with open(os.path.join(run_dir, "pids.json")) as f:
            return {str(k): int(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def process_started(pid: int) -> float | None:
    """The start time of process `pid` (psutil's create_time), or None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def owner_alive(meta: dict[str, Any]) -> bool:
    """Whether the process that owns a simulation is still the one that started it (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(int(meta["owner_pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = meta.get("owner_started")
        return started is None or abs(proc.create_time() - float(started)) < 0.01
    except (psutil.Error, OSError, KeyError, TypeError, ValueError):
        return False


def is_worker_of(pid: int, token: str) -> bool:
    """Whether `pid` is a live worker of the simulation holding `token`, running as this uid.

    Checked before every signal to a pid read from a file (Note [Nothing outside the run root
    is trusted]); a pid that fails it is left alone.
    """
    import psutil

    if not token:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.uids().real != os.getuid() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return secrets.compare_digest(proc.environ().get(TOKEN_ENV, ""), token)
    except (psutil.Error, OSError):
        return False


def signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f" ({signal.Signals(-code).name})"
        except ValueError:
            return ""
    return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent's wait() is missing
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def running_simulations() -> list[tuple[str, dict]]:
    """(run_dir, simulation.json) of every simulation of this user whose owner is alive."""
    found = []
    for path in run_dirs():
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
    for path in run_dirs():
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
    from .wire import shm  # here, not at the top: rundir stays free of torch (Note [Prewarmed template])

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
