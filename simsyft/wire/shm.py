"""One shared-memory segment file: its name, creation, mapping, safety checks and header.

Owns the file-level facts of Note [Segment ownership] (segments.py): the name
``simsyft_<namespace>_<creator pid>_<64 random bits>``, creation with O_EXCL
(a taken name draws another), the checks made on the opened file before it is
mapped (no symbolic link, a regular file of this uid, no group or other bits,
exactly header + capacity bytes), the 64-byte header (a state word and a
ticket), and `intact`, the size check before a mapping is touched. The
per-process pool built on these files lives in segments.py. Imports torch and
simsyft.errors only.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import secrets
import stat
from typing import Any

import torch

from ..errors import ProtocolError

__all__ = ["BUSY", "FREE", "HEADER", "SEGMENT_RE", "SHM_DIR", "Segment", "check_name", "create", "intact",
           "list_segments", "map_file", "raise_fd_limit", "segment_prefix", "size_class", "write"]

HEADER = 64  # bytes before the data: the state word, the ticket, and 64-byte aligned data
FREE, BUSY = 0, 1
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.sep, "tmp")
# simsyft_<namespace>_<creator pid>_<64 random bits>. The sweep of dead simulations and the tests'
# leak check read the namespace's owner pid and the creator pid from the front.
SEGMENT_RE = re.compile(r"simsyft_(?P<namespace>[A-Za-z0-9-]*)_(?P<pid>\d+)_(?P<token>[0-9a-f]{16})")
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; pre-faults a range in one call
_NAME_TRIES = 64  # random names drawn before giving up: only a broken random source gets near it
_TAIL_RE = re.compile(r"\d+_[0-9a-f]{16}")  # what follows a namespace's prefix in a segment's name


class Segment:
    __slots__ = ("path", "capacity", "mm", "state", "ticket", "mine", "uses", "broken", "__weakref__")

    def __init__(self, path: str, capacity: int, mm: mmap.mmap, mine: bool) -> None:
        self.path = path
        self.capacity = capacity
        self.mm = mm  # keeps a descriptor of its own on the file: mm.size() is an fstat of it
        self.state = ctypes.c_uint32.from_buffer(mm)  # the header's words, shared by every mapping
        self.ticket = ctypes.c_uint64.from_buffer(mm, 8)
        self.mine = mine
        self.uses = 0  # tensors of this process over the segment (and receipts in progress)
        self.broken = False  # its file shrank: never read or write the mapping again

    def close(self) -> None:
        del self.state, self.ticket
        try:
            self.mm.close()
        except BufferError:
            pass  # a tensor still uses the mapping: it goes when that tensor does


def _token() -> str:
    return secrets.token_hex(8)  # names must be unguessable: someone else could pre-create them


def segment_prefix(namespace: str) -> str:
    """File-name prefix shared by every segment of one simulation."""
    return f"simsyft_{namespace}_"


def size_class(nbytes: int) -> int:
    """Capacity for `nbytes`: rounded up to 1/8 of its power of two (page multiple)."""
    step = max(4096, 1 << max(nbytes.bit_length() - 4, 0))
    return -(-nbytes // step) * step


def intact(seg: Segment) -> bool:
    """Whether the segment's file still has the size it was mapped with.

    Touching a page past the end of a shrunk file raises SIGBUS, which would kill the process:
    this is checked before a header or a stored tensor is read: an fstat through the descriptor
    the mapping keeps (0.5 us; a few with the caches cold from a copy). A segment found shrunk
    stays broken.
    """
    if seg.broken:
        return False
    try:
        if seg.mm.size() == HEADER + seg.capacity:
            return True
    except (ValueError, OSError):
        pass  # unmapped: this process closed the pool
    seg.broken = True
    return False


def raise_fd_limit() -> None:
    """Let this process (a worker) open as many descriptors as it may: each mapping keeps one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # not allowed here: the soft limit stays


