"""Shared-memory segments that are faulted in once, kept mapped, and reused.

Owns the segments behind large tensors (sharing.py describes tensors; this
module only hands out memory). Imports torch, numpy and simsyft.errors.

Note [Segment ownership]
    A segment is a file ``/dev/shm/simsyft_<namespace>_<pid>_<random>``: the
    simulation's namespace (``<owner pid>-<hex>``), the creator's pid, and 64
    bits from `secrets`, so no one can pre-create the name of our next segment
    (a name that is taken anyway, by chance or not, just makes the creator draw
    another). Its first 64 bytes are a header (a state word and a ticket), the
    rest tensor data. Its creator pre-faults it once; every process that sees
    it keeps its mapping (an mmap) for as long as the pool's budget allows, so
    reusing a segment costs neither page faults nor a new mapping, only the
    copy itself.

    At any moment one party holds a segment's data. The sender marks it BUSY,
    writes, puts a fresh random ticket in the header and sends the name with
    that ticket; the receiver's tensor is built over the mapping, without a
    copy, only if the ticket matches, and the receiver clears it. A descriptor
    is thus good for one receipt: a replayed or forged one is refused instead
    of leaving two holders of one segment (whose creator would then reuse
    memory a tensor still lives in). The ticket is no secret (any process of
    this user can read the header): it stops replays and mistakes through the
    protocol, not a hostile process of the same user. When the tensor's
    memory is released (a numpy array carries the release, through
    weakref.finalize), the holder marks the segment FREE. Only the creator reuses its segments, and only
    FREE ones. A holder can also hand its segment on instead of copying
    (`handover`, with a new ticket): the worker does so on `get()` when nothing
    else on it shares the memory, which makes the `get` of a tensor it
    received, or computed into a segment, free.

    Idle segments beyond IDLE_MAX are unlinked (ours) or unmapped (others').
    A segment sent is BUSY and one being received is pinned (`uses`) from
    before its mapping is used, so neither is ever idle, however large.

    A receipt can be undone. While one message is decoded and handled
    (`receiving` ... `received`), what it received is pending: if it fails,
    the tickets are re-armed and our tensors over those segments no longer free
    them, so each segment is exactly as it was sent. The sender can then take
    back what no one received (`reclaim`: a Store the worker refused), the
    source of a failed `move()` can re-import its segment, and a client that
    could not take a `get()` reply hands it back to the worker (Restore).

    A receiver maps only segments of its own simulation (the name's namespace)
    and checks the file on the opened fd before mapping it: no symbolic link
    (O_NOFOLLOW), a regular file, owned by this uid, no group or other
    permission bits, exactly header + capacity bytes. A file someone shrinks
    after it was mapped raises SIGBUS on access, so its size is checked again
    (`intact`: an fstat through the mapping's own fd) before a header or a
    stored tensor is read; a shrunk segment is never touched again.

    Names stay in /dev/shm while pooled. `close(namespace)` removes this
    process's, and the simulation's `sweep(namespace)` at shutdown (or a
    worker's, after a kill -9 of its owner) removes everyone's.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import re
import secrets
import stat
import threading
import weakref
from typing import Any

import numpy
import torch

from ..errors import ProtocolError

__all__ = [
    "HEADER", "IN_FLIGHT", "SEGMENT_RE", "Segment", "abandon", "acquire", "arm", "close", "handover", "intact", "lost",
    "open_segment", "raise_fd_limit", "receive", "received", "receiving", "reclaim", "segment_of", "segment_prefix",
    "sending", "sent", "settle", "stats", "take_back",
]

HEADER = 64  # bytes before the data: the state word, the ticket, and 64-byte aligned data
FREE, BUSY = 0, 1
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.sep, "tmp")
# simsyft_<namespace>_<creator pid>_<64 random bits>. simulation._SHM_RE (sweep of dead simulations)
# and the tests' leak check read the namespace's owner pid and the creator pid from the front.
SEGMENT_RE = re.compile(r"simsyft_(?P<namespace>[A-Za-z0-9-]*)_(?P<pid>\d+)_(?P<token>[0-9a-f]{16})")
# Idle bytes this process keeps (its own FREE segments, and mappings of others' it holds no
# tensor in) before unlinking/unmapping the least recently used. SIMSYFT_POOL_BYTES overrides.
IDLE_MAX = int(os.environ.get("SIMSYFT_POOL_BYTES", 2 << 30))
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; pre-faults a range in one call
_NAME_TRIES = 64  # random names drawn before giving up: only a broken random source gets near it
_TAIL_RE = re.compile(r"\d+_[0-9a-f]{16}")  # what follows a namespace's prefix in a segment's name
_lock = threading.RLock()  # finalizers can run on any thread (GC)


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


# path -> Segment, least recently used first; per process, all namespaces
_MAPPED: dict[str, Segment] = {}
# address of a tensor's data -> the live export of a segment at that address: [segment, given, live].
# `given`: releasing the tensor does not free the segment (handed on, or a receipt still pending).
_EXPORTS: dict[int, list] = {}


class _PerThread(threading.local):
    claims: list | None = None  # (segment, ticket, export) received by the message handled on this thread
    sent: list | None = None  # (segment, ticket) armed by the message encoded on this thread


# The receipt and the record of armed segments of the message in progress on each thread. The
# connection and the worker set them inline (`receiving`/`sending` say how): a call costs more.
IN_FLIGHT = _thread = _PerThread()


def _token() -> str:
    return secrets.token_hex(8)  # names must be unguessable: someone else could pre-create them


# Tickets only need to differ from one transfer to the next (anyone who can read the header
# can read the ticket), so a seeded PRNG serves: 0.06 us against 0.65 for `secrets`.
_tickets = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _tickets.seed(secrets.randbits(128)))


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


def acquire(namespace: str, nbytes: int) -> Segment:
    """A segment of ours, BUSY, with room for `nbytes`: a FREE one if any fits, else a new one."""
    prefix = os.path.join(SHM_DIR, segment_prefix(namespace))
    with _lock:
        fits = [seg for seg in _MAPPED.values()
                if seg.mine and seg.uses == 0 and nbytes <= seg.capacity <= 2 * nbytes + 65536
                and seg.path.startswith(prefix)]
        fits.sort(key=_capacity)
        for seg in fits:
            if intact(seg) and seg.state.value == FREE:
                seg.state.value = BUSY
                _touch(seg)
                return seg
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
    with _lock:
        _MAPPED[path] = seg
        _trim()
    return seg


def _capacity(seg: Segment) -> int:
    return seg.capacity


def write(seg: Segment, raw: torch.Tensor) -> None:
    """Copy the bytes of a flat uint8 tensor into the segment's data area."""
    dst = torch.frombuffer(seg.mm, dtype=torch.uint8, count=raw.numel(), offset=HEADER)
    dst.copy_(raw)


