"""Shared-memory segments that are faulted in once, kept mapped, and reused.

Owns the segments behind large tensors (sharing.py describes tensors; this
module only hands out memory). Imports torch, numpy and simsyft.errors.

Note [Segment ownership]
    A segment is a file ``/dev/shm/simsyft_<namespace>_<pid>_<n>`` whose first
    64 bytes are a header (one state word) and the rest tensor data. Its
    creator pre-faults it once; every process that sees it keeps its mapping
    (an mmap) for as long as the pool's budget allows, so reusing a segment
    costs neither page faults nor a new mapping, only the copy itself.

    At any moment one party holds a segment's data. The sender marks it BUSY,
    writes, and sends the name; the receiver's tensor is built over the
    mapping, without a copy. When that tensor's memory is released (a numpy
    array carries the release, through weakref.finalize), the holder marks the
    segment FREE. Only the creator reuses its segments, and only FREE ones.
    A holder can also hand its segment on instead of copying (`handover`): the
    worker does so on `get()` when nothing else on it shares the memory, which
    makes the `get` of a tensor it received, or computed into a segment, free.

    Names stay in /dev/shm while pooled. `close(namespace)` removes this
    process's, and the simulation's `sweep(namespace)` at shutdown (or a
    worker's, after a kill -9 of its owner) removes everyone's.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import re
import threading
import weakref
from typing import Any

import numpy
import torch

from .errors import ProtocolError

__all__ = ["HEADER", "Segment", "acquire", "close", "handover", "lost", "open_segment", "segment_prefix", "stats", "take_back", "tensor_over"]

HEADER = 64  # bytes before the data: one state word, and 64-byte aligned data
FREE, BUSY = 0, 1
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.sep, "tmp")
SEGMENT_RE = re.compile(r"simsyft_[A-Za-z0-9_-]*_\d+_\d+")
# Idle bytes this process keeps (its own FREE segments, and mappings of others' it holds no
# tensor in) before unlinking/unmapping the least recently used. SIMSYFT_POOL_BYTES overrides.
IDLE_MAX = int(os.environ.get("SIMSYFT_POOL_BYTES", 2 << 30))
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; pre-faults a range in one call
_counter = itertools.count()
_lock = threading.RLock()  # finalizers can run on any thread (GC)


class Segment:
    __slots__ = ("path", "capacity", "mm", "state", "mine", "uses", "__weakref__")

    def __init__(self, path: str, capacity: int, mm: mmap.mmap, mine: bool) -> None:
        self.path = path
        self.capacity = capacity
        self.mm = mm
        self.state = ctypes.c_uint32.from_buffer(mm)  # the header word, shared by every mapping
        self.mine = mine
        self.uses = 0  # tensors of this process over the segment

    def close(self) -> None:
        del self.state
        try:
            self.mm.close()
        except BufferError:
            pass  # a tensor still uses the mapping: it goes when that tensor does


# path -> Segment, least recently used first; per process, all namespaces
_MAPPED: dict[str, Segment] = {}
# address of a tensor's data -> the live export of a segment at that address: [segment, given]
_EXPORTS: dict[int, list] = {}


def segment_prefix(namespace: str) -> str:
    """File-name prefix shared by every segment of one simulation."""
    return f"simsyft_{namespace}_"


def size_class(nbytes: int) -> int:
    """Capacity for `nbytes`: rounded up to 1/8 of its power of two (page multiple)."""
    step = max(4096, 1 << max(nbytes.bit_length() - 4, 0))
    return -(-nbytes // step) * step


def acquire(namespace: str, nbytes: int) -> Segment:
    """A segment of ours, BUSY, with room for `nbytes`: a FREE one if any fits, else a new one."""
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace))
    with _lock:
        best = None
        for seg in _MAPPED.values():
            if (seg.mine and seg.uses == 0 and nbytes <= seg.capacity <= 2 * nbytes + 65536
                    and seg.path.startswith(prefix) and seg.state.value == FREE
                    and (best is None or seg.capacity < best.capacity)):
                best = seg
        if best is not None:
            best.state.value = BUSY
            _touch(best)
            return best
    capacity = size_class(nbytes)
    path = f"{prefix}{os.getpid()}_{next(_counter)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, HEADER + capacity)
        mm = mmap.mmap(fd, HEADER + capacity)
    finally:
        os.close(fd)
    try:
        mm.madvise(_MADV_POPULATE_WRITE)  # fault every page in now, in one call, not one by one later
    except (OSError, ValueError):
        pass  # older kernel: pages fault in on first use instead
    seg = Segment(path, capacity, mm, mine=True)
    seg.state.value = BUSY
    with _lock:
        _MAPPED[path] = seg
        _trim()
    return seg


def write(seg: Segment, raw: torch.Tensor) -> None:
    """Copy the bytes of a flat uint8 tensor into the segment's data area."""
    dst = torch.frombuffer(seg.mm, dtype=torch.uint8, count=raw.numel(), offset=HEADER)
    dst.copy_(raw)


