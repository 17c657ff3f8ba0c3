"""WorkerCore driven with encoded frames, no sockets: store, ops, replies, and refusals that keep it serving."""

from __future__ import annotations

import os
import pickle
import uuid

import pytest
import torch

from simsyft.wire import codec, messages, segments, shm, tensors
from simsyft.wire.messages import Ack, Aliases, Clear, Command, ErrorReply, Fetch, Free, Info, Objects, Ref, Search, Shutdown, Store, Value
from simsyft.worker.core import WorkerCore


@pytest.fixture
def core():
    namespace = f"{os.getpid()}-test{uuid.uuid4().hex}"
    worker = WorkerCore("bob", namespace)
    yield worker
    worker.store.clear()
    segments.close(namespace)  # this process's pooled segments (none may be left lent out)
    leftover = shm.list_segments(namespace)
    segments.sweep(namespace)
    assert leftover == [], f"test left shared-memory segments behind: {leftover}"


def send(core: WorkerCore, msg: messages.Message):
    """Encode like a client, hand the frames to the core, decode its reply (None if it sends none)."""
    reply = core.handle(codec.encode(msg, core.namespace))
    return None if reply is None else codec.decode(reply, namespace=core.namespace)


def send_frames(core: WorkerCore, frames: list):
    reply = core.handle(frames)
    return None if reply is None else codec.decode(reply, namespace=core.namespace)


def meta(t: torch.Tensor) -> tuple:
    return (tensors.dtype_name(t.dtype), tuple(t.shape), t.requires_grad, "cpu")


def assert_serving(core: WorkerCore) -> None:
    """The core still answers: store, compute and fetch a fresh object."""
    oid = 987654321
    assert send(core, Store(900, oid, torch.tensor([1.0, 2.0]))) == Ack(900, ("p", oid, "float32", (2,), False, "cpu"))
    ack = send(core, Command(901, "torch.mul", (Ref(oid), 3), {}, oid + 1))
    assert ack.result[:2] == ("p", oid + 1)
    value = send(core, Fetch(902, oid + 1))
    assert torch.equal(value.value, torch.tensor([3.0, 6.0]))
    send(core, Free((oid,)))


def test_store_then_command_then_fetch(core):
    x = torch.tensor([1.0, -2.0, 3.0])
    ack = send(core, Store(1, 10, x))
    assert ack == Ack(1, ("p", 10, *meta(x)))
    ack = send(core, Command(2, "torch.add", (Ref(10), Ref(10)), {"alpha": 2}, 11))
    assert type(ack) is Ack and ack.seq == 2
    assert ack.result == ("p", 11, "float32", (3,), False, "cpu")
    value = send(core, Fetch(3, 11))
    assert type(value) is Value and value.seq == 3
    assert torch.equal(value.value, torch.add(x, x, alpha=2))
    # Fetch removes by default: the id is gone, the input stays.
    assert 11 not in core.store and 10 in core.store
    kept = send(core, Fetch(4, 10, remove=False))
    assert torch.equal(kept.value, x) and 10 in core.store