def arm(seg: Segment) -> int:
    """Give the segment's contents a fresh ticket, for the descriptor that sends them."""
    ticket = _tickets.getrandbits(64) or 1
    seg.ticket.value = ticket
    sent = _thread.sent
    if sent is not None:
        sent.append((seg, ticket))
    return ticket


def open_segment(path: Any, capacity: int, namespace: str) -> Segment:
    """The segment `path` names, mapped once per process (cached), if it may be mapped at all.

    Only a segment of simulation `namespace`, and only a file that passes the checks of
    Note [Segment ownership]; anything else is a ProtocolError and is never mapped.
    """
    _check_name(path, namespace)
    with _lock:
        return _open(path, capacity)


def _open(path: str, capacity: int) -> Segment:
    seg = _MAPPED.get(path)
    if seg is not None:
        if seg.capacity != capacity:
            raise ProtocolError(f"segment {path} has room for {seg.capacity} bytes, the descriptor says {capacity!r}")
        if intact(seg):
            _touch(seg)
            return seg
        _forget(seg)  # shrunk since we mapped it: mapping it afresh refuses it, saying why
    seg = _map(path, capacity)
    _MAPPED[path] = seg
    return seg  # the caller trims: only once it holds the new segment (or need not keep it)


def _check_name(path: Any, namespace: str) -> None:
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


def _map(path: str, capacity: int) -> Segment:
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


def receive(path: Any, capacity: Any, nbytes: int, ticket: Any, namespace: str) -> torch.Tensor:
    """A flat uint8 tensor over the segment a descriptor names (no copy), if it was handed to us.

    Refuses (ProtocolError) a segment of another simulation, an unsafe file, or a ticket that is
    not the one in the header: Note [Segment ownership]. Releasing the tensor's memory frees
    the segment (inside `receiving`, once the message is settled).
    """
    _check_name(path, namespace)
    if type(capacity) is not int or not 0 < nbytes <= capacity:
        raise ProtocolError(f"segment {path} holds {capacity!r} bytes, the tensor needs {nbytes}")
    if type(ticket) is not int:
        raise ProtocolError(f"segment {path}: malformed ticket {ticket!r:.40}")
    with _lock:
        mapped = len(_MAPPED)
        seg = _open(path, capacity)
        if not ticket or seg.ticket.value != ticket:
            raise ProtocolError(f"segment {path} was not handed to this process: its ticket does not match "
                                "(a replayed or forged descriptor, or one already received)")
        seg.uses += 1  # pinned: _trim never drops a segment in use, nor one being received
        try:
            array = numpy.frombuffer(seg.mm, dtype=numpy.uint8, count=nbytes, offset=HEADER)
            flat = torch.from_numpy(array)  # keeps `array` alive exactly as long as the storage
        except BaseException:
            seg.uses -= 1
            raise
        seg.ticket.value = 0  # received: the same descriptor is refused from now on
        claims = _thread.claims
        export = [seg, claims is not None, True]
        address = flat.data_ptr()
        _EXPORTS[address] = export
        if claims is not None:
            claims.append((seg, ticket, export))
        weakref.finalize(array, _release, export, address)
        if len(_MAPPED) > mapped:
            _trim()  # a new mapping: now pinned, so the budget cannot drop it
    return flat


