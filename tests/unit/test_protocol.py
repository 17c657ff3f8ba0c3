"""codec.py: every message kind round-trips; the decoder refuses bad frames with ProtocolError."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import subprocess
import tracemalloc
import uuid

import pytest
import torch

from simsyft.wire import codec, messages, segments, shm, tensors
from simsyft.errors import ObjectNotFoundError, ProtocolError
from simsyft.wire.messages import Ack, Aliases, Clear, Command, ErrorReply, Fetch, Free, Info, Objects, Ref, Search, Shutdown, Store, Value

# A float32 tensor just over the inline limit travels through a shared-memory segment.
SHM_NUMEL = tensors.INLINE_MAX // 4 + 1


# -- helpers ------------------------------------------------------------------

@pytest.fixture
def ns():
    """A namespace of this test's own; the test must leave no segment of it behind."""
    namespace = f"{os.getpid()}-test{uuid.uuid4().hex}"
    yield namespace
    segments.close(namespace)  # this process's pooled segments (none may be left lent out)
    leftover = shm.list_segments(namespace)
    segments.sweep(namespace)
    assert leftover == [], f"test left shared-memory segments behind: {leftover}"


def assert_same(a, b):
    """Deep equality that also compares types, and tensors bit for bit."""
    assert type(a) is type(b), f"{type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.requires_grad == b.requires_grad
        assert torch.equal(a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8))
        if a.grad is None:
            assert b.grad is None
        else:
            assert_same(a.grad, b.grad)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, messages.Message):
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name))
    else:
        assert a == b


class _Pid:
    """Marks a value to be written as a persistent id by `raw_header`."""

    def __init__(self, pid):
        self.pid = pid


class _RawPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Pid) else None


def raw_header(values) -> bytes:
    """A header pickled by hand, so we can write what encode() never would."""
    file = io.BytesIO()
    _RawPickler(file, protocol=5).dump(values)
    return file.getvalue()


def tensor_header(desc) -> bytes:
    """A Value message whose value is the tensor descriptor `desc` (possibly malformed)."""
    return raw_header((Value.code, 1, _Pid(("T", desc))))


def roundtrip(msg, namespace, resolve=None):
    frames = codec.encode(msg, namespace)
    return codec.decode(frames, resolve=resolve, namespace=namespace)


# -- round trips --------------------------------------------------------------

RICH_ARGS = (
    slice(1, None, 2),
    slice(None),
    Ellipsis,
    None,
    (1, (2, (3, "four")), []),
    [1.5, -0.0, float("inf"), [True, False]],
    {"a": 1, "nested": {"b": (slice(0, 3), None)}, 3: "int key"},
    torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64,
    torch.Size([2, 3, 0]),
    torch.Size([]),
    torch.device("cpu"),
    torch.device("cuda", 1),
    torch.channels_last, torch.contiguous_format, torch.preserve_format,
    torch.strided, torch.sparse_coo,
    1 + 2j,
    complex(-0.5, float("inf")),
    Ref(0), Ref(2**63 - 1),
    range(3, 10, 2),
    frozenset({1, 2}), {3, 4},
    "a string", b"bytes", 2**70, -1,
)


def small_tensors():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    g = torch.randn(4, requires_grad=True)
    g.grad = torch.full((4,), 0.5)
    return (x, x.t(), torch.tensor(7), torch.empty(0, 3), torch.tensor([True, False]), g)


def big_tensor():
    return torch.arange(SHM_NUMEL, dtype=torch.float32)


def all_kinds():
    t = small_tensors()
    return [
        Command(1, "torch.add", (Ref(10), *RICH_ARGS, *t), {"alpha": 2, "out": None, "idx": (slice(None), ...)}, 99),
        Command(2, "torch.Tensor.sum", (Ref(3),), {"dim": -1}, 4, grad_enabled=False, free=(5, 6)),
        Store(3, 42, t[0]),
        Store(4, 43, t[-1], tags=("#xray", "#bob"), description="a scan"),
        Fetch(5, 42),
        Fetch(6, 42, remove=False),
        Free((1, 2, 3)),
        Free(()),
        Objects(7),
        Objects(8, values=False),
        Info(9),
        Shutdown(10),
        Clear(11),
        Search(12, ("#xray",)),
        Aliases(12, 42),
        Ack(13, ("p", 42, "float32", (2, 3), False, "cpu")),
        Ack(14, ("q", "torch.return_types.max", (("p", 1, "float32", (), False, "cpu"), ("n",)))),
        Value(15, t[1]),
        Value(16, ((1, t[0]), (2, t[2]))),
        Value(17, {"name": "bob", "pid": 1, "uptime": 0.5}),
        Value(18, None),
        Value(19, 3 + 4j),
        ErrorReply(20, "simsyft.errors", "ObjectNotFoundError", "worker 'bob' has no object 4", "Traceback ...", "bob"),
    ]


