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

import os
import random
import secrets
import threading
import weakref
from typing import Any

import numpy
import torch

from . import shm
from ..errors import ProtocolError
from .shm import BUSY, FREE, HEADER, SHM_DIR, Segment, intact, segment_prefix

__all__ = [
    "IDLE_MAX", "IN_FLIGHT", "abandon", "acquire", "arm", "close", "handover", "lost", "open_segment", "receive",
    "received", "receiving", "reclaim", "segment_of", "sending", "sent", "settle", "stats", "sweep", "take_back",
]

# Idle bytes this process keeps (its own FREE segments, and mappings of others' it holds no
# tensor in) before unlinking/unmapping the least recently used. SIMSYFT_POOL_BYTES overrides.
IDLE_MAX = int(os.environ.get("SIMSYFT_POOL_BYTES", 2 << 30))
_lock = threading.RLock()  # finalizers can run on any thread (GC)


# path -> Segment, least recently used first; per process, all namespaces
_MAPPED: dict[str, Segment] = {}
# address of a tensor's data -> the live export of a segment at that address: [segment, given, live].
# `given`: releasing the tensor does not free the segment (handed on, or a receipt still pending).
_EXPORTS: dict[int, list] = {}


class _PerThread(threading.local):
    claims: list | None = None  # (segment, ticket, export) received by the message handled on this thread
    sent: list | None = None  # (segment, ticket) armed by the message encoded on this thread
    shm_bytes: int = 0  # tensor bytes sent or received through segments on this thread (links count them)


# The receipt and the record of armed segments of the message in progress on each thread. The
# connection and the worker set them inline (`receiving`/`sending` say how): a call costs more.
IN_FLIGHT = _thread = _PerThread()


# Tickets only need to differ from one transfer to the next (anyone who can read the header
# can read the ticket), so a seeded PRNG serves: 0.06 us against 0.65 for `secrets`.
_tickets = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _tickets.seed(secrets.randbits(128)))


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
    seg = shm.create(namespace, nbytes)
    with _lock:
        _MAPPED[seg.path] = seg
        _trim()
    return seg


def _capacity(seg: Segment) -> int:
    return seg.capacity


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
    shm.check_name(path, namespace)
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
    seg = shm.map_file(path, capacity)
    _MAPPED[path] = seg
    return seg  # the caller trims: only once it holds the new segment (or need not keep it)


def receive(path: Any, capacity: Any, nbytes: int, ticket: Any, namespace: str) -> torch.Tensor:
    """A flat uint8 tensor over the segment a descriptor names (no copy), if it was handed to us.

    Refuses (ProtocolError) a segment of another simulation, an unsafe file, or a ticket that is
    not the one in the header: Note [Segment ownership]. Releasing the tensor's memory frees
    the segment (inside `receiving`, once the message is settled).
    """
    shm.check_name(path, namespace)
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
        _thread.shm_bytes += nbytes
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


def sweep(namespace: str) -> int:
    """Remove every segment of the simulation `namespace`; returns how many names were removed.

    Also drops this process's mappings of them (tensors over them keep their memory).
    """
    removed = close(namespace)
    prefix = segment_prefix(namespace)
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
