"""Segment hardening (segments.py, Note [Segment ownership]): names no one can pre-create, receivers that
open only their own simulation's safe files, one-use tickets, receipts that can be undone, a budget
that never drops a segment being received, and failed transfers that leave everything where it was.

No processes here: the receiving side is this process, over files planted the way another
process (or another user) would leave them. tests/e2e/test_segments.py runs the same with workers.
"""

from __future__ import annotations

import gc
import os
import re
import secrets
import uuid

import pytest
import torch

from simsyft import rundir

from simsyft.wire import messages, segments, shm, tensors
from simsyft.errors import ObjectNotFoundError, ProtocolError, WorkerCrashedError
from simsyft.wire.messages import Ref
from simsyft.testing import in_process_worker

BIG = tensors.INLINE_MAX // 4 + 100  # float32 elements: just over the inline limit, so a segment


def new_namespace() -> str:
    return f"{os.getpid()}-test{uuid.uuid4().hex}"


@pytest.fixture
def ns():
    """A namespace of this test's own; the test must leave no segment of it behind."""
    namespace = new_namespace()
    yield namespace
    gc.collect()
    segments.close(namespace)
    leftover = shm.list_segments(namespace)
    segments.sweep(namespace)
    assert leftover == [], f"test left shared-memory segments behind: {leftover}"


def big(seed: int = 0) -> torch.Tensor:
    return torch.arange(BIG, dtype=torch.float32) + seed


def path_of(desc: tuple) -> str:
    return desc[3][1]


def plant(namespace: str, capacity: int = 8192, *, size: int | None = None, mode: int = 0o600,
          ticket: int = 77, fill: int = 5) -> str:
    """A segment file another process of `namespace` could have made (not mapped by this one)."""
    path = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(namespace)}{os.getpid() + 1}_{secrets.token_hex(8)}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        header = bytearray(shm.HEADER)
        header[0:4] = shm.BUSY.to_bytes(4, "little")
        header[8:16] = ticket.to_bytes(8, "little")
        os.write(fd, bytes(header) + bytes([fill]) * capacity)
        if size is not None:
            os.ftruncate(fd, size)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def desc_for(path: str, nbytes: int = 8192, capacity: int = 8192, ticket: int = 77) -> tuple:
    return ("uint8", (nbytes,), False, ("s", path, capacity, ticket), None)


# -- names ---------------------------------------------------------------------

def test_names_carry_an_unguessable_part(ns):
    descs = [tensors.encode_tensor(big(i), [], ns) for i in range(3)]
    names = [os.path.basename(path_of(d)) for d in descs]
    for name in names:
        match = shm.SEGMENT_RE.fullmatch(name)
        assert match, name
        assert match["namespace"] == ns and match["pid"] == str(os.getpid())
        assert re.fullmatch(r"[0-9a-f]{16}", match["token"])
        assert name.startswith(f"simsyft_{ns}_{os.getpid()}_")  # the sweep and the leak check rely on it
    assert len({shm.SEGMENT_RE.fullmatch(n)["token"] for n in names}) == 3
    sim_ns = f"{os.getpid()}-{secrets.token_hex(4)}"  # a simulation's namespace: the dead-owner sweep reads it
    name = f"{shm.segment_prefix(sim_ns)}{os.getpid()}_{secrets.token_hex(8)}"
    assert rundir._SHM_RE.match(name).group(2) == str(os.getpid()) and shm.SEGMENT_RE.fullmatch(name)
    for d in descs:
        tensors.decode_tensor(d, [], ns)


def test_names_the_old_scheme_would_pick_do_not_block_a_send(ns):
    # Another user can see the namespace and create simsyft_<ns>_<pid>_<n> for every small n.
    planted = [os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(ns)}{os.getpid()}_{n}") for n in range(2048)]
    for path in planted:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        desc = tensors.encode_tensor(big(), [], ns)
        assert path_of(desc) not in planted
        assert torch.equal(tensors.decode_tensor(desc, [], ns), big())
    finally:
        for path in planted:
            os.unlink(path)