@pytest.mark.parametrize("msg", all_kinds(), ids=lambda m: f"{type(m).__name__}")
def test_every_kind_round_trips(msg, ns):
    decoded = roundtrip(msg, ns)
    assert type(decoded) is type(msg)
    assert_same(msg, decoded)


def test_the_named_kinds_are_covered():
    covered = {type(m) for m in all_kinds()}
    assert {Command, Store, Fetch, Free, Objects, Info, Shutdown, Clear, Search, Ack, Value, ErrorReply} <= covered


_SAMPLES = {int: 7, str: "text", tuple: (1, (2, "x"), Ref(3)), dict: {"k": [1, None]}, bool: False}


@pytest.mark.parametrize("cls", sorted(codec._KINDS.values(), key=lambda c: c.code), ids=lambda c: c.__name__)
def test_every_registered_kind_round_trips(cls, ns):
    # Built from the field-type table, so a kind added later is covered without editing this file.
    values = [_SAMPLES.get(t, torch.arange(3.0)) for t in codec._FIELD_TYPES[cls]]
    msg = cls(*values)
    frames = codec.encode(msg, ns)
    assert codec.frames_size(frames) > 0
    decoded = codec.decode(frames)
    assert type(decoded) is cls and decoded.code == cls.code
    assert_same(msg, decoded)