def test_fetch_of_a_large_tensor_goes_through_shared_memory(core):
    big = torch.arange(tensors.INLINE_MAX // 4 + 10, dtype=torch.float32)
    send(core, Store(1, 5, big))
    reply = core.handle(codec.encode(Fetch(2, 5), core.namespace))
    assert codec.frames_size(reply) < 4096
    assert len(shm.list_segments(core.namespace)) == 1
    value = codec.decode(reply, namespace=core.namespace)
    assert torch.equal(value.value, big)
    assert len(shm.list_segments(core.namespace)) == 1  # pooled


def test_fetch_hands_the_segment_back_instead_of_copying(core):
    big = torch.arange(tensors.INLINE_MAX // 4 + 10, dtype=torch.float32)
    send(core, Store(1, 5, big))
    address = core.store[5].data_ptr()
    value = send(core, Fetch(2, 5)).value
    assert value.data_ptr() == address and torch.equal(value, big)  # same memory, no copy
    assert 5 not in core.store


def test_fetch_copies_what_something_else_on_the_worker_still_uses(core):
    big = torch.arange(tensors.INLINE_MAX // 4 + 10, dtype=torch.float32)
    send(core, Store(1, 5, big))
    send(core, Store(2, 6, big))
    send(core, Command(3, "torch.Tensor.__getitem__", (Ref(5), slice(1, None)), {}, 7, True, ()))
    send(core, Store(4, 8, torch.ones(big.shape, requires_grad=True)))
    send(core, Command(5, "torch.mul", (Ref(6), Ref(8)), {}, 9, True, ()))  # saves object 6 for backward
    addresses = {i: core.store[i].data_ptr() for i in (5, 6)}
    for seq, object_id in ((6, 5), (7, 6)):
        value = send(core, Fetch(seq, object_id)).value
        assert value.data_ptr() != addresses[object_id] and torch.equal(value, big)
    core.store[7].add_(1)  # the view and the saved tensor are unaffected by the client's copies
    value.zero_()
    send(core, Command(8, "torch.Tensor.sum", (Ref(9),), {}, 10, True, ()))
    send(core, Command(9, "torch.Tensor.backward", (Ref(10),), {}, 11, True, ()))
    assert torch.equal(core.store[8].grad, big)


def test_stored_tensor_keeps_requires_grad_and_grad(core):
    w = torch.randn(3, requires_grad=True)
    w.grad = torch.ones(3)
    ack = send(core, Store(1, 7, w))
    assert ack.result == ("p", 7, "float32", (3,), True, "cpu")
    stored = core.store[7]
    assert stored.requires_grad and torch.equal(stored.grad, torch.ones(3))


def test_store_refuses_non_tensors(core):
    reply = send(core, Store(1, 7, [1, 2, 3]))
    assert type(reply) is ErrorReply and reply.seq == 1
    assert reply.type_name == "ProtocolError" and "only tensors can be stored" in reply.message
    assert 7 not in core.store


def test_objects_snapshot_in_insertion_order(core):
    tensors = {30: torch.tensor([3]), 10: torch.tensor([1]), 20: torch.tensor([2])}
    for seq, (oid, t) in enumerate(tensors.items()):
        send(core, Store(seq, oid, t))
    snapshot = send(core, Objects(9))
    assert type(snapshot) is Value and snapshot.seq == 9
    assert [oid for oid, _ in snapshot.value] == [30, 10, 20]
    assert all(torch.equal(t, tensors[oid]) for oid, t in snapshot.value)
    assert send(core, Objects(10, values=False)) == Value(10, 3)
    # A snapshot is a copy: the worker's tensors are not aliased by the reply.
    snapshot.value[0][1].fill_(99)
    assert torch.equal(core.store[30], torch.tensor([3]))


def test_free_drops_ids_ignores_unknown_ones_and_sends_no_reply(core):
    send(core, Store(1, 1, torch.ones(1)))
    send(core, Store(2, 2, torch.ones(1)))
    assert core.handle(codec.encode(Free((1, 12345, 1, -7)), core.namespace)) is None
    assert list(core.store) == [2]
    assert send(core, Free(())) is None
    assert list(core.store) == [2]
    assert_serving(core)


def test_command_free_rides_along(core):
    for oid in (1, 2, 3):
        send(core, Store(oid, oid, torch.full((1,), float(oid))))
    ack = send(core, Command(4, "torch.neg", (Ref(3),), {}, 4, free=(1, 2, 999)))
    assert ack.result[:2] == ("p", 4)
    assert sorted(core.store) == [3, 4]


def test_disallowed_op_gets_an_error_reply_and_the_core_keeps_serving(core, tmp_path):
    send(core, Store(1, 1, torch.ones(2)))
    path = tmp_path / "stolen.pt"
    reply = send(core, Command(2, "torch.save", (Ref(1), str(path)), {}, 2))
    assert type(reply) is ErrorReply and reply.seq == 2
    assert reply.type_module == "simsyft.errors" and reply.type_name == "OpNotAllowedError"
    assert reply.message == "'torch.save' is not in simsyft's op allowlist (simsyft/wire/ops.py)"
    assert reply.worker == "bob"
    assert not path.exists()
    reply = send(core, Command(3, "torch.load", ("/etc/passwd",), {}, 3))
    assert type(reply) is ErrorReply and reply.seq == 3 and reply.type_name == "OpNotAllowedError"
    assert reply.message == "'torch.load' is not in simsyft's op allowlist (simsyft/wire/ops.py)"
    assert 2 not in core.store and 3 not in core.store
    assert_serving(core)


@pytest.mark.parametrize("frames", [
    [b"garbage"],
    [],
    [b""],
    [b"\x80\x05\x95"],
    [b"\x00" * 64],
], ids=["garbage", "no_frames", "empty_header", "truncated", "zeros"])
def test_undecodable_frames_get_an_error_reply_with_seq_minus_one(core, frames):
    reply = send_frames(core, frames)
    assert type(reply) is ErrorReply
    assert reply.seq == -1
    assert reply.type_module == "simsyft.errors" and reply.type_name == "ProtocolError"
    assert reply.worker == "bob" and reply.message and "Traceback" in reply.traceback
    assert_serving(core)


def test_a_pickled_call_gets_an_error_reply_and_runs_nothing(core, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    reply = send_frames(core, [pickle.dumps((Fetch.code, 5, Evil(), True))])
    assert type(reply) is ErrorReply and reply.type_name == "ProtocolError"
    assert "not an allowed type" in reply.message
    assert not marker.exists()
    assert_serving(core)


def test_a_readable_but_invalid_request_keeps_its_seq(core):
    reply = send_frames(core, [pickle.dumps((Fetch.code, 41, "not an id", True), protocol=5)])
    assert type(reply) is ErrorReply and reply.seq == 41
    assert reply.type_name == "ProtocolError" and "Fetch.id must be int, got str" in reply.message
    assert_serving(core)


def test_command_with_a_missing_id_names_the_worker(core):
    send(core, Store(1, 1, torch.ones(2)))
    reply = send(core, Command(2, "torch.add", (Ref(1), Ref(4821)), {}, 3))
    assert type(reply) is ErrorReply and reply.seq == 2
    assert reply.type_module == "simsyft.errors" and reply.type_name == "ObjectNotFoundError"
    assert reply.message == "worker 'bob' has no object 4821: it was already returned by .get() or freed"
    assert 3 not in core.store
    assert_serving(core)


def test_fetch_of_a_missing_id_names_the_worker(core):
    reply = send(core, Fetch(5, 77))
    assert type(reply) is ErrorReply and reply.seq == 5 and reply.type_name == "ObjectNotFoundError"
    assert "worker 'bob' has no object 77" in reply.message


def test_a_missing_id_next_to_a_tensor_argument_keeps_the_seq(core):
    reply = send(core, Command(6, "torch.add", (Ref(4821), torch.ones(2)), {}, 7))
    assert type(reply) is ErrorReply and reply.type_name == "ObjectNotFoundError"
    assert reply.seq == 6


def test_op_errors_come_back_with_their_type(core):
    send(core, Store(1, 1, torch.ones(2)))
    send(core, Store(2, 2, torch.ones(3)))
    reply = send(core, Command(3, "torch.add", (Ref(1), Ref(2)), {}, 4))
    assert type(reply) is ErrorReply and reply.seq == 3
    assert (reply.type_module, reply.type_name) == ("builtins", "RuntimeError")
    assert "size of tensor a" in reply.message and "Traceback" in reply.traceback
    assert 4 not in core.store


def test_in_place_op_is_an_alias_and_stores_nothing_new(core):
    send(core, Store(1, 50, torch.tensor([1.0, 2.0])))
    ack = send(core, Command(2, "torch.Tensor.add_", (Ref(50), 10), {}, 51))
    assert ack == Ack(2, ("a", 50, "float32", (2,), False, "cpu"))
    assert list(core.store) == [50]
    assert torch.equal(core.store[50], torch.tensor([11.0, 12.0]))


def test_out_argument_is_an_alias_too(core):
    send(core, Store(1, 60, torch.ones(2)))
    send(core, Store(2, 61, torch.zeros(2)))
    ack = send(core, Command(3, "torch.add", (Ref(60), 1), {"out": Ref(61)}, 62))
    assert ack.result[:2] == ("a", 61)
    assert sorted(core.store) == [60, 61]
    assert torch.equal(core.store[61], torch.full((2,), 2.0))


def test_multi_output_op_describes_a_named_tuple(core):
    x = torch.tensor([[1.0, 5.0], [7.0, 3.0]])
    send(core, Store(1, 70, x))
    ack = send(core, Command(2, "torch.max", (Ref(70),), {"dim": 1}, 71))
    kind, type_name, items = ack.result
    assert (kind, type_name) == ("q", "torch.return_types.max")
    assert len(items) == 2
    (k0, id0, *m0), (k1, id1, *m1) = items
    assert (k0, id0) == ("p", 71)  # the first result takes the id the client chose
    assert k1 == "p" and id1 not in (70, 71)
    assert tuple(m0) == ("float32", (2,), False, "cpu") and tuple(m1) == ("int64", (2,), False, "cpu")
    assert torch.equal(core.store[71], torch.tensor([5.0, 7.0]))
    assert torch.equal(core.store[id1], torch.tensor([1, 0]))


def test_split_describes_a_plain_tuple(core):
    send(core, Store(1, 80, torch.arange(5.0)))
    ack = send(core, Command(2, "torch.functional.split", (Ref(80), 2), {}, 81))
    kind, type_name, items = ack.result
    assert (kind, type_name) == ("q", "tuple") and len(items) == 3
    ids = [item[1] for item in items]
    assert ids[0] == 81 and len(set(ids)) == 3
    assert [tuple(item[3]) for item in items] == [(2,), (2,), (1,)]


def test_none_result_is_n(core):
    w = torch.ones(3, requires_grad=True)
    send(core, Store(1, 90, w))
    send(core, Command(2, "torch.Tensor.sum", (Ref(90),), {}, 91))
    ack = send(core, Command(3, "torch.Tensor.backward", (Ref(91),), {}, 92))
    assert ack == Ack(3, ("n",))
    assert 92 not in core.store
    assert torch.equal(core.store[90].grad, torch.ones(3))


def test_python_values_come_back_as_v(core):
    send(core, Store(1, 95, torch.zeros(2, 3)))
    assert send(core, Command(2, "torch.Tensor.dim", (Ref(95),), {}, 96)) == Ack(2, ("v", 2))
    assert send(core, Command(3, "torch.Tensor.size", (Ref(95),), {}, 97)) == Ack(3, ("v", torch.Size([2, 3])))
    assert 96 not in core.store and 97 not in core.store


def test_grad_enabled_false_records_no_graph(core):
    send(core, Store(1, 1, torch.ones(2, requires_grad=True)))
    ack = send(core, Command(2, "torch.mul", (Ref(1), 2), {}, 2, grad_enabled=False))
    assert ack.result == ("p", 2, "float32", (2,), False, "cpu")
    ack = send(core, Command(3, "torch.mul", (Ref(1), 2), {}, 3))
    assert ack.result == ("p", 3, "float32", (2,), True, "cpu")


def test_info_clear_search_and_shutdown(core):
    send(core, Store(1, 1, torch.ones(4), tags=("#xray",), description="scan"))
    send(core, Store(2, 2, torch.ones(2), tags=("#xray", "#bob")))
    info = send(core, Info(3)).value
    assert info["name"] == "bob" and info["objects"] == 2 and info["bytes"] == 24 and info["pid"] == os.getpid()
    found = send(core, Search(4, ("#xray", "#bob"))).value
    assert [f[0] for f in found] == [2] and found[0][2] == ("#xray", "#bob")
    assert [f[0] for f in send(core, Search(5, ("#xray",))).value] == [1, 2]
    assert send(core, Clear(6)) == Value(6, 2)
    assert core.store == {} and send(core, Search(7, ("#xray",))) == Value(7, ())
    assert core.running
    assert send(core, Shutdown(8)) == Value(8, True)
    assert not core.running


def test_a_reply_kind_sent_to_the_worker_is_refused(core):
    reply = send(core, Ack(5, ("n",)))
    assert type(reply) is ErrorReply and reply.seq == 5 and "does not accept Ack" in reply.message
    assert_serving(core)


def test_ids_freed_by_a_command_lose_their_tags(core):
    # Regression: Command.free used to pop the store but leave core.tags, so the tags outlived the object.
    send(core, Store(1, 5, torch.ones(1), tags=("#secret",)))
    send(core, Store(2, 6, torch.ones(1)))
    send(core, Command(3, "torch.neg", (Ref(6),), {}, 7, free=(5,)))
    send(core, Store(4, 5, torch.zeros(1)))  # a new, untagged object under the same id
    assert send(core, Search(5, ("#secret",))) == Value(5, ())


def test_aliases_lists_the_tensors_sharing_memory(core):
    send(core, Store(1, 1, torch.zeros(4)))
    send(core, Command(2, "torch.Tensor.__getitem__", (Ref(1), slice(0, 2)), {}, 2, True, ()))
    send(core, Command(3, "torch.Tensor.view", (Ref(1), 2, 2), {}, 3, True, ()))
    send(core, Store(4, 4, torch.zeros(4)))
    send(core, Command(5, "torch.Tensor.add_", (Ref(2), Ref(4)), {}, 5, True, ()))
    found = dict(send(core, Aliases(6, 2)).value)
    assert sorted(found) == [1, 3] and found[1] == ("float32", (4,), False, "cpu")
    assert send(core, Aliases(7, 4)).value == ()


# -- Note [Views stay inside their storage] (executor.py) ------------------------------------

def outside_view() -> torch.Tensor:
    """A tensor as a failed resize_ leaves it without the guard: 10**13 sizes over 12 bytes."""
    t = torch.zeros(3)
    with pytest.raises(RuntimeError):
        t.resize_(10**13)
    assert t.shape == (10**13,)
    return t


def test_info_reports_views_outside_storage(core):
    send(core, Store(1, 1, torch.ones(3)))
    assert send(core, Info(2)).value["views_outside_storage"] == []
    core.store[7] = outside_view()  # planted past the guard: the report must see it
    holder = torch.ones(2)
    holder.grad = torch.zeros(2)
    with torch.no_grad():
        holder.grad.as_strided_((2,), (2**62,))  # a grad outside counts for its tensor
    core.store[8] = holder
    assert send(core, Info(3)).value["views_outside_storage"] == [7, 8]
    core.store[7].set_(torch.zeros(3).untyped_storage())  # cleaned, so reading the store is safe again
    del core.store[8]


def test_failed_resize_command_leaves_the_stored_tensor_and_keeps_serving(core):
    send(core, Store(1, 1, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    send(core, Store(2, 2, torch.full((4,), 7.0, dtype=torch.float64)))
    for reply in (True, False):  # synchronous, and pipelined (only the failure is answered)
        error = send(core, Command(3, "torch.Tensor.resize_", (Ref(1), 10**13), {}, 9, True, (), reply))
        assert type(error) is ErrorReply and error.type_name == "RuntimeError" and error.worker == "bob"
        assert "can't allocate memory" in error.message
        assert "simsyft: torch.Tensor.resize_ failed after moving a tensor's view outside its storage" in error.traceback
    assert core.store[1].shape == (3,) and core.store[1]._version == 0
    assert send(core, Info(4)).value["views_outside_storage"] == []
    ack = send(core, Command(5, "torch.Tensor.index_select", (Ref(1), 0, torch.tensor([0, 2])), {}, 10))
    assert ack.result == ("p", 10, "float64", (2,), False, "cpu")
    assert torch.equal(core.store[10], torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert torch.equal(core.store[2], torch.full((4,), 7.0, dtype=torch.float64))
    assert_serving(core)


def test_an_outside_result_is_never_stored(core):
    send(core, Store(1, 1, torch.ones(3)))
    error = send(core, Command(2, "torch.Tensor.as_strided_", (Ref(1), (3,), (2**62,)), {}, 9))
    assert type(error) is ErrorReply and error.type_name == "ViewOutsideStorageError"
    assert error.message.startswith("torch.Tensor.as_strided_ left a tensor viewing memory outside its storage")
    assert 9 not in core.store and core.store[1].stride() == (1,)
    assert send(core, Info(3)).value["views_outside_storage"] == []