def receiving() -> Any:
    """Start a receipt on this thread: what is received stays pending until `received(mark, ok)`.

    Inline, as the worker and the connection do it for every message:
    ``mark = IN_FLIGHT.claims; IN_FLIGHT.claims = claims = []`` ... ``IN_FLIGHT.claims = mark;
    if claims: settle(claims, ok)``.
    """
    mark = _thread.claims
    _thread.claims = []
    return mark


def received(mark: Any, ok: bool = True) -> None:
    """End the receipt `receiving` started: `settle` what it received."""
    claims = _thread.claims
    _thread.claims = mark
    if claims:
        settle(claims, ok)


def settle(claims: list, ok: bool) -> None:
    """End a receipt. `ok`: what it received is ours. Otherwise undo it: re-arm the tickets and
    let no tensor of ours over those segments free them, so each is exactly as it was sent
    (Note [Segment ownership])."""
    with _lock:
        for seg, ticket, export in claims:
            if ok:
                export[1] = False  # ours: releasing our tensor frees the segment
                if not export[2] and intact(seg):
                    seg.state.value = FREE  # our tensor was released while the receipt was pending
            elif intact(seg):
                seg.ticket.value = ticket


def sending() -> Any:
    """Start recording the segments armed on this thread (one message's encode).

    Inline: ``mark = IN_FLIGHT.sent; IN_FLIGHT.sent = armed = []`` ... ``IN_FLIGHT.sent = mark``.
    """
    mark = _thread.sent
    _thread.sent = []
    return mark


def sent(mark: Any) -> list:
    """Stop recording; the (segment, ticket) pairs armed since `sending`."""
    armed = _thread.sent
    _thread.sent = mark
    return armed


def reclaim(armed: list) -> None:
    """Free the segments we sent that no one received: their ticket is still the one we sent.

    Call only once the receiver is done with the message (it answered a later one).
    """
    with _lock:
        for seg, ticket in armed:
            if intact(seg) and seg.ticket.value == ticket:
                seg.ticket.value = 0
                seg.state.value = FREE


def abandon(seg: Segment) -> None:
    """A segment we acquired (and maybe armed) but will not send after all: FREE again."""
    with _lock:
        if intact(seg):
            seg.ticket.value = 0
            seg.state.value = FREE


def segment_of(tensor: torch.Tensor) -> Segment | None:
    """The segment `tensor`'s memory lies in, if this process received it over one."""
    try:
        export = _EXPORTS.get(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None  # no plain storage (sparse, nested): not over a segment
    return None if export is None else export[0]


def _release(export: list, address: int) -> None:
    seg = export[0]
    with _lock:
        seg.uses -= 1
        export[2] = False
        if _EXPORTS.get(address) is export:
            del _EXPORTS[address]
        # Note [Segment ownership]: the holder frees it; a handed-on one is someone else's, and a
        # pending receipt's is decided when it ends. A shrunk header cannot be written at all.
        if not export[1] and intact(seg):
            try:
                seg.state.value = FREE
            except AttributeError:
                pass  # this process closed the pool meanwhile
        _trim()


def handover(tensor: torch.Tensor) -> list | None:
    """Give away `tensor`'s segment instead of copying it; None if it cannot be.

    Only when the tensor is a plain, contiguous view of a whole export from offset 0 and no
    other tensor shares its memory. Returns [path, capacity, nbytes, export, address, ticket];
    the caller drops the tensor right after, and calls `take_back` if it turns out to be alive
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
        # No `intact` here: the worker checked this tensor's segment when it resolved the object.
        export[1] = True  # from now on, releasing our tensor does not free the segment
        seg.state.value = BUSY
        del _EXPORTS[address]
        ticket = arm(seg)
    return [seg.path, seg.capacity, nbytes, export, address, ticket]


def take_back(given: list) -> None:
    """Undo `handover`: our tensor lives on, so the segment stays ours (and its ticket unsent)."""
    _, _, _, export, address, _ = given
    with _lock:
        export[1] = False
        _EXPORTS[address] = export
        if intact(export[0]):
            export[0].ticket.value = 0


def _touch(seg: Segment) -> None:
    _MAPPED[seg.path] = _MAPPED.pop(seg.path)  # most recently used last


def _trim() -> None:
    """Unlink (ours) or unmap (others') idle segments beyond IDLE_MAX, least recently used first.

    Idle: no tensor of ours over it (`uses`, which also pins a segment being received, however
    large) and, if ours, FREE (or broken). Headers are read only when the budget may be exceeded.
    """
    unused = [seg for seg in _MAPPED.values() if seg.uses == 0]
    if sum(seg.capacity for seg in unused) <= IDLE_MAX:
        return
    idle = [seg for seg in unused if not seg.mine or not intact(seg) or seg.state.value == FREE]
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
                      if s.path.startswith(prefix) and s.uses == 0 and intact(s) and s.state.value == BUSY)


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