def open_segment(path: Any, capacity: Any, nbytes: int) -> Segment:
    """The segment a descriptor names, mapped once per process (cached)."""
    seg = _MAPPED.get(path) if isinstance(path, str) else None
    if seg is not None:
        if seg.capacity != capacity or nbytes > capacity:
            raise ProtocolError(f"segment {path} has room for {seg.capacity} bytes, the descriptor says "
                                f"{capacity!r} and the tensor needs {nbytes}")
        with _lock:
            _touch(seg)
        return seg
    # Only our own segment names are ever opened: a peer must not make us map an arbitrary file.
    if not isinstance(path, str) or os.path.dirname(path) != SHM_DIR or not SEGMENT_RE.fullmatch(os.path.basename(path)):
        raise ProtocolError(f"refusing shared-memory path {path!r:.200}: not a simsyft segment")
    if type(capacity) is not int or not 0 < nbytes <= capacity:
        raise ProtocolError(f"segment {path} holds {capacity!r} bytes, the tensor needs {nbytes}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ProtocolError(f"shared-memory segment {path} does not exist (swept, or its simulation ended)") from None
    try:
        size = os.fstat(fd).st_size
        if size != HEADER + capacity:
            raise ProtocolError(f"segment {path} has {size} bytes, its descriptor says {HEADER + capacity}")
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    seg = Segment(path, capacity, mm, mine=False)
    with _lock:
        _MAPPED[path] = seg
        _trim()
    return seg


def tensor_over(seg: Segment, nbytes: int) -> torch.Tensor:
    """A flat uint8 tensor over the segment's data, no copy; releasing its memory frees the segment."""
    array = numpy.frombuffer(seg.mm, dtype=numpy.uint8, count=nbytes, offset=HEADER)
    flat = torch.from_numpy(array)  # keeps `array` alive exactly as long as the storage
    export = [seg, False]
    with _lock:
        seg.uses += 1
        _EXPORTS[flat.data_ptr()] = export
    weakref.finalize(array, _release, export, flat.data_ptr())
    return flat


def _release(export: list, address: int) -> None:
    seg, given = export
    with _lock:
        seg.uses -= 1
        if _EXPORTS.get(address) is export:
            del _EXPORTS[address]
        if not given:  # Note [Segment ownership]: the holder frees it; a handed-on one is someone else's
            try:
                seg.state.value = FREE
            except (AttributeError, ValueError):
                pass  # this process closed the pool meanwhile
        _trim()


def handover(tensor: torch.Tensor) -> list | None:
    """Give away `tensor`'s segment instead of copying it; None if it cannot be.

    Only when the tensor is a plain, contiguous view of a whole export from offset 0 and no
    other tensor shares its memory. Returns [path, capacity, nbytes, export, address]; the
    caller drops the tensor right after, and calls `take_back` if it turns out to be alive
    elsewhere (autograd may have saved it for a backward pass).
    """
    address = tensor.data_ptr()
    export = _EXPORTS.get(address)
    if export is None or export[1] or tensor.storage_offset() != 0 or not tensor.is_contiguous():
        return None
    if tensor.is_conj() or tensor.is_neg() or tensor._is_zerotensor():
        return None
    storage = tensor.untyped_storage()
    nbytes = tensor.numel() * tensor.element_size()
    # 2 = this tensor's storage + the `storage` handle just taken: no other tensor shares it.
    if storage.nbytes() != nbytes or torch._C._storage_Use_Count(storage._cdata) != 2:
        return None
    seg = export[0]
    with _lock:
        export[1] = True  # from now on, releasing our tensor does not free the segment
        seg.state.value = BUSY
        del _EXPORTS[address]
    return [seg.path, seg.capacity, nbytes, export, address]


def take_back(given: list) -> None:
    """Undo `handover`: our tensor lives on, so the segment stays ours."""
    _, _, _, export, address = given
    with _lock:
        export[1] = False
        _EXPORTS[address] = export


def _touch(seg: Segment) -> None:
    _MAPPED[seg.path] = _MAPPED.pop(seg.path)  # most recently used last


def _trim() -> None:
    """Unlink (ours) or unmap (others') idle segments beyond IDLE_MAX, least recently used first."""
    idle = [seg for seg in _MAPPED.values() if seg.uses == 0 and (not seg.mine or seg.state.value == FREE)]
    total = sum(seg.capacity for seg in idle)
    for seg in idle:
        if total <= IDLE_MAX:
            break
        total -= seg.capacity
        _forget(seg)


def _forget(seg: Segment) -> int:
    _MAPPED.pop(seg.path, None)
    removed = 0
    if seg.mine:
        try:
            os.unlink(seg.path)
            removed = 1
        except FileNotFoundError:
            pass
    seg.close()
    return removed


def close(namespace: str) -> int:
    """Forget every segment of `namespace`: unlink ours, unmap all (live tensors keep their memory).

    Returns how many names this unlinked.
    """
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace))
    removed = 0
    with _lock:
        for seg in [s for s in _MAPPED.values() if s.path.startswith(prefix)]:
            removed += _forget(seg)
    return removed


def lost(namespace: str) -> list[str]:
    """Names of segments this process knows that are BUSY yet used by none of its tensors.

    Between a test's steps, with every worker's store emptied, that is a leak: a segment sent
    or handed on that no one received, or a release that never ran.
    """
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace))
    with _lock:
        return sorted(os.path.basename(s.path) for s in _MAPPED.values()
                      if s.path.startswith(prefix) and s.uses == 0 and s.state.value == BUSY)


def stats(namespace: str | None = None) -> dict[str, int]:
    """Segments mapped by this process (of one simulation, or all): counts and bytes, for tests and bench."""
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace)) if namespace else ""
    with _lock:
        segs = [s for s in _MAPPED.values() if s.path.startswith(prefix)]
        return {
            "mapped": len(segs),
            "mine": sum(s.mine for s in segs),
            "in_use": sum(s.uses > 0 for s in segs),
            "bytes": sum(s.capacity for s in segs),
        }
