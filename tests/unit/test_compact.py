"""compact.py: the fixed binary layouts (Command, Ack, Store, Fetch, Value).

A message whose fields are plain takes a layout (first header byte = its tag, never the
pickle PROTO byte 0x80) and decodes to exactly what the pickle path would give; anything
else falls back to pickle and still round-trips; decoded tensors own torch-allocated
memory; every malformed frame is refused with ProtocolError; a worker answers a bad
compact request with an ErrorReply carrying its seq.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import uuid
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simsyft import testing

from simsyft.wire import codec, compact, messages, segments, shm, tensors
from simsyft.errors import ProtocolError
from simsyft.wire.messages import Ack, Command, ErrorReply, Fetch, Message, Ref, Store, Value
from simsyft.worker.core import WorkerCore

PICKLE = b"\x80"
TAGS = {Command: b"C", Ack: b"A", Store: b"S", Value: b"V", Fetch: b"F"}
MESSAGE_TYPES = tuple(codec._KINDS.values())
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
NAN, INF = float("nan"), float("inf")

# The documented layouts, spelled out here so a silent change to the wire format fails a test.
COMMAND_HEAD = struct.Struct("<BBBBHqq")   # tag, flags, len(op), len(args), len(free), seq, result_id
ACK_HEAD = struct.Struct("<BBBBBBxxqq")    # tag, kind, dtype, ndim, requires_grad, len(device), seq, id
TENSOR_HEAD = struct.Struct("<BBBBxxxxqq")  # tag, dtype, ndim, requires_grad, seq, id
FETCH_HEAD = struct.Struct("<BBxxxxxxqq")  # tag, remove, seq, id

FLOAT_DTYPES = [d for d in compact._DTYPES if d.is_floating_point or d.is_complex]
INT_DTYPES = [d for d in compact._DTYPES if not (d.is_floating_point or d.is_complex)]


# -- helpers ------------------------------------------------------------------

@pytest.fixture
def ns():
    """A namespace of this test's own; the test must leave no segment of it behind."""
    namespace = f"{os.getpid()}-test{uuid.uuid4().hex}"
    yield namespace
    segments.close(namespace)
    leftover = shm.list_segments(namespace)
    segments.sweep(namespace)
    assert leftover == [], f"test left shared-memory segments behind: {leftover}"


def same(a, b, path="msg"):
    """Deep equality with exact types: floats bit for bit (nan, -0.0), tensors via testing.assert_same."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        testing.assert_same(a, b, path)
        assert a.is_leaf and b.is_leaf, path
    elif type(a) is float:
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, Message):
        for field in dataclasses.fields(a):
            same(getattr(a, field.name), getattr(b, field.name), f"{path}.{field.name}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def compact_frames(msg):
    """codec.encode(msg), asserting it took msg's layout: one bytes frame starting with its tag."""
    assert compact.encode(msg) is not None, f"{msg!r:.200} did not qualify for a layout"
    frames = codec.encode(msg)
    assert len(frames) == 1 and type(frames[0]) is bytes
    header = frames[0]
    assert header[:1] == TAGS[type(msg)] and header[:1] != PICKLE
    assert compact.is_compact(header)
    return frames


