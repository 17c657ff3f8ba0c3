"""Protocol properties: every message kind round-trips; bad frames are refused, never crash.

The decoder must answer a truncated, oversized, mistyped, unknown or mutated frame with a
ProtocolError (and nothing else), and a worker sent such frames must reply with an error
and keep serving: in-process (WorkerCore) and over a raw ZeroMQ socket to a real worker.
"""

from __future__ import annotations

import io
import math
import os
import pickle

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simsyft.wire import codec, messages, segments, shm, tensors as wire_tensors
from simsyft.errors import ProtocolError
from simsyft.testing import DTYPES, tensors
from simsyft.worker.core import WorkerCore

THOROUGH = settings.default.max_examples >= 1000  # the `thorough` profile (tests/property/conftest.py)


def examples(ci: int, thorough: int) -> int:
    return thorough if THOROUGH else ci
NAMESPACE = f"{os.getpid()}-proptest"  # the root conftest checks that this pid leaves no segment


@pytest.fixture(scope="module", autouse=True)
def close_pool():
    """Segments are pooled while the module runs (segments.py); none may outlive it."""
    yield
    segments.sweep(NAMESPACE)


# -- strategies for wire values and messages --------------------------------------------

ints = st.one_of(st.integers(-2, 2**63 - 1), st.integers())
small_tensors = tensors(max_dims=2, max_side=3, requires_grad=None)
leaves = st.one_of(
    st.none(), st.booleans(), ints, st.floats(), st.text(max_size=6), st.binary(max_size=6),
    st.complex_numbers(), st.just(Ellipsis), st.sampled_from(DTYPES),
    st.builds(slice, st.none() | st.integers(-3, 3), st.none() | st.integers(-3, 3), st.none() | st.integers(1, 3)),
    st.builds(range, st.integers(-3, 3), st.integers(-3, 3)),
    st.lists(st.integers(0, 4), max_size=3).map(torch.Size), st.just(torch.device("cpu")),
    st.sampled_from([torch.contiguous_format, torch.channels_last, torch.preserve_format]),
    st.just(torch.strided), st.frozensets(st.integers(0, 9), max_size=3),
    st.builds(messages.Ref, st.integers(1, 2**63 - 1)), small_tensors,
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


def _field(cls: type, name: str, kind: type) -> st.SearchStrategy:
    if kind is int:
        return ints
    if kind is bool:
        return st.booleans()
    if kind is str:
        return st.text(max_size=12)
    if kind is tuple:
        if name in ("free", "ids"):
            return st.lists(st.integers(1, 2**63 - 1), max_size=4).map(tuple)
        if name in ("tags", "query"):
            return st.lists(st.text(max_size=6), max_size=3).map(tuple)
        return st.lists(values, max_size=3).map(tuple)
    if kind is dict:
        return st.dictionaries(st.text(max_size=6), values, max_size=3)
    if name == "value" and cls is messages.Store:
        return small_tensors
    return values


KINDS = sorted(codec._KINDS.values(), key=lambda cls: cls.code)


def message_of(cls: type) -> st.SearchStrategy:
    names = codec._FIELDS[cls]
    kinds = codec._FIELD_TYPES[cls]
    return st.builds(lambda *args: cls(*args), *(_field(cls, n, k) for n, k in zip(names, kinds)))


any_message = st.sampled_from(KINDS).flatmap(message_of)


def same(a, b) -> bool:
    """Deep equality: tensors bitwise (+ requires_grad, .grad), floats by bits, Refs by id."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if (a.dtype, a.shape, a.requires_grad) != (b.dtype, b.shape, b.requires_grad):
            return False
        bits = lambda t: torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1)).view(torch.uint8)  # noqa: E731
        if not torch.equal(bits(a), bits(b)):
            return False
        ga = a.grad if a.is_leaf else None
        gb = b.grad if b.is_leaf else None
        return (ga is None and gb is None) or same(ga, gb)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b)) if math.copysign(1, a) == math.copysign(1, b) or math.isnan(a) else False
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)) and not isinstance(a, torch.Size):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, slice):
        return same((a.start, a.stop, a.step), (b.start, b.stop, b.step))
    if isinstance(a, messages.RemoteRef):
        return (a.id, a.location, a.id_at_location, a.meta) == (b.id, b.location, b.id_at_location, b.meta)
    if isinstance(a, messages.Message):
        return all(same(getattr(a, n), getattr(b, n)) for n in codec._FIELDS[type(a)])
    return a == b


def roundtrip(msg, strict: bool = False):
    frames = codec.encode(msg, NAMESPACE)
    try:
        return codec.decode(frames, strict=strict, namespace=NAMESPACE)
    finally:
        segments.sweep(NAMESPACE)  # a frame that failed to decode must not leave its segment


# -- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS, ids=lambda cls: cls.__name__)
@settings(max_examples=examples(25, 150))
@given(data=st.data(), strict=st.booleans())
def test_every_message_kind_round_trips(kind, data, strict):
    msg = data.draw(message_of(kind), label="message")
    back = roundtrip(msg, strict)
    assert type(back) is type(msg)
    assert same(back, msg), f"{msg!r}\n-> {back!r}"


def test_every_message_kind_is_covered():
    """KINDS is read from the protocol's own table: a new message kind is covered at once."""
    assert {cls.code for cls in KINDS} == set(codec._KINDS)
    assert all(issubclass(cls, messages.Message) for cls in KINDS)


@settings(max_examples=examples(10, 50))
@given(t=tensors(shape=st.sampled_from([(wire_tensors.INLINE_MAX // 4 + 1,), (1, 300_000)]), dtype=torch.float32))
def test_large_tensors_round_trip_through_segments(t):
    msg = messages.Value(7, (1, t))
    frames = codec.encode(msg, NAMESPACE)
    assert codec.frames_size(frames) < 4096, "a large tensor went through the frames"
    decoded = codec.decode(frames, strict=True, namespace=NAMESPACE)
    assert same(decoded, msg)
    del decoded
    assert segments.stats(NAMESPACE)["in_use"] == 0, "a released tensor must release its segment"
    assert len(shm.list_segments(NAMESPACE)) <= 2, "released segments must be reused"


# -- refusals -------------------------------------------------------------------------

def refused(frames, strict=True) -> bool:
    try:
        codec.decode(frames, strict=strict)
    except ProtocolError:
        return True
    finally:
        segments.sweep(NAMESPACE)
    return False


@settings(max_examples=examples(100, 1_000))
@given(msg=any_message, data=st.data())
def test_truncated_header_is_refused(msg, data):
    frames = codec.encode(msg, NAMESPACE)
    segments.sweep(NAMESPACE)
    cut = data.draw(st.integers(0, len(frames[0]) - 1), label="cut")
    for strict in (True, False):
        assert refused([frames[0][:cut], *frames[1:]], strict), f"a header cut at {cut} of {len(frames[0])} decoded"


@settings(max_examples=examples(100, 1_000))
@given(t=tensors(shape=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)), data=st.data())
def test_missing_or_wrong_size_buffers_are_refused(t, data):
    frames = codec.encode(messages.Value(1, (t,)), NAMESPACE)  # pickled (a tuple): its data rides as a frame
    assert len(frames) >= 2
    buffer = frames[1]
    bad = data.draw(st.sampled_from(["drop", "short", "long"]), label="damage")
    if bad == "drop":
        damaged = frames[:1]
    elif bad == "short":
        damaged = [frames[0], buffer[:data.draw(st.integers(0, len(buffer) - 1), label="keep")], *frames[2:]]
    else:
        damaged = [frames[0], buffer + b"\0" * data.draw(st.integers(1, 16), label="extra"), *frames[2:]]
    assert refused(damaged) and refused(damaged, strict=False)


def test_oversized_header_is_refused():
    header = pickle.dumps((3, 1, 2, True), protocol=5)
    huge = header[:-1] + b"\x94" * (codec.MAX_HEADER_BYTES - len(header) + 2) + header[-1:]
    with pytest.raises(ProtocolError, match="exceeds the"):
        codec.decode([huge])
    with pytest.raises(ProtocolError, match="exceeds the"):
        codec.decode([huge], strict=True)


def raw_frames(values: tuple) -> list:
    """Frames for any tuple, written by simsyft's own encoder (so only its opcodes appear)."""
    buffers: list = []
    file = io.BytesIO()
    codec._Encoder(file, buffers, NAMESPACE).dump(values)
    return [file.getvalue(), *buffers]


def _wrong_type(kind: type) -> st.SearchStrategy:
    others = [st.integers(), st.text(max_size=3), st.booleans(), st.none(), st.floats(allow_nan=False),
              st.lists(st.integers(), max_size=2).map(tuple), st.lists(st.integers(), max_size=2),
              st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)]
    return st.one_of(*others).filter(lambda v: type(v) is not kind)


@settings(max_examples=examples(100, 1_000))
@given(data=st.data())
def test_mistyped_fields_are_refused(data):
    cls = data.draw(st.sampled_from([c for c in KINDS if any(k is not object for k in codec._FIELD_TYPES[c])]))
    names, kinds = codec._FIELDS[cls], codec._FIELD_TYPES[cls]
    fields = [data.draw(_field(cls, n, k), label=n) for n, k in zip(names, kinds)]
    typed = [i for i, k in enumerate(kinds) if k is not object]
    i = data.draw(st.sampled_from(typed), label="field")
    fields[i] = data.draw(_wrong_type(kinds[i]), label=f"wrong {names[i]}")
    frames = raw_frames((cls.code, *fields))
    for strict in (True, False):
        with pytest.raises(ProtocolError, match=f"{cls.__name__}.{names[i]} must be {kinds[i].__name__}"):
            codec.decode(frames, strict=strict)
    segments.sweep(NAMESPACE)


@settings(max_examples=examples(100, 1_000))
@given(code=st.integers().filter(lambda c: c not in codec._KINDS), fields=st.lists(st.integers(), max_size=3))
def test_unknown_message_codes_are_refused(code, fields):
    with pytest.raises(ProtocolError, match=f"unknown message code {code}"):
        codec.decode(raw_frames((code, *fields)), strict=True)


@pytest.mark.parametrize("payload", [
    [1, 2], 5, "x", (), ("1", 2), (True, 1), (1.0, 2),                        # not a (code, fields...) tuple
    (3, 1, 2, True, "extra"), (3, 1),                                         # wrong field count
])
def test_malformed_headers_are_refused(payload):
    with pytest.raises(ProtocolError):
        codec.decode(raw_frames(payload))


class _Marker:
    def __init__(self, pid):
        self.pid = pid


class _Forger(pickle.Pickler):
    """Writes persistent ids we choose: how a hostile peer would forge descriptors."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Marker) else None


def forge(payload) -> bytes:
    buffer = io.BytesIO()
    _Forger(buffer, protocol=5).dump(payload)
    return buffer.getvalue()


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("collections", "OrderedDict"),
                                          ("torch", "load"), ("simsyft.protocol", "Ref")])
def test_globals_outside_the_allowlist_are_refused(module, name):
    header = pickle.dumps((module, name), protocol=5)[:-1] + b"\x93."  # STACK_GLOBAL on (module, name)
    for strict in (True, False):
        with pytest.raises(ProtocolError):
            codec.decode([header], strict=strict)


descriptors = st.tuples(
    st.one_of(st.sampled_from([wire_tensors.dtype_name(d) for d in DTYPES]), st.text(max_size=5), st.integers()),
    st.one_of(st.lists(st.integers(-2, 4), max_size=3).map(tuple), st.lists(st.integers(), max_size=2).map(tuple),
              st.text(max_size=3), st.none()),
    st.one_of(st.booleans(), st.integers(-1, 2)),
    st.one_of(st.tuples(st.just("i"), st.integers(-1, 3)), st.just(("e",)),
              st.tuples(st.just("s"), st.text(max_size=20), st.integers(0, 64), st.integers(0, 2**64)),
              st.tuples(st.sampled_from(["s", "c", "x", ""])), st.none(), st.integers()),
    st.none(),
)


@settings(max_examples=examples(100, 2_000))
@given(desc=descriptors, grad=st.one_of(st.none(), descriptors), buffers=st.lists(st.binary(max_size=40), max_size=3),
       tag=st.sampled_from(["T", "R", "P", "C", "M", "L", "Q"]))
def test_forged_descriptors_decode_or_are_refused(desc, grad, buffers, tag):
    """A forged tensor descriptor (or reference) either decodes to exactly what it says or is a
    ProtocolError: never another exception, never a tensor of another shape or dtype."""
    if grad is not None:
        desc = (*desc[:4], grad)
    pid = (tag, desc) if tag == "T" else (tag, desc[1] if tag != "R" else desc[2])
    header = forge((17, 1, _Marker(pid)))
    for strict in (True, False):
        try:
            msg = codec.decode([header, *buffers], strict=strict)
        except ProtocolError:
            continue
        finally:
            segments.sweep(NAMESPACE)
        if tag == "T":
            t = msg.value
            assert isinstance(t, torch.Tensor)
            assert wire_tensors.dtype_name(t.dtype) == desc[0] and tuple(t.shape) == tuple(int(n) for n in desc[1])


def mutate(frames: list, data) -> list:
    frames = [bytearray(f) for f in frames]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        i = data.draw(st.integers(0, len(frames) - 1), label="frame")
        f = frames[i]
        how = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "drop frame", "add frame"]), label="how")
        at = data.draw(st.integers(0, max(len(f) - 1, 0)), label="at")
        if how == "flip" and f:
            f[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif how == "set" and f:
            f[at] = data.draw(st.integers(0, 255), label="byte")
        elif how == "insert":
            f[at:at] = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
        elif how == "delete" and f:
            del f[at:at + data.draw(st.integers(1, 4), label="n")]
        elif how == "drop frame" and len(frames) > 1:
            del frames[i]
        elif how == "add frame":
            frames.append(bytearray(data.draw(st.binary(max_size=8), label="frame bytes")))
    return [bytes(f) for f in frames]


@settings(max_examples=examples(500, 5_000))
@given(msg=any_message, data=st.data())
def test_mutated_frames_decode_or_are_refused(msg, data):
    """Bit flips, inserted and deleted bytes, missing and extra frames: the worker's decoder
    (strict) answers with a Message or a ProtocolError, never anything else."""
    _, decoded = damage(msg, data)
    assert decoded is None or isinstance(decoded, messages.Message)


# -- the worker keeps serving ---------------------------------------------------------------

# A frame that cannot be decoded is answered with a ProtocolError, or, when it names an object the
# worker lacks before the damage is reached, with the ObjectNotFoundError of that lookup.
DECODE_ERRORS = ("ProtocolError", "ObjectNotFoundError")


def _reply(core: WorkerCore, frames):
    reply = core.handle(frames)
    return None if reply is None else codec.decode(reply)


def damage(msg, data):
    """`msg`'s frames, mutated; and what the worker's decoder makes of them (None: refused)."""
    frames = codec.encode(msg, NAMESPACE)
    segments.sweep(NAMESPACE)
    damaged = mutate(frames, data)
    try:
        decoded = codec.decode(damaged, strict=True)
    except ProtocolError:
        decoded = None
    finally:
        segments.sweep(NAMESPACE)
    return damaged, decoded


@settings(max_examples=examples(200, 2_000))
@given(msg=any_message, data=st.data())
def test_worker_core_answers_bad_frames_and_keeps_serving(msg, data):
    core = WorkerCore("bob", NAMESPACE)
    core.store[5] = torch.arange(3.0)
    damaged, decoded = damage(msg, data)
    assume(not isinstance(decoded, (messages.Shutdown, messages.Clear, messages.Free)) or decoded is None)
    reply = _reply(core, damaged)
    segments.sweep(NAMESPACE)
    if decoded is None:
        assert isinstance(reply, messages.ErrorReply), reply
        assert reply.type_name in DECODE_ERRORS, reply
    assert core.running
    info = _reply(core, codec.encode(messages.Info(99)))
    assert isinstance(info, messages.Value) and info.seq == 99
    fetched = _reply(core, codec.encode(messages.Fetch(100, 5, False)))
    assert isinstance(fetched, messages.Value) and torch.equal(fetched.value, torch.arange(3.0))


@settings(max_examples=examples(100, 300))
@given(msg=any_message, data=st.data())
def test_worker_process_answers_bad_frames_and_keeps_serving(simsyft_sim, msg, data):
    """A raw ZeroMQ peer sends damaged frames to a real worker: it replies with a
    ProtocolError and keeps serving this client and the pool's own connection."""
    import zmq

    (bob,) = simsyft_sim.world(1)
    damaged, decoded = damage(msg, data)
    assume(decoded is None or not isinstance(decoded, (messages.Shutdown, messages.Free)))
    endpoint = f"ipc://{simsyft_sim.simulation.run_dir}/{bob.id}.sock"
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(endpoint)
        sock.send_multipart(damaged)
        reply = codec.decode(sock.recv_multipart())
        if decoded is None:
            assert isinstance(reply, messages.ErrorReply) and reply.type_name in DECODE_ERRORS, reply
        sock.send_multipart(codec.encode(messages.Info(3)))
        info = codec.decode(sock.recv_multipart())
        assert isinstance(info, messages.Value) and info.value["name"] == bob.id
    finally:
        sock.close(0)
    x = torch.arange(4.0).send(bob)
    assert torch.equal((x * 2).get(), torch.arange(4.0) * 2)