def test_a_taken_name_makes_the_creator_draw_another(ns, monkeypatch):
    taken = "ab" * 8
    squatter = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(ns)}{os.getpid()}_{taken}")
    with open(squatter, "wb") as f:
        f.write(b"not yours")
    draws = iter([taken, "cd" * 8])
    monkeypatch.setattr(shm, "_token", lambda: next(draws))
    try:
        desc = tensors.encode_tensor(big(), [], ns)
        assert os.path.basename(path_of(desc)).endswith("_" + "cd" * 8)
        assert torch.equal(tensors.decode_tensor(desc, [], ns), big())
        with open(squatter, "rb") as f:
            assert f.read() == b"not yours"  # left alone
    finally:
        os.unlink(squatter)


# -- what a receiver opens -----------------------------------------------------

def test_a_planted_segment_of_our_simulation_opens(ns):
    path = plant(ns)
    out = tensors.decode_tensor(desc_for(path), [], ns)
    assert out.shape == (8192,) and bool(out.eq(5).all())
    del out
    os.unlink(path)


def test_refuses_a_segment_of_another_simulation(ns):
    other = new_namespace()
    try:
        desc = tensors.encode_tensor(big(), [], other)
        with pytest.raises(ProtocolError, match="belongs to simulation .*not to this one"):
            tensors.decode_tensor(desc, [], ns)
        with pytest.raises(ProtocolError, match="belongs to simulation"):
            tensors.decode_tensor(desc, [])  # the default namespace receives no simulation's segment
        assert torch.equal(tensors.decode_tensor(desc, [], other), big())  # refused before anything: still good
    finally:
        gc.collect()
        segments.sweep(other)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_refuses_a_segment_owned_by_another_user(ns):
    path = plant(ns)
    os.chown(path, 65534, 65534)
    with pytest.raises(ProtocolError, match="owned by uid 65534"):
        tensors.decode_tensor(desc_for(path), [], ns)
    os.unlink(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666], ids=oct)
def test_refuses_a_segment_others_can_read_or_write(ns, mode):
    path = plant(ns, mode=mode)
    with pytest.raises(ProtocolError, match=f"mode {mode:o} lets other users"):
        tensors.decode_tensor(desc_for(path), [], ns)
    os.unlink(path)


def test_refuses_a_symbolic_link(ns):
    target = plant(ns)
    link = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(ns)}{os.getpid() + 1}_{secrets.token_hex(8)}")
    os.symlink(target, link)
    try:
        with pytest.raises(ProtocolError, match="symbolic link"):
            tensors.decode_tensor(desc_for(link), [], ns)
    finally:
        os.unlink(link)
        os.unlink(target)


def test_refuses_a_segment_of_the_wrong_size(ns):
    path = plant(ns, size=shm.HEADER + 4096)
    with pytest.raises(ProtocolError, match=f"has {shm.HEADER + 4096} bytes, its descriptor says {shm.HEADER + 8192}"):
        tensors.decode_tensor(desc_for(path), [], ns)
    os.unlink(path)


def test_refuses_a_fifo(ns):
    path = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(ns)}{os.getpid() + 1}_{secrets.token_hex(8)}")
    os.mkfifo(path, 0o600)
    try:
        with pytest.raises(ProtocolError, match="not a regular file"):
            tensors.decode_tensor(desc_for(path), [], ns)
    finally:
        os.unlink(path)


# -- tickets: a descriptor is good for one receipt ------------------------------

def test_a_replayed_descriptor_is_refused(ns):
    desc = tensors.encode_tensor(big(), [], ns)
    first = tensors.decode_tensor(desc, [], ns)
    with pytest.raises(ProtocolError, match="ticket does not match"):
        tensors.decode_tensor(desc, [], ns)
    assert torch.equal(first, big())