@pytest.mark.parametrize("make", [big_tensor, lambda: torch.arange(2 * SHM_NUMEL, dtype=torch.float32).reshape(-1, 2).t()], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("kind", ["Store", "Value", "Command"])
def test_shared_memory_tensors_round_trip(kind, make, ns):
    t = make()
    msg = {
        "Store": lambda: Store(1, 2, t),
        "Value": lambda: Value(1, ((7, t),)),
        "Command": lambda: Command(1, "torch.add", (t, Ref(3)), {"other": t}, 5),
    }[kind]()
    frames = codec.encode(msg, ns)
    assert len(shm.list_segments(ns)) >= 1  # the data went to a segment
    assert codec.frames_size(frames) < 4096
    decoded = codec.decode(frames, namespace=ns)
    assert_same(msg, decoded)
    assert segments.stats(ns)["in_use"] >= 1  # decoded over the segments, not copied out of them


def test_tensor_with_grad_in_shared_memory(ns):
    x = big_tensor().requires_grad_(True)
    x.grad = torch.ones(SHM_NUMEL)
    decoded = roundtrip(Value(1, x), ns)
    assert decoded.value.requires_grad
    assert torch.equal(decoded.value.grad, x.grad)
    assert torch.equal(decoded.value.detach(), x.detach())


def test_inline_tensor_travels_as_a_frame(ns):
    # A tuple of tensors is pickled (compact.py only lays out a lone tensor): its bytes ride as frames.
    t = torch.arange(10, dtype=torch.int16)
    frames = codec.encode(Value(1, (t,)), ns)
    assert len(frames) == 2 and bytes(frames[1]) == t.numpy().tobytes()
    assert shm.list_segments(ns) == []


def test_decode_accepts_memoryviews_and_bytearrays(ns):
    frames = codec.encode(Value(1, (torch.arange(5.0),)), ns)
    decoded = codec.decode([memoryview(frames[0]), bytearray(frames[1])])
    assert torch.equal(decoded.value[0], torch.arange(5.0))
    frames = codec.encode(Value(1, torch.arange(5.0)), ns)  # the compact layout
    assert torch.equal(codec.decode([memoryview(frames[0])]).value, torch.arange(5.0))
    assert torch.equal(codec.decode([bytearray(frames[0])]).value, torch.arange(5.0))


def test_memory_formats_and_layouts_decode_to_the_torch_singletons(ns):
    values = (torch.channels_last, torch.channels_last_3d, torch.preserve_format, torch.strided, torch.sparse_coo)
    decoded = roundtrip(Value(1, values), ns).value
    assert all(a is b for a, b in zip(decoded, values))


def test_refs_decode_as_refs_without_resolve(ns):
    decoded = roundtrip(Command(1, "torch.add", (Ref(4), [Ref(5)]), {"other": {"x": Ref(6)}}, 7), ns)
    assert decoded.args == (Ref(4), [Ref(5)])
    assert decoded.kwargs == {"other": {"x": Ref(6)}}
    assert type(decoded.args[0]) is Ref and decoded.args[0].id == 4


def test_resolve_turns_refs_into_store_objects(ns):
    store = {4: torch.ones(2), 5: torch.zeros(3), 6: torch.full((1,), 9.0)}
    asked = []

    def resolve(object_id):
        asked.append(object_id)
        return store[object_id]

    msg = Command(1, "torch.add", (Ref(4), (Ref(5), 1)), {"other": Ref(6)}, 7)
    decoded = codec.decode(codec.encode(msg, ns), resolve=resolve)
    assert decoded.args[0] is store[4]
    assert decoded.args[1][0] is store[5] and decoded.args[1][1] == 1
    assert decoded.kwargs["other"] is store[6]
    assert sorted(asked) == [4, 5, 6]


def test_resolver_errors_propagate_unchanged(ns):
    # The worker's resolver raises ObjectNotFoundError naming itself; decode must not rewrap it.
    def resolve(object_id):
        raise ObjectNotFoundError(f"worker 'bob' has no object {object_id}")

    frames = codec.encode(Command(1, "torch.neg", (Ref(4),), {}, 2), ns)
    with pytest.raises(ObjectNotFoundError) as info:
        codec.decode(frames, resolve=resolve)
    assert str(info.value) == "worker 'bob' has no object 4"


def test_other_resolver_errors_become_protocol_errors(ns):
    def resolve(object_id):
        raise KeyError(object_id)

    frames = codec.encode(Command(1, "torch.neg", (Ref(4),), {}, 2), ns)
    with pytest.raises(ProtocolError, match="undecodable message header .KeyError: 4."):
        codec.decode(frames, resolve=resolve)


def test_fetch_id_is_not_a_ref():
    # Sanity for the test above: a plain int field must decode without calling resolve.
    called = []
    decoded = codec.decode(codec.encode(Fetch(1, 4)), resolve=called.append)
    assert decoded == Fetch(1, 4) and called == []


def test_repr_is_readable():
    assert repr(Fetch(3, 42, remove=False)) == "Fetch(seq=3, id=42, remove=False)"
    assert repr(Ref(7)) == "Ref(7)"
    assert Free((1,)).wants_reply is False and Fetch(1, 2).wants_reply is True


def test_frames_size_counts_bytes():
    assert codec.frames_size([]) == 0
    assert codec.frames_size([b"abc", b"", bytearray(5), memoryview(b"12345678")]) == 16
    frames = codec.encode(Value(1, torch.zeros(100, dtype=torch.float64)))
    assert codec.frames_size(frames) == sum(len(f) for f in frames)
    assert codec.frames_size(frames) > 800  # the 800 data bytes travel inline


def test_a_64mb_tensor_costs_only_a_few_kb_of_frames(ns):
    t = torch.ones(16 * 1024 * 1024, dtype=torch.float32)  # 64 MiB
    frames = codec.encode(Value(1, t), ns)
    try:
        assert codec.frames_size(frames) < 4 * 1024
        assert len(shm.list_segments(ns)) == 1
    finally:
        decoded = codec.decode(frames, namespace=ns)
    assert decoded.value.shape == t.shape and bool(decoded.value.eq(1).all())


# -- refusals -----------------------------------------------------------------

def refuse(frames, *fragments, namespace=""):
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames, namespace=namespace)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_refuses_empty_frames():
    refuse([], "empty message")