def pickle_frames(msg, namespace=""):
    """msg through the pickle path only (as codec.encode would send it without compact.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compact, "encode", lambda _msg: None)
        frames = codec.encode(msg, namespace)
    assert frames[0][:1] == PICKLE
    return frames


def decode_both(frames, resolve=None):
    """decode and strict decode agree; returns the first."""
    loose = codec.decode(frames, resolve=resolve)
    strict = codec.decode(frames, resolve=resolve, strict=True)
    same(loose, strict)
    return loose


def assert_compact_round_trip(msg, resolve=None):
    """Compact round trip gives the message back, and exactly what the pickle path gives."""
    decoded = decode_both(compact_frames(msg), resolve)
    assert type(decoded) is type(msg)
    expected = decode_both(pickle_frames(msg), resolve)
    same(decoded, expected, "compact vs pickle")
    return decoded


def assert_pickled_round_trip(msg, namespace="", expected=None):
    """msg falls back to pickle (compact.encode gives None) and still round-trips."""
    assert compact.encode(msg) is None
    frames = codec.encode(msg, namespace)
    assert frames[0][:1] == PICKLE and not compact.is_compact(frames[0])
    decoded = decode_both(frames)
    same(decoded, msg if expected is None else expected)
    return decoded


def sample(dtype, shape=(2, 3), seed=0):
    """A tensor of `dtype` with arbitrary bit patterns (nan payloads, -0.0, inf for floats)."""
    n = math.prod(shape)
    if dtype is torch.bool:
        return (torch.arange(n) % 3 == 0).reshape(shape)
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=generator)
    t = raw.view(dtype).reshape(shape).clone()
    if dtype.is_floating_point and n >= 5:
        flat = t.view(-1)
        flat[:5] = torch.tensor([0.0, -0.0, NAN, INF, -INF]).to(dtype)
    return t


def refuse(header, *fragments, direct=True):
    """Both decode modes refuse `header` with ProtocolError (and nothing else); with `direct`,
    so does compact.decode itself (its docstring promises ProtocolError for a malformed header)."""
    for strict in (False, True):
        with pytest.raises(ProtocolError) as info:
            codec.decode([header], strict=strict)
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)
    if direct and header[:1] != PICKLE:
        with pytest.raises(ProtocolError):
            compact.decode(header, None)


def patched(header, offset, value):
    frame = bytearray(header)
    frame[offset] = value
    return bytes(frame)


def tensor_header(tag, dtype_index, shape, requires_grad=0, seq=1, object_id=2, data=b""):
    return (TENSOR_HEAD.pack(ord(tag), dtype_index, len(shape), requires_grad, seq, object_id)
            + struct.pack(f"<{len(shape)}q", *shape) + data)


# -- 1. round trips through the layouts --------------------------------------------

SCALARS = (0, 1, -1, INT64_MIN, INT64_MAX, 1.5, NAN, INF, -INF, -0.0, 0.0, 5e-324, True, False, None)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("reply", [True, False])
@pytest.mark.parametrize("free", [(), (5,), (1, INT64_MIN, INT64_MAX, 0)], ids=["no-free", "one-free", "free"])
def test_command_round_trips(grad_enabled, reply, free):
    args = (Ref(3), Ref(INT64_MAX), Ref(INT64_MIN), Ref(0), *SCALARS)
    msg = Command(17, "torch.add", args, {}, 99, grad_enabled, free, reply)
    decoded = assert_compact_round_trip(msg)
    same(decoded, msg)
    assert [type(a) for a in decoded.args] == [type(a) for a in args]  # True stays bool, 1 stays int
    assert decoded.args[-3] is True and decoded.args[-2] is False and decoded.args[-1] is None
    assert decoded.grad_enabled is grad_enabled and decoded.reply is reply
    assert decoded.free == free and type(decoded.free) is tuple
    assert decoded.kwargs == {} and type(decoded.kwargs) is dict


@pytest.mark.parametrize("msg", [
    Command(0, "torch.Tensor.neg", (), {}, 1),
    Command(INT64_MIN, "", (Ref(1),), {}, INT64_MAX),
    Command(INT64_MAX, "x" * 255, tuple(range(255)), {}, INT64_MIN, free=tuple(range(300))),
    Command(3, "torch.mul", (1, 1.0, True), {}, 4),  # 1, 1.0 and True are equal, their codes are not
], ids=["no-args", "extreme-ids", "max-op-and-args", "equal-scalars"])
def test_command_edge_round_trips(msg):
    decoded = assert_compact_round_trip(msg)
    same(decoded, msg)


scalar_args = st.one_of(
    st.integers(INT64_MIN, INT64_MAX), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.builds(Ref, st.integers(INT64_MIN, INT64_MAX)),
)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seq=st.integers(INT64_MIN, INT64_MAX), op=st.text(st.characters(max_codepoint=127), max_size=40),
       args=st.lists(scalar_args, max_size=12).map(tuple), result_id=st.integers(INT64_MIN, INT64_MAX),
       grad_enabled=st.booleans(), free=st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=5).map(tuple),
       reply=st.booleans())
def test_any_plain_command_round_trips(seq, op, args, result_id, grad_enabled, free, reply):
    msg = Command(seq, op, args, {}, result_id, grad_enabled, free, reply)
    same(assert_compact_round_trip(msg), msg)


def test_command_args_resolve_through_the_resolver():
    msg = Command(1, "torch.add", (Ref(4), 2, Ref(5)), {}, 3)
    stored = {4: torch.ones(2), 5: torch.zeros(2)}
    decoded = assert_compact_round_trip(msg, resolve=stored.__getitem__)
    assert decoded.args[0] is stored[4] and decoded.args[2] is stored[5] and decoded.args[1] == 2


def test_command_header_layout():
    header = compact_frames(Command(7, "op", (Ref(9), 2.5, None), {}, 8, False, (11,), True))[0]
    assert COMMAND_HEAD.unpack_from(header) == (ord("C"), 2, 2, 3, 1, 7, 8)
    body = header[COMMAND_HEAD.size:]
    assert body[:2] == b"op" and body[2:5] == b"RfN"
    assert struct.unpack_from("<qd8xq", body, 5) == (9, 2.5, 11)
    assert len(body) == 5 + 4 * 8


ACK_RESULTS = [
    ("p", 42, "float32", (2, 3), False, "cpu"),
    ("a", 7, "float64", (4,), True, "cpu"),
    ("p", INT64_MAX, "int64", (), False, "cpu"),  # 0-d
    ("a", INT64_MIN, "bool", (0,), False, "cpu"),  # 0-size
    ("p", 1, "complex64", (0, 3, 0), True, "cuda:1"),
    ("p", 2, "bfloat16", (1,) * 255, False, ""),
    ("p", 3, "uint8", (2**62, 5), False, "cpu"),
    ("n",),
] + [("p", i, tensors.dtype_name(d), (i,), False, "cpu") for i, d in enumerate(compact._DTYPES)]


@pytest.mark.parametrize("result", ACK_RESULTS, ids=lambda r: repr(r)[:40])
def test_ack_round_trips(result):
    msg = Ack(-5, result)
    decoded = assert_compact_round_trip(msg)
    same(decoded, msg)


def test_ack_header_layout():
    header = compact_frames(Ack(5, ("a", 6, "int32", (2, 0), True, "cpu")))[0]
    assert ACK_HEAD.unpack_from(header) == (ord("A"), 1, compact._DTYPES.index(torch.int32), 2, 1, 3, 5, 6)
    assert header[ACK_HEAD.size:] == struct.pack("<2q", 2, 0) + b"cpu"
    assert ACK_HEAD.unpack_from(compact_frames(Ack(9, ("n",)))[0])[:2] == (ord("A"), 2)


def _store_and_value(tensor):
    return [Store(3, 42, tensor), Value(4, tensor)]


def _tensors_per_dtype():
    cases = []
    for i, dtype in enumerate(compact._DTYPES):
        name = tensors.dtype_name(dtype)
        cases += [
            pytest.param(sample(dtype, seed=i), id=f"{name}-2x3"),
            pytest.param(sample(dtype, (1,), seed=i).reshape(()), id=f"{name}-0d"),
            pytest.param(torch.empty(0, 3, dtype=dtype), id=f"{name}-0x3"),
        ]
    return cases


@pytest.mark.parametrize("tensor", _tensors_per_dtype())
@pytest.mark.parametrize("kind", ["Store", "Value"])
def test_tensor_round_trips_for_every_dtype(tensor, kind):
    msg = Store(3, 42, tensor) if kind == "Store" else Value(4, tensor)
    decoded = assert_compact_round_trip(msg)
    same(decoded, msg)


def _special_tensors():
    base = torch.arange(12.0).reshape(3, 4)
    return [
        pytest.param(torch.arange(10.0)[3:8], id="storage-offset"),
        pytest.param(base[1:2, :], id="row-view-offset"),
        pytest.param(base[2, 3], id="0d-view"),
        pytest.param(torch.arange(2.0)[::2], id="one-element-strided"),
        pytest.param(torch.arange(tensors.INLINE_MAX // 4, dtype=torch.float32), id="exactly-INLINE_MAX-f32"),
        pytest.param(torch.ones(tensors.INLINE_MAX, dtype=torch.uint8), id="exactly-INLINE_MAX-u8"),
        pytest.param(torch.ones([1] * 40), id="40-dims"),
        pytest.param(torch.nn.Parameter(torch.arange(3.0)), id="parameter"),
    ] + [
        pytest.param(sample(d, seed=7).requires_grad_(True), id=f"requires-grad-{tensors.dtype_name(d)}")
        for d in FLOAT_DTYPES
    ]


@pytest.mark.parametrize("tensor", _special_tensors())
@pytest.mark.parametrize("kind", ["Store", "Value"])
def test_special_tensor_round_trips(tensor, kind):
    msg = Store(INT64_MAX, INT64_MIN, tensor) if kind == "Store" else Value(INT64_MIN, tensor)
    decoded = assert_compact_round_trip(msg)
    # A Parameter arrives as a plain tensor (as through pickle); the values, dtype, shape and grad flag are kept.
    testing.assert_same(decoded.value, tensor)
    assert type(decoded.value) is torch.Tensor and decoded.value.is_leaf and decoded.value.grad is None
    assert decoded.value.is_contiguous() and decoded.value.storage_offset() == 0


def test_store_header_layout():
    t = torch.tensor([[1, 2, 3]], dtype=torch.int16)
    header = compact_frames(Store(5, 6, t))[0]
    assert TENSOR_HEAD.unpack_from(header) == (ord("S"), compact._DTYPES.index(torch.int16), 2, 0, 5, 6)
    assert header[TENSOR_HEAD.size:] == struct.pack("<2q", 1, 3) + struct.pack("<3h", 1, 2, 3)
    header = compact_frames(Value(7, torch.tensor(2.0, requires_grad=True)))[0]
    assert TENSOR_HEAD.unpack_from(header) == (ord("V"), 0, 0, 1, 7, 0)
    assert header[TENSOR_HEAD.size:] == struct.pack("<f", 2.0)


@pytest.mark.parametrize("msg", [Fetch(5, 42), Fetch(6, 43, False), Fetch(INT64_MIN, INT64_MAX, True),
                                 Fetch(INT64_MAX, INT64_MIN, False)], ids=repr)
def test_fetch_round_trips(msg):
    decoded = assert_compact_round_trip(msg)
    same(decoded, msg)
    assert FETCH_HEAD.unpack(compact_frames(msg)[0]) == (ord("F"), int(msg.remove), msg.seq, msg.id)


def test_decode_accepts_bytearray_and_memoryview_frames():
    for msg in (Command(1, "torch.add", (Ref(1), 2.0), {}, 3), Store(1, 2, torch.arange(3.0)), Fetch(1, 2)):
        header = compact_frames(msg)[0]
        same(codec.decode([bytearray(header)]), msg)
        same(codec.decode([memoryview(header)], strict=True), msg)


# -- 2. fallbacks to pickle ----------------------------------------------------------

@pytest.mark.parametrize("msg", [
    Command(1, "torch.add", (Ref(1), 2), {"alpha": 2}, 3),
    Command(1, "torch.cat", ((Ref(1), Ref(2)),), {}, 3),
    Command(1, "torch.Tensor.sum", (Ref(1), [0, 1]), {}, 3),
    Command(1, "torch.add", (Ref(1), 1 << 63), {}, 3),
    Command(1, "torch.add", (Ref(1), INT64_MIN - 1), {}, 3),
    Command(1, "torch.add", (Ref(1), 1 << 80), {}, 3),
    Command(1, "torch.äd", (Ref(1),), {}, 3),
    Command(1, "torch.Tensor.to", (Ref(1), torch.float16), {}, 3),
    Command(1, "torch.Tensor.view", (Ref(1), torch.Size([2, 3])), {}, 3),
    Command(1, "torch.einsum", ("ii", Ref(1)), {}, 3),
    Command(1, "torch.add", (Ref(1), 1 + 2j), {}, 3),
    Command(1, "torch.Tensor.__getitem__", (Ref(1), slice(1, None)), {}, 3),
    Command(1, "x" * 256, (Ref(1),), {}, 3),
    Command(1, "torch.stack", tuple(range(256)), {}, 3),
    Command(1, "torch.add", (Ref(1 << 63),), {}, 3),
    Command(1 << 63, "torch.add", (Ref(1),), {}, 3),
    Command(1, "torch.add", (Ref(1),), {}, INT64_MIN - 1),
    Command(1, "torch.add", (Ref(1),), {}, 3, free=(1 << 64,)),
    Command(1, "torch.add", (Ref(1),), {}, 3, free=tuple(range(0x10000))),
], ids=["kwargs", "nested-tuple", "list", "int-2**63", "int-below-int64", "int-2**80", "non-ascii-op",
        "dtype-arg", "size-arg", "str-arg", "complex-arg", "slice-arg", "op-256-chars", "256-args",
        "ref-2**63", "seq-2**63", "result-id-below-int64", "free-2**64", "65536-frees"])
def test_command_falls_back_to_pickle(msg):
    assert_pickled_round_trip(msg)


@pytest.mark.parametrize("result", [
    ("v", 3),
    ("v", 2.5),
    ("q", "tuple", (("p", 1, "float32", (), False, "cpu"), ("n",))),
    ("p", 1, "uint16", (2,), False, "cpu"),  # a dtype no layout carries
    ("p", 1, "float32", [2, 3], False, "cpu"),  # a list shape stays a list
    ("p", 1, "float32", torch.Size([2, 3]), False, "cpu"),
    ("p", 1, "float32", (2,), False, "cpü"),
    ("p", 1 << 63, "float32", (2,), False, "cpu"),
    ("p", 1, "float32", (1 << 63,), False, "cpu"),
    ("p", 1, "float32", (1,) * 256, False, "cpu"),
    ("x", 1, "float32", (2,), False, "cpu"),
], ids=repr)
def test_ack_falls_back_to_pickle(result):
    assert_pickled_round_trip(Ack(1, result))


@pytest.mark.parametrize("msg", [
    Store(1, 2, torch.arange(3.0), tags=("#x",)),
    Store(1, 2, torch.arange(3.0), description="a scan"),
    Store(1, 2, torch.arange(3.0), tags=("#a", "#b"), description=""),
], ids=["tags", "description", "both"])
def test_store_with_tags_or_description_falls_back_to_pickle(msg):
    assert_pickled_round_trip(msg)


def _with_grad():
    t = torch.arange(3.0, requires_grad=True)
    t.grad = torch.full((3,), 0.5)
    return t


def _unsupported_dtypes():
    found = []
    for name, dtype in sorted(tensors._DTYPES.items()):
        if dtype in compact._DTYPES or dtype in [d for d, _ in found]:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.zeros(3, dtype=dtype)
                testing.compare._bits(t)
        except Exception:  # quantized and sub-byte dtypes: torch cannot make or copy them plainly
            continue
        if t.is_quantized:
            continue
        found.append((dtype, t))
    return [pytest.param(t, id=f"dtype-{tensors.dtype_name(d)}") for d, t in found]


def _fallback_tensors():
    base = torch.arange(6.0).reshape(2, 3)
    complex_ = torch.tensor([1 + 2j, -3 - 4j])
    return [
        pytest.param(_with_grad(), id="with-grad"),
        pytest.param(torch.arange(3.0, requires_grad=True) * 2, id="non-leaf"),
        pytest.param(base.t(), id="transposed"),
        pytest.param(torch.arange(6.0)[::2], id="strided"),
        pytest.param(torch.ones(1).expand(4), id="expanded"),
        pytest.param(complex_.conj(), id="conj"),
        pytest.param(complex_.conj().imag, id="neg-bit-strided"),
        pytest.param(torch._neg_view(torch.arange(3.0)), id="neg-bit"),
        pytest.param(torch._neg_view(complex_), id="neg-bit-complex"),
        pytest.param(torch._efficientzerotensor(3), id="zerotensor"),
        pytest.param(torch.arange(tensors.INLINE_MAX // 4 + 1, dtype=torch.float32), id="INLINE_MAX+4"),
        pytest.param(torch.ones(tensors.INLINE_MAX + 1, dtype=torch.uint8), id="INLINE_MAX+1"),
    ] + _unsupported_dtypes()


@pytest.mark.parametrize("tensor", _fallback_tensors())
@pytest.mark.parametrize("kind", ["Store", "Value"])
def test_tensor_falls_back_to_pickle(tensor, kind, ns):
    msg = Store(1, 2, tensor) if kind == "Store" else Value(1, tensor)
    assert compact.encode(msg) is None
    frames = codec.encode(msg, ns)
    assert frames[0][:1] == PICKLE
    decoded = codec.decode(frames, namespace=ns)
    # A segment's descriptor is good for one decode (its ticket): the strict decode gets its own.
    same(decoded, codec.decode(codec.encode(msg, ns), strict=True, namespace=ns))
    testing.assert_same(decoded.value, tensor)
    assert decoded.seq == msg.seq and (kind == "Value" or decoded.id == msg.id)


def test_dtypes_without_a_layout_are_covered():
    names = {tensors.dtype_name(d) for d in tensors._DTYPES.values()} - set(compact._DTYPE_NAMES)
    assert {"complex32", "float8_e4m3fn", "uint16"} <= names
    assert len(_unsupported_dtypes()) >= 3


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensor_is_not_laid_out():
    sparse = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).to_sparse()
    assert compact.encode(Store(1, 2, sparse)) is None
    assert compact.encode(Value(1, sparse)) is None
    assert compact.encode(Value(1, torch.tensor([[0.0, 1.0]]).to_sparse_csr())) is None


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize("value", [5, 2.5, None, "text", (torch.arange(3.0),), [torch.arange(2)], {"a": 1},
                                   ((1, torch.ones(2)), (2, torch.zeros(0)))],
                         ids=["int", "float", "none", "str", "tuple-of-tensor", "list", "dict", "objects"])
def test_value_of_a_non_tensor_falls_back_to_pickle(value):
    assert_pickled_round_trip(Value(3, value))


def test_tensor_subclass_is_not_laid_out():
    t = torch.arange(3.0).as_subclass(_Subclass)
    assert compact.encode(Value(1, t)) is None and compact.encode(Store(1, 2, t)) is None


def test_messages_without_a_layout_are_not_laid_out():
    for msg in (ErrorReply(1, "m", "T", "msg", "tb", "bob"), messages.Free((1, 2)), messages.Info(3)):
        assert compact.encode(msg) is None
        assert codec.encode(msg)[0][:1] == PICKLE


def _forbidden_view():
    y = torch.tensor([1.0, 2.0], requires_grad=True) * 1
    with torch.no_grad():
        view = y.view(-1)
    y.add_(1)  # now torch refuses to let autograd look at `view`: reading .is_leaf raises
    return view


@pytest.mark.parametrize("kind", ["Store", "Value"])
def test_forbidden_no_grad_view_falls_back_to_pickle(kind):
    # Regression: _tensor_parts read .is_leaf unguarded, so encode raised RuntimeError ("A view was
    # created in no_grad mode ...") instead of pickling (tests/property/test_regressions.py #6).
    view = _forbidden_view()
    msg = Store(1, 2, view) if kind == "Store" else Value(1, view)
    assert compact.encode(msg) is None
    frames = codec.encode(msg)
    assert frames[0][:1] == PICKLE
    decoded = decode_both(frames).value
    assert torch.equal(decoded.detach(), torch.tensor([2.0, 3.0]))
    same(decode_both(pickle_frames(msg)).value, decoded)


@pytest.mark.parametrize("make", [lambda t: Store(1, 1 << 63, t), lambda t: Store(INT64_MIN - 1, 2, t),
                                  lambda t: Value(1 << 63, t)], ids=["store-id", "store-seq", "value-seq"])
def test_out_of_int64_store_and_value_fall_back_to_pickle(make):
    msg = make(torch.arange(3.0))
    same(decode_both(pickle_frames(msg)), msg)  # the pickle path carries it
    assert_pickled_round_trip(msg)


# -- 3. decoded tensors own their memory ------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: torch.arange(5.0), lambda: torch.tensor(3, dtype=torch.int32), lambda: torch.empty(0, 3),
    lambda: torch.arange(10.0)[3:8], lambda: torch.tensor([True, False]),
], ids=["f32", "0d-int32", "empty", "offset-view", "bool"])
@pytest.mark.parametrize("kind", ["Store", "Value"])
def test_decoded_tensor_owns_resizable_memory(make, kind):
    original = make()
    keep = original.clone()
    msg = Store(1, 2, original) if kind == "Store" else Value(1, original)
    frame = bytearray(compact_frames(msg)[0])
    frame_before = bytes(frame)
    decoded = codec.decode([frame]).value
    assert decoded.untyped_storage().resizable()
    numel = decoded.numel()
    decoded.resize_(numel + 1000)  # as on a local tensor: the storage grows
    keep.clone().resize_(numel + 1000)  # what a local tensor does
    assert decoded.shape == (numel + 1000,)
    decoded.fill_(1)  # writing into it touches neither the original nor the frame
    assert torch.equal(original, keep) and bytes(frame) == frame_before
    again = codec.decode([frame]).value
    testing.assert_same(again, keep)


def test_two_decodes_of_one_frame_do_not_share_memory():
    header = compact_frames(Value(1, torch.arange(4.0)))[0]
    a, b = codec.decode([header]).value, codec.decode([header]).value
    a.add_(10)
    assert torch.equal(b, torch.arange(4.0))
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()


def test_decoded_requires_grad_tensor_is_a_fresh_leaf():
    x = torch.arange(3.0, requires_grad=True)
    decoded = codec.decode(compact_frames(Value(1, x))[0:1]).value
    assert decoded.is_leaf and decoded.requires_grad and decoded.grad is None
    (decoded * 2).sum().backward()
    assert torch.equal(decoded.grad, torch.full((3,), 2.0)) and x.grad is None


# -- 4. malformed frames ---------------------------------------------------------------

def valid_messages():
    return [
        Command(11, "torch.add", (Ref(1), 2, 2.5, True, False, None), {}, 5, True, (8, 9), True),
        Command(12, "torch.neg", (), {}, 6, False, (), False),
        Ack(13, ("p", 42, "float32", (2, 3), True, "cpu")),
        Ack(14, ("a", 7, "int64", (), False, "cpu")),
        Ack(15, ("n",)),
        Store(16, 42, torch.arange(6.0).reshape(2, 3)),
        Store(17, 43, torch.tensor(1.5, requires_grad=True)),
        Value(18, torch.tensor([1, 2, 3], dtype=torch.int16)),
        Value(19, torch.empty(0, 3)),
        Fetch(20, 42, True),
        Fetch(21, 43, False),
    ]


VALID_FRAMES = [codec.encode(m)[0] for m in valid_messages()]
FRAME_IDS = [f"{type(m).__name__}-{m.seq}" for m in valid_messages()]


def test_valid_frames_are_all_compact():
    for msg, header in zip(valid_messages(), VALID_FRAMES):
        assert header[:1] == TAGS[type(msg)]
        same(codec.decode([header]), msg)


@pytest.mark.parametrize("header", VALID_FRAMES, ids=FRAME_IDS)
def test_every_truncation_is_refused(header):
    for cut in range(len(header)):
        for strict in (False, True):
            with pytest.raises(ProtocolError):
                codec.decode([header[:cut]], strict=strict)
        if cut:
            with pytest.raises(ProtocolError):
                compact.decode(header[:cut], None)


@pytest.mark.parametrize("header", VALID_FRAMES, ids=FRAME_IDS)
@pytest.mark.parametrize("extra", [b"\x00", b"\xff", b"\x00" * 8])
def test_trailing_bytes_are_refused(header, extra):
    refuse(header + extra)
    with pytest.raises(ProtocolError):
        compact.decode(header + extra, None)


COMMAND = codec.encode(Command(11, "torch.add", (Ref(1), 2, 2.5, True), {}, 5, True, (8,)))[0]
OP_AT = COMMAND_HEAD.size
CODES_AT = OP_AT + len("torch.add")


@pytest.mark.parametrize("flags", [4, 8, 0x80, 0xFF])
def test_refuses_unknown_command_flags(flags):
    refuse(patched(COMMAND, 1, flags), "flags")


@pytest.mark.parametrize("code", [b"X", b"r", b"\x00", b"\xff", b"C"])
@pytest.mark.parametrize("which", [0, 3])
def test_refuses_unknown_arg_code(code, which):
    refuse(patched(COMMAND, CODES_AT + which, code[0]), "argument code")


@pytest.mark.parametrize("byte", [0x80, 0xC3, 0xFF])
def test_refuses_non_ascii_op(byte):
    refuse(patched(COMMAND, OP_AT + 2, byte), "non-ASCII")


@pytest.mark.parametrize("offset, value", [(2, 8), (2, 10), (3, 3), (3, 5), (4, 0), (4, 2), (5, 1)],
                         ids=["op-len-short", "op-len-long", "nargs-short", "nargs-long", "nfree-short",
                              "nfree-long", "nfree-huge"])
def test_refuses_command_counts_that_disagree_with_the_frame(offset, value):
    refuse(patched(COMMAND, offset, value))


def test_refuses_a_header_with_an_unknown_first_byte():
    for first in (b"Z", b"\x00", b"c", b"\x7f", b"\xff"):
        refuse(first + COMMAND[1:])


STORE = codec.encode(Store(16, 42, torch.arange(6.0).reshape(2, 3)))[0]
VALUE = codec.encode(Value(16, torch.arange(6.0).reshape(2, 3)))[0]
INT_STORE = codec.encode(Store(16, 42, torch.arange(6).reshape(2, 3)))[0]


@pytest.mark.parametrize("header", [STORE, VALUE], ids=["Store", "Value"])
@pytest.mark.parametrize("index", [len(compact._DTYPES), 100, 255])
def test_refuses_dtype_index_out_of_range(header, index):
    refuse(patched(header, 1, index))


@pytest.mark.parametrize("header", [STORE, VALUE], ids=["Store", "Value"])
@pytest.mark.parametrize("flag", [2, 3, 0xFF])
def test_refuses_requires_grad_byte_other_than_0_or_1(header, flag):
    refuse(patched(header, 3, flag))


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=tensors.dtype_name)
@pytest.mark.parametrize("tag", ["S", "V"])
def test_refuses_requires_grad_on_an_integer_tensor(dtype, tag):
    header = codec.encode(Store(1, 2, torch.zeros(3, dtype=dtype)))[0]
    header = tag.encode() + header[1:]
    codec.decode([header])  # valid as it stands
    refuse(patched(header, 3, 1), "requiring grad")


@pytest.mark.parametrize("tag", ["S", "V"])
@pytest.mark.parametrize("shape, data", [
    ((-2, -3), bytes(24)),  # the product matches the data: only the sign is wrong
    ((-1,), b""),
    ((0, -5), b""),
    ((2**62, 2**62), b""),
    ((2**62, 2**62), bytes(24)),
    ((2**63 - 1,), bytes(8)),
    ((0, 2**62, 2**62), b""),  # zero elements, but torch cannot compute its strides
    ((2**62, 2**62, 0), b""),
    ((3,), bytes(11)),
    ((3,), bytes(13)),
], ids=["negative-matching", "negative", "zero-and-negative", "absurd-no-data", "absurd-some-data",
        "int64-max", "zero-and-absurd", "absurd-and-zero", "short-data", "long-data"])
def test_refuses_bad_shapes(tag, shape, data):
    # (0, 2**62, 2**62): zero bytes match, but the other sizes must still count in int64 (torch could not
    # compute the strides); compact.decode itself says so, as for every other malformed header.
    refuse(tensor_header(tag, 0, shape, data=data))


def test_refuses_ndim_beyond_the_frame():
    refuse(tensor_header("S", 0, (3,), data=bytes(12))[:2] + b"\xff" + tensor_header("S", 0, (3,), data=bytes(12))[3:])


ACK = codec.encode(Ack(13, ("p", 42, "float32", (2, 3), True, "cpu")))[0]
ACK_NONE = codec.encode(Ack(15, ("n",)))[0]


@pytest.mark.parametrize("header", [ACK, ACK_NONE], ids=["p", "n"])
@pytest.mark.parametrize("kind", [3, 4, 0xFF])
def test_refuses_unknown_ack_kind(header, kind):
    refuse(patched(header, 1, kind))


@pytest.mark.parametrize("offset, value", [(2, len(compact._DTYPES)), (2, 0xFF), (4, 2), (4, 0xFF), (3, 3), (3, 0xFF),
                                           (5, 2), (5, 4), (ACK_HEAD.size + 16, 0xC3)],
                         ids=["dtype", "dtype-255", "requires-grad-2", "requires-grad-255", "ndim-long",
                              "ndim-255", "device-short", "device-long", "device-non-ascii"])
def test_refuses_malformed_ack(offset, value):
    refuse(patched(ACK, offset, value))


def test_refuses_an_ack_of_negative_size():
    header = bytearray(ACK)
    header[ACK_HEAD.size:ACK_HEAD.size + 8] = (-2).to_bytes(8, "little", signed=True)
    refuse(bytes(header))


FETCH = codec.encode(Fetch(20, 42, True))[0]


@pytest.mark.parametrize("remove", [2, 3, 0x80, 0xFF])
def test_refuses_fetch_remove_byte_other_than_0_or_1(remove):
    refuse(patched(FETCH, 1, remove))


@pytest.mark.parametrize("header", VALID_FRAMES, ids=FRAME_IDS)
def test_refuses_a_layout_followed_by_extra_frames(header):
    for extra in ([b""], [b"\x00" * 8], [b"x", b"y"]):
        with pytest.raises(ProtocolError):
            codec.decode([header, *extra])
        with pytest.raises(ProtocolError):
            codec.decode([header, *extra], strict=True)


def test_refuses_empty_and_one_byte_headers():
    refuse(b"")
    for tag in TAGS.values():
        refuse(tag)


def _damage(header, edits, cut, extra):
    frame = bytearray(header)
    for position, value in edits:
        frame[position % len(frame)] = value
    if cut is not None:
        del frame[cut % (len(frame) + 1):]
    return bytes(frame + extra)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(index=st.integers(0, len(VALID_FRAMES) - 1),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 1 << 16),
       extra=st.binary(max_size=9),
       strict=st.booleans(),
       resolve=st.booleans())
def test_damaged_frames_are_refused_or_decode_to_a_message(index, edits, cut, extra, strict, resolve):
    header = _damage(VALID_FRAMES[index], edits, cut, extra)
    try:
        msg = codec.decode([header], resolve=(lambda i: ("stored", i)) if resolve else None, strict=strict)
    except ProtocolError:
        return
    assert isinstance(msg, MESSAGE_TYPES)
    if header[:1] != PICKLE:  # a layout decodes only to its own message kinds
        assert type(msg) in TAGS and header[:1] == TAGS[type(msg)]


# -- 5. peek_seq and the worker ---------------------------------------------------------

@pytest.mark.parametrize("msg", valid_messages() + [Command(-7, "op", (), {}, 1), Fetch(INT64_MIN, 1),
                                                    Value(INT64_MAX, torch.ones(2)), Ack(-1, ("n",))],
                         ids=lambda m: f"{type(m).__name__}-{m.seq}")
def test_peek_seq_reads_the_seq_of_every_layout(msg):
    header = compact_frames(msg)[0]
    assert compact.peek_seq(header) == msg.seq
    assert codec.peek_seq([header]) == msg.seq
    seq_end = 14 if type(msg) is Command else 16
    assert compact.peek_seq(header[:seq_end]) == msg.seq  # a header cut just after the seq still names it
    assert compact.peek_seq(header[:seq_end - 1]) == -1


def test_peek_seq_of_empty_short_or_foreign_headers_is_minus_one():
    assert compact.peek_seq(b"") == -1
    for tag in TAGS.values():
        assert compact.peek_seq(tag) == -1
        assert compact.peek_seq(tag + bytes(5)) == -1
    assert compact.peek_seq(b"Z" + bytes(30)) == -1
    assert compact.peek_seq(codec.encode(Command(5, "op", (), {"a": 1}, 1))[0]) == -1  # a pickle


def _reply(frames):
    assert frames is not None
    return codec.decode(frames)


@pytest.fixture
def core():
    return WorkerCore("bob")


def test_worker_answers_a_malformed_compact_command_with_its_seq(core):
    good = codec.encode(Command(77, "torch.add", (Ref(1), Ref(2)), {}, 3))[0]
    bad_headers = [
        patched(good, 1, 0xFF),  # unknown flags
        patched(good, OP_AT + 1, 0xFF),  # non-ASCII op
        patched(good, CODES_AT, ord("X")),  # unknown arg code
        good + b"\x00",
        good[:-1],
        good[:14],
    ]
    for header in bad_headers:
        reply = _reply(core.handle([header]))
        assert type(reply) is ErrorReply and reply.seq == 77, reply
        assert reply.type_name == "ProtocolError" and reply.worker == "bob"
    reply = _reply(core.handle([good[:13]]))  # too short to name its seq
    assert type(reply) is ErrorReply and reply.seq == -1
    for header in (patched(STORE, 3, 2), patched(ACK, 1, 9), patched(FETCH, 1, 2)):
        reply = _reply(core.handle([header]))
        assert type(reply) is ErrorReply and reply.seq == compact.peek_seq(header) and reply.type_name == "ProtocolError"
    assert core.running and core.store == {}


def test_worker_runs_a_compact_command(core):
    a, b = torch.arange(6.0).reshape(2, 3), torch.full((2, 3), 0.5)
    for seq, object_id, t in ((1, 101, a), (2, 102, b)):
        frames = core.handle(compact_frames(Store(seq, object_id, t)))
        assert frames[0][:1] == b"A"  # the worker's Ack takes the layout too
        same(_reply(frames), Ack(seq, ("p", object_id, "float32", (2, 3), False, "cpu")))
    frames = core.handle(compact_frames(Command(3, "torch.add", (Ref(101), Ref(102)), {}, 103)))
    assert frames[0][:1] == b"A"
    same(_reply(frames), Ack(3, ("p", 103, "float32", (2, 3), False, "cpu")))
    testing.assert_same(core.store[103], a + b)

    frames = core.handle(compact_frames(Command(4, "torch.mul", (Ref(101), 2), {}, 104, free=(103,))))
    same(_reply(frames), Ack(4, ("p", 104, "float32", (2, 3), False, "cpu")))
    assert 103 not in core.store
    assert core.handle(compact_frames(Command(5, "torch.sub", (Ref(104), 1.5), {}, 105, reply=False))) is None
    testing.assert_same(core.store[105], a * 2 - 1.5)

    frames = core.handle(compact_frames(Fetch(6, 105, False)))
    assert frames[0][:1] == b"V"
    reply = _reply(frames)
    assert type(reply) is Value and reply.seq == 6
    testing.assert_same(reply.value, a * 2 - 1.5)

    reply = _reply(core.handle(compact_frames(Command(7, "torch.add", (Ref(999), 1), {}, 106))))
    assert type(reply) is ErrorReply and reply.seq == 7 and reply.type_name == "ObjectNotFoundError"