def test_a_forged_ticket_is_refused_and_the_real_one_still_works(ns):
    desc = tensors.encode_tensor(big(), [], ns)
    data = desc[3]
    for forged in (data[3] ^ 1, 0, "77"):
        with pytest.raises(ProtocolError, match="ticket"):
            tensors.decode_tensor((*desc[:3], (*data[:3], forged), None), [], ns)
    assert torch.equal(tensors.decode_tensor(desc, [], ns), big())


def test_an_undone_receipt_leaves_the_segment_as_it_was_sent(ns):
    desc = tensors.encode_tensor(big(), [], ns)
    mark = tensors.receiving()
    partial = tensors.decode_tensor(desc, [], ns)
    tensors.received(mark, ok=False)
    seg = segments._MAPPED[path_of(desc)]
    del partial
    gc.collect()
    assert seg.state.value == shm.BUSY  # our tensor over it went, but it was never ours
    again = tensors.decode_tensor(desc, [], ns)  # re-armed: its receiver can still take it
    assert torch.equal(again, big())
    del again
    gc.collect()
    assert seg.state.value == shm.FREE


def test_a_settled_receipt_frees_a_tensor_released_before_it_ended(ns):
    desc = tensors.encode_tensor(big(), [], ns)
    mark = tensors.receiving()
    tensors.decode_tensor(desc, [], ns)  # dropped at once, while pending
    tensors.received(mark)
    assert segments._MAPPED[path_of(desc)].state.value == shm.FREE and segments.lost(ns) == []


# -- the budget never drops what is being received --------------------------------

def test_a_segment_over_the_budget_is_received(ns, monkeypatch):
    monkeypatch.setattr(segments, "IDLE_MAX", 4096)  # smaller than the segment, as 2 GiB is than 2.1 GiB
    path = plant(ns, capacity=65536)
    out = tensors.decode_tensor(desc_for(path, 65536, 65536), [], ns)
    assert out.shape == (65536,) and bool(out.eq(5).all())
    del out
    gc.collect()
    assert path not in segments._MAPPED  # released: now over the budget, so unmapped
    os.unlink(path)


def test_our_segment_in_flight_is_never_trimmed(ns, monkeypatch):
    monkeypatch.setattr(segments, "IDLE_MAX", 0)
    desc = tensors.encode_tensor(big(), [], ns)
    other = new_namespace()
    try:
        tensors.decode_tensor(tensors.encode_tensor(big(1), [], other), [], other)  # trims, with nothing idle allowed
        assert torch.equal(tensors.decode_tensor(desc, [], ns), big())
    finally:
        gc.collect()
        segments.sweep(other)


# -- a shrunk segment is detected, never read --------------------------------------

def test_a_shrunk_segment_is_detected_and_its_header_left_alone(ns):
    desc = tensors.encode_tensor(big(), [], ns)
    out = tensors.decode_tensor(desc, [], ns)
    seg = segments._MAPPED[path_of(desc)]
    assert tensors.shrunk(out) is None and tensors.shrunk(torch.ones(3)) is None
    os.truncate(path_of(desc), 4096)  # the header page survives: even old code could not crash here
    assert tensors.shrunk(out) is seg and seg.broken
    del out
    gc.collect()
    assert seg.state.value == shm.BUSY  # a shrunk segment's header is not written again
    again = tensors.encode_tensor(big(2), [], ns)
    assert path_of(again) != path_of(desc)  # nor is it reused
    tensors.decode_tensor(again, [], ns)


# -- failed transfers leave everything where it was (in-process worker) -------------

@pytest.fixture
def bob(hook):
    worker = in_process_worker("bob")
    yield worker
    worker.shutdown()


@pytest.fixture
def alice(hook):
    worker = in_process_worker("alice")
    yield worker
    worker.shutdown()