def test_refuses_empty_header():
    refuse([b""], "undecodable message header")


@pytest.mark.parametrize("cut", [1, 2, 10, -2, -1])
@pytest.mark.parametrize("kwargs, fragment", [({}, "Command frame"), ({"alpha": 2}, "undecodable message header")],
                         ids=["compact", "pickle"])
def test_refuses_truncated_header(cut, kwargs, fragment):
    header = codec.encode(Command(1, "torch.add", (Ref(1), 2), kwargs, 3))[0]
    refuse([header[:cut]], fragment)


@pytest.mark.parametrize("garbage", [b"garbage", b"\x00" * 16, b"\xff\xfe\xfd", b"GET / HTTP/1.1\r\n\r\n", b"\x80\x05\x95"])
def test_refuses_garbage(garbage):
    error = refuse([garbage])
    assert any(word in str(error) for word in ("message header", "persistent id")), str(error)


def test_refuses_garbage_claiming_an_enormous_string():
    # BINUNICODE8 with a length beyond sys.maxsize: the opcode check (every decode runs it) finds
    # the claimed string running past the header before the C unpickler could try to read it.
    refuse([b"\x80\x05\x8d" + b"\xff" * 8], "undecodable message header", "truncated")


def test_refuses_a_bad_device_string():
    header = raw_header((Value.code, 1, _Reduce(torch.device, ("no-such-device",))))
    refuse([header], "no-such-device")


