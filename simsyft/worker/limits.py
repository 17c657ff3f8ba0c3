"""A worker's memory_limit, enforced before an op rather than after it (Note [Memory limit]).

Owns setting RLIMIT_DATA in a worker process, reading its memory from /proc/self/status,
and telling an allocation the limit refused (MemoryLimitError) from any other failure.
Imports torch, simsyft.config (size formatting) and simsyft.errors; used only by the worker (core.py, main.py).

Note [Memory limit]: since Linux 4.7, RLIMIT_DATA bounds a process's private writable
mappings: the heap and anonymous mmaps (where torch's CPU allocator and Python get memory)
and thread stacks, but not MAP_SHARED mappings, so the /dev/shm segments that tensors sent
to a worker live in are not refused, however big. It counts address space, not resident
pages, so it is set to what the worker maps right after start-up (VmData) plus what its
limit leaves (memory_limit minus resident private memory then). Past it, torch's allocator
raises "can't allocate memory" (Python: MemoryError), which WorkerCore._error reports as
MemoryLimitError: the op fails, nothing is stored, the worker lives on. Threads started
later would count too, and libgomp aborts the process when it cannot start one, so torch's
OpenMP team is started first, and pointer chains use the ZeroMQ context (and IO thread) the
worker already has. Not applied on CUDA workers, whose host-side CUDA mappings were not
verified under it: they, and systems without /proc, keep the worker loop's RSS check after
each message (exit 3), which stays as a backstop everywhere.
"""

from __future__ import annotations

import re

import torch

from ..config import format_size
from ..errors import MemoryLimitError

__all__ = ["enforce", "memory_status", "private_resident", "refused"]

# torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes."
_ALLOCATION = re.compile(r"you tried to allocate (\d+) bytes")


def memory_status() -> dict[str, int] | None:
    """VmRSS, RssShmem and VmData of this process in bytes (/proc/self/status); None off Linux."""
    wanted = {b"VmRSS", b"RssShmem", b"VmData"}
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key in wanted:
                    found[key.decode()] = int(value.split()[0]) * 1024  # the kernel writes kB
    except (OSError, ValueError):
        return None
    return found if len(found) == len(wanted) else None


def private_resident() -> int | None:
    """Resident memory a memory_limit counts: all of it but the pages of shared-memory segments."""
    status = memory_status()
    return None if status is None else status["VmRSS"] - status["RssShmem"]


def enforce(name: str, limit: int, threads: int) -> str | None:
    """Make this process's allocations past ``limit`` fail (Note [Memory limit]).

    Returns why the worker cannot run under ``limit`` (its start-up alone passes it), or None.
    """
    import resource

    if threads > 1:  # a parallel region starts the whole team (ATen parallel_for: grain 32768 elements)
        torch.ones(1 << 20).add_(1)
        torch.ones(256, 256) @ torch.ones(256, 256)
    status = memory_status()
    if status is None:
        return None  # no /proc: the after-message check alone
    used = status["VmRSS"] - status["RssShmem"]
    if used >= limit:
        return (f"memory_limit {format_size(limit)} is less than the {format_size(used)} this worker holds "
                f"right after start-up (Python, torch and its data); raise [workers.{name}] memory_limit")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    wanted = status["VmData"] + (limit - used)
    for existing in (soft, hard):  # never loosen a limit the worker was started under
        if existing != resource.RLIM_INFINITY:
            wanted = min(wanted, existing)
    resource.setrlimit(resource.RLIMIT_DATA, (wanted, hard))
    return None


def refused(name: str, limit: int, exc: BaseException) -> MemoryLimitError | None:
    """``exc`` told as the limit's refusal, with what to do; None if it is not one (another
    error, or an allocation the limit had room for: the machine itself is out of memory)."""
    if not isinstance(exc, MemoryError) and not (
            isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)):
        return None
    import resource

    asked = _ALLOCATION.search(str(exc))
    status = memory_status()
    if asked and status is not None:
        room = resource.getrlimit(resource.RLIMIT_DATA)[0] - status["VmData"]
        if int(asked.group(1)) <= room:
            return None
    size = f"{format_size(int(asked.group(1)))} more" if asked else "more memory"
    holds = "" if status is None else f" (it holds {format_size(status['VmRSS'] - status['RssShmem'])})"
    error = MemoryLimitError(
        f"worker {name!r} cannot allocate {size}: that would pass its memory_limit of {format_size(limit)}"
        f"{holds}. The op failed and stored nothing; the worker keeps running, with its objects. Free some "
        f"(del their pointers, or .get() them), or raise [workers.{name}] memory_limit in the config"
    )
    error.__cause__ = exc  # the remote traceback shows where torch gave up
    return error