def create(namespace: str, nbytes: int) -> Segment:
    """A new segment of ours with room for `nbytes`, pre-faulted, BUSY, under a fresh random name."""
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace))
    capacity = size_class(nbytes)
    size = HEADER + capacity
    for _ in range(_NAME_TRIES):
        path = f"{prefix}{os.getpid()}_{_token()}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue  # taken, by chance or by someone who guessed: draw another name
    else:
        raise FileExistsError(errno.EEXIST, f"no unused shared-memory segment name in {SHM_DIR} after "
                              f"{_NAME_TRIES} random draws")
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)  # the mapping keeps a descriptor of its own
    try:
        mm.madvise(_MADV_POPULATE_WRITE)  # fault every page in now, in one call, not one by one later
    except ValueError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EFAULT, errno.ENOMEM, errno.ENOSPC):
            # /dev/shm is full: writing the pages would raise SIGBUS. Fail the transfer instead.
            mm.close()
            os.unlink(path)
            raise OSError(errno.ENOSPC, f"no room in {SHM_DIR} for a {size}-byte shared-memory segment; "
                          f"free some objects, or give {SHM_DIR} more space") from None
        # EINVAL (kernel < 5.14): pages fault in on first use instead
    seg = Segment(path, capacity, mm, mine=True)
    seg.state.value = BUSY
    return seg


def write(seg: Segment, raw: torch.Tensor) -> None:
    """Copy the bytes of a flat uint8 tensor into the segment's data area."""
    dst = torch.frombuffer(seg.mm, dtype=torch.uint8, count=raw.numel(), offset=HEADER)
    dst.copy_(raw)


def check_name(path: Any, namespace: str) -> None:
    # Only segment names are ever opened: a peer must not make us map an arbitrary file, nor a
    # segment of another simulation (which that simulation's creator would reuse under our tensor).
    prefix = f"{SHM_DIR}/simsyft_{namespace}_"
    if type(path) is str and path.startswith(prefix) and _TAIL_RE.fullmatch(path, len(prefix)):
        return  # the usual case, in 0.3 us; the rest only says why a path is refused
    match = SEGMENT_RE.fullmatch(os.path.basename(path)) if isinstance(path, str) else None
    if match is None or os.path.dirname(path) != SHM_DIR:
        raise ProtocolError(f"refusing shared-memory path {path!r:.200}: not a simsyft segment")
    if match["namespace"] != namespace:
        raise ProtocolError(f"refusing shared-memory segment {path}: it belongs to simulation "
                            f"{match['namespace']!r}, not to this one ({namespace!r})")


def map_file(path: str, capacity: int) -> Segment:
    try:
        # O_NOFOLLOW: no symbolic link; O_NONBLOCK: a FIFO planted under the name cannot block us.
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ProtocolError(f"shared-memory segment {path} does not exist (swept, or its simulation ended)") from None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise ProtocolError(f"refusing shared-memory segment {path}: {why}") from None
    try:
        info = os.fstat(fd)  # on the fd we map, so the file cannot change between check and mmap
        problem = _unsafe(info, HEADER + capacity)
        if problem:
            raise ProtocolError(f"refusing shared-memory segment {path}: {problem}")
        mm = mmap.mmap(fd, info.st_size)
    finally:
        os.close(fd)  # the mapping keeps a descriptor of its own
    return Segment(path, capacity, mm, mine=False)


def _unsafe(info: os.stat_result, size: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if info.st_mode & 0o077:
        return f"its mode {stat.S_IMODE(info.st_mode):o} lets other users read or write it"
    if info.st_size != size:
        return f"it has {info.st_size} bytes, its descriptor says {size} (resized by another process?)"
    return None


def list_segments(namespace: str | None = None) -> list[str]:
    """Names of live simsyft segments (of one simulation, or all)."""
    prefix = segment_prefix(namespace) if namespace else "simsyft_"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except OSError:
        return []