def test_a_tiny_header_cannot_make_the_decoder_allocate_much():
    """The worker decodes strictly: a PUT with a huge memo index is refused before unpickling."""
    header = b"\x80\x05N" + b"r" + (1 << 22).to_bytes(4, "little") + b"."  # memo put at index 4 Mi
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="opcode .* which simsyft never sends"):
            codec.decode([header], strict=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"decoding a {len(header)}-byte header allocated {peak} bytes"


class _Reduce:
    """Pickles as `func(*args)`: how an attacker gets a call into a pickle."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("make", [
    lambda marker: (os.system, (f"touch {marker}",)),
    lambda marker: (eval, (f"open({str(marker)!r}, 'w').close()",)),
    lambda marker: (subprocess.Popen, (["touch", str(marker)],)),
    lambda marker: (exec, (f"open({str(marker)!r}, 'w').close()",)),
    lambda marker: (getattr, ("text", "upper")),
], ids=["os.system", "builtins.eval", "subprocess.Popen", "builtins.exec", "builtins.getattr"])
@pytest.mark.parametrize("where", ["top", "in_args"])
def test_refuses_pickles_that_call_things(make, where, tmp_path):
    marker = tmp_path / "pwned"
    func, args = make(marker)
    evil = _Reduce(func, args)
    if where == "top":
        header = pickle.dumps(evil, protocol=5)
    else:
        header = raw_header((Command.code, 1, "torch.add", (evil,), {}, 2, True, ()))
    error = refuse([header], "not an allowed type")
    module = pickle.whichmodule(func, func.__name__)
    assert f"{module}.{func.__name__}" in str(error)
    assert not marker.exists(), "the pickled call ran"


@pytest.mark.parametrize("protocol_version, fragment", [
    (0, "neither a pickle nor a simsyft layout"),  # only protocol >= 2 pickles start with PROTO (0x80)
    (2, "which simsyft never sends"),  # GLOBAL (b"c"): the opcode check, which every decode runs, refuses it
    (5, "not an allowed type")])
def test_refuses_globals_in_any_pickle_protocol(protocol_version, fragment):
    header = pickle.dumps((Value.code, 1, os.getcwd), protocol=protocol_version)
    refuse([header], fragment)


def test_refuses_a_tensor_pickled_the_usual_way():
    # torch's own reduce goes through torch._utils._rebuild_tensor_v2 and storages: not allowed.
    header = pickle.dumps((Value.code, 1, torch.ones(2)), protocol=5)
    refuse([header], "not an allowed type")


def test_refuses_unknown_message_code():
    refuse([raw_header((99, 1))], "unknown message code 99")
    refuse([raw_header((0,))], "unknown message code 0")


@pytest.mark.parametrize("values", [[3, 1, 2, True], 3, (), ("3", 1, 2, True), (True, 1, 2, True), None])
def test_refuses_a_header_that_is_not_a_code_tuple(values):
    refuse([raw_header(values)], "not a (code, fields...) tuple")


@pytest.mark.parametrize("values, expected", [
    ((Fetch.code, 1), "Fetch needs 3 fields, got 1"),
    ((Fetch.code, 1, 2, True, 4), "Fetch needs 3 fields, got 4"),
    ((Info.code,), "Info needs 1 fields, got 0"),
    ((Command.code, 1, "torch.add", (), {}), "Command needs 8 fields, got 4"),
])
def test_refuses_wrong_number_of_fields(values, expected):
    refuse([raw_header(values)], expected)


@pytest.mark.parametrize("values, expected", [
    ((Fetch.code, "1", 2, True), "Fetch.seq must be int, got str"),
    ((Fetch.code, 1, 2.0, True), "Fetch.id must be int, got float"),
    ((Fetch.code, 1, 2, 1), "Fetch.remove must be bool, got int"),
    ((Fetch.code, True, 2, True), "Fetch.seq must be int, got bool"),
    ((Command.code, 1, b"torch.add", (), {}, 2, True, (), True), "Command.op must be str, got bytes"),
    ((Command.code, 1, "torch.add", [], {}, 2, True, (), True), "Command.args must be tuple, got list"),
    ((Command.code, 1, "torch.add", (), [], 2, True, (), True), "Command.kwargs must be dict, got list"),
    ((Command.code, 1, "torch.add", (), {}, 2, True, [1], True), "Command.free must be tuple, got list"),
    ((Free.code, [1, 2]), "Free.ids must be tuple, got list"),
    ((ErrorReply.code, 1, "m", "T", "msg", None, "bob"), "ErrorReply.traceback must be str, got NoneType"),
])
def test_refuses_wrong_field_types(values, expected):
    refuse([raw_header(values)], expected)


def test_refuses_oversized_header(monkeypatch):
    frames = codec.encode(Command(1, "torch.add", (Ref(1), "x" * 200), {}, 2))
    monkeypatch.setattr(codec, "MAX_HEADER_BYTES", 100)
    refuse(frames, f"header of {len(frames[0])} bytes exceeds the 100-byte limit")


def test_header_at_the_limit_is_accepted(monkeypatch):
    frames = codec.encode(Fetch(1, 2))
    monkeypatch.setattr(codec, "MAX_HEADER_BYTES", len(frames[0]))
    assert codec.decode(frames) == Fetch(1, 2)


def test_refuses_a_descriptor_naming_a_missing_frame():
    frames = codec.encode(Value(1, (torch.ones(3),)))  # a tuple is pickled, its tensor a frame
    refuse(frames[:1], "missing frame 0")
    refuse([tensor_header(("float32", (3,), False, ("i", 5), None)), b"\0" * 12], "missing frame 5")
    refuse([tensor_header(("float32", (3,), False, ("i", -1), None)), b"\0" * 12], "missing frame -1")
    refuse([tensor_header(("float32", (3,), False, ("i", "0"), None)), b"\0" * 12], "missing frame '0'")


@pytest.mark.parametrize("nbytes", [0, 11, 13, 1000])
def test_refuses_a_frame_with_the_wrong_byte_count(nbytes):
    header = codec.encode(Value(1, (torch.ones(3),)))[0]
    refuse([header, b"\0" * nbytes], f"tensor data has {nbytes} bytes", "need 12")


@pytest.mark.parametrize("name", ["float33", "", "Tensor", "torch.float32", "FLOAT32", "__class__"])
def test_refuses_an_unknown_dtype(name):
    refuse([tensor_header((name, (1,), False, ("i", 0), None)), b"\0" * 4], "unknown dtype", repr(name))


def test_refuses_a_non_string_dtype():
    refuse([tensor_header((["float32"], (1,), False, ("i", 0), None)), b"\0" * 4], "unknown dtype")


@pytest.mark.parametrize("desc, fragment", [
    ("float32", "malformed tensor descriptor"),
    (("float32", (1,), False, ("i", 0)), "malformed tensor descriptor"),
    (("float32", ("x",), False, ("i", 0), None), "malformed tensor descriptor"),
    (("float32", (-1,), False, ("i", 0), None), "negative size"),
    (("float32", (1,), False, ("x", 0), None), "unknown tensor data location"),
    (("float32", (1,), False, None, None), "unknown tensor data location"),
])
def test_refuses_malformed_descriptors(desc, fragment):
    refuse([tensor_header(desc), b"\0" * 8], fragment)


@pytest.mark.parametrize("pid, fragment", [
    (("T",), "malformed persistent id"),
    ("T", "malformed persistent id"),
    (("T", 1, 2), "malformed persistent id"),
    (("X", 1), "unknown persistent id"),
    (("R", "7"), "object reference must be an int, got str"),
    (("R", 1.0), "object reference must be an int, got float"),
    (("M", "no_format"), "unknown persistent id"),
    (("L", "nope"), "unknown persistent id"),
    (("M", 5), "unknown persistent id"),
])
def test_refuses_malformed_persistent_ids(pid, fragment):
    refuse([raw_header((Value.code, 1, _Pid(pid)))], fragment)


def _segment_desc(path, nbytes, ticket=1):
    return ("uint8", (nbytes,), False, ("s", str(path), nbytes, ticket), None)


def _segment_path(namespace, token="0" * 16):
    return os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(namespace)}{os.getpid()}_{token}")


def test_refuses_a_segment_path_outside_shm(tmp_path):
    victim = tmp_path / "simsyft_victim-1_1_1"  # named like a segment, but not in SHM_DIR
    victim.write_bytes(b"\1" * 64)
    refuse([tensor_header(_segment_desc(victim, 64))], "refusing shared-memory path", "not a simsyft segment")
    assert victim.exists() and victim.read_bytes() == b"\1" * 64


@pytest.mark.parametrize("name", ["notsimsyft_{u}", "simsyft_{u}", "simsyft_{u}_1", "simsyft_{u}_1_x", "simsyft_{u}_1_2.bak"])
def test_refuses_a_shm_file_not_named_like_a_segment(name):
    victim = os.path.join(shm.SHM_DIR, name.format(u=f"{os.getpid()}-test{uuid.uuid4().hex}"))
    with open(victim, "wb") as f:
        f.write(b"\1" * 64)
    try:
        refuse([tensor_header(_segment_desc(victim, 64))], "not a simsyft segment")
        assert os.path.exists(victim), "the decoder unlinked a file it refused"
    finally:
        os.unlink(victim)


@pytest.mark.parametrize("path", ["/etc/passwd", "/dev/shm/../etc/passwd", "relative/simsyft_a_1_2", 5, None])
def test_refuses_other_paths(path):
    refuse([tensor_header(("uint8", (1,), False, ("s", path, 1, 1), None))], "refusing shared-memory path")
    if path == "/etc/passwd":
        assert os.path.exists(path)


def test_refuses_a_missing_segment(ns):
    refuse([tensor_header(_segment_desc(_segment_path(ns), 64))], "does not exist", namespace=ns)


def test_refuses_a_segment_of_a_closed_simulation(ns):
    frames = codec.encode(Value(1, big_tensor()), ns)
    segments.sweep(ns)
    refuse(frames, "does not exist", namespace=ns)


def test_refuses_a_segment_of_the_wrong_size(ns):
    path = _segment_path(ns)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"\0" * 32)
    os.close(fd)
    refuse([tensor_header(_segment_desc(path, 64))], "has 32 bytes", f"says {shm.HEADER + 64}", namespace=ns)
    refuse([tensor_header(("uint8", (64,), False, ("s", path, 32, 1), None))], "holds 32 bytes", "needs 64",
           namespace=ns)
    assert os.path.exists(path)  # refused before mapping: not consumed
    os.unlink(path)


def test_default_namespace_round_trips_a_large_tensor():
    before = set(shm.list_segments())
    frames = codec.encode(Value(1, big_tensor()))
    try:
        decoded = codec.decode(frames)
        assert torch.equal(decoded.value, big_tensor())
    finally:
        segments.close("")
        for name in set(shm.list_segments()) - before:
            if f"_{os.getpid()}_" in name:
                os.unlink(os.path.join(shm.SHM_DIR, name))