def test_a_refused_request_does_not_leak_the_client_segment(bob):
    connection = bob.connection
    with pytest.raises(ObjectNotFoundError):
        # The missing reference fails before the worker reaches the tensor: it never received it.
        connection.request(lambda seq, free: messages.Command(seq, "torch.add", (Ref(123), big()), {}, 9, True, free),
                           carries_free=True)
    assert segments.lost(connection.namespace) == []
    assert torch.equal(big(3).send(bob).get(), big(3))


def fail_once(monkeypatch, module, name):
    real = getattr(module, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)
    return calls


@pytest.mark.parametrize("where", ["open", "after_open"])
@pytest.mark.parametrize("result", ["sent", "computed"])
def test_a_get_the_client_cannot_take_leaves_the_object(bob, monkeypatch, where, result):
    x = big().tag("#kept").send(bob)
    p = x if result == "sent" else x * 2  # sent: the segment is handed back; computed: the worker's own
    expected = big() if result == "sent" else big() * 2
    if where == "open":
        fail_once(monkeypatch, segments, "receive")
    else:
        fail_once(monkeypatch, tensors, "_contiguous_stride")  # after the segment was received
    with pytest.raises(ProtocolError, match="still on the worker"):
        p.get()
    assert p.id_at_location in bob._objects
    assert [q.id_at_location for q in bob.search("#kept")] == [x.id_at_location]
    assert torch.equal(p.get(), expected)
    assert segments.lost(bob.connection.namespace) == []


def raw_store(link, object_id: int, descriptor: tuple, tags: tuple = ()):
    """A Store carrying `descriptor` as it is (a segment's name and ticket), as a forger would send it."""
    handed = tensors.Handover(tuple(descriptor[:3]), descriptor[3], None, None)
    return link.request(lambda seq: messages.Store(seq, object_id, handed, tags, None))


def test_a_failed_store_stores_nothing_and_its_sender_keeps_the_segment(bob, alice):
    descriptor = tensors.encode_tensor(big(), [], bob.connection.namespace)  # armed, as a send arms it
    with pytest.raises(ProtocolError, match="tags must be strings"):
        raw_store(alice.connection, 5, descriptor, (1,))
    assert alice._objects == {}
    raw_store(bob.connection, 7, descriptor)  # the receipt was undone: the same segment can still be taken
    with pytest.raises(ProtocolError, match="ticket does not match"):  # a replay of the same descriptor
        raw_store(alice.connection, 6, descriptor)
    assert alice._objects == {}
    assert torch.equal(bob._objects[7], big())


def test_a_move_to_a_dead_worker_leaves_the_data(bob, alice):
    x = big().tag("#kept").send(bob)
    alice.simulation.kill("alice")
    with pytest.raises(WorkerCrashedError, match="'alice'"):
        x.move(alice)
    assert x.location is bob and [q.id_at_location for q in bob.search("#kept")] == [x.id_at_location]
    assert torch.equal(x.get(), big())
    assert segments.lost(bob.connection.namespace) == []


def test_a_worker_to_worker_get_that_fails_leaves_the_object(bob, monkeypatch):
    # A chain through bob himself (in-process workers reach no other): RemoteGet makes bob fetch
    # object x from bob through a connection, as a worker fetches from another.
    x = big().send(bob)
    connection = bob.connection
    meta = ("float32", (BIG,), False, "cpu")
    connection.request(lambda seq: messages.StorePointer(seq, 42, "bob", x.id_at_location, meta))
    fail_once(monkeypatch, tensors, "_contiguous_stride")
    with pytest.raises(ProtocolError, match="still on the worker"):
        connection.request(lambda seq: messages.RemoteGet(seq, 42))
    peek = lambda object_id: connection.request(lambda seq: messages.Fetch(seq, object_id, False)).value  # noqa: E731
    assert torch.equal(peek(x.id_at_location), big())  # still there
    connection.request(lambda seq: messages.RemoteGet(seq, 42))
    assert list(bob._objects) == [42] and torch.equal(bob._objects[42], big())
