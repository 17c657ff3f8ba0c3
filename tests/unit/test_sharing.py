"""tensors.py: tensors cross bit-exact, inline or through a segment, and no segment outlives its decode."""

from __future__ import annotations

import ctypes
import gc
import os
import uuid

import pytest
import torch

from simsyft.wire import segments, shm, tensors
from simsyft.errors import ProtocolError

DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
    torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
]
SIZES = ["inline", "shm"]


def new_namespace() -> str:
    return f"{os.getpid()}-test{uuid.uuid4().hex}"


@pytest.fixture
def ns():
    """A namespace of this test's own; the test must leave no segment of it behind."""
    namespace = new_namespace()
    yield namespace
    segments.close(namespace)  # this process's pooled segments (none may be left lent out)
    leftover = shm.list_segments(namespace)
    segments.sweep(namespace)
    assert leftover == [], f"test left shared-memory segments behind: {leftover}"


def numel_for(size: str, dtype: torch.dtype) -> int:
    """Just under/over the inline limit: exercises both paths at their boundary."""
    if size == "inline":
        return 37
    return tensors.INLINE_MAX // dtype.itemsize + 5


def random_tensor(shape, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random bits (so floats include NaNs, infinities, subnormals and -0.0)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    numel = 1
    for n in shape:
        numel *= n
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bit_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    assert torch.equal(bits(a), bits(b))


def roundtrip(t: torch.Tensor, namespace: str) -> torch.Tensor:
    buffers: list = []
    desc = tensors.encode_tensor(t, buffers, namespace)
    return tensors.decode_tensor(desc, buffers, namespace)


# -- bit-exactness ------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=tensors.dtype_name)
def test_every_dtype_is_bit_exact(dtype, size, ns):
    t = random_tensor((numel_for(size, dtype),), dtype, seed=DTYPES.index(dtype))
    buffers: list = []
    desc = tensors.encode_tensor(t, buffers, ns)
    location = desc[3][0]
    assert location == ("i" if size == "inline" else "s")
    assert len(shm.list_segments(ns)) == (1 if size == "shm" else 0)
    out = tensors.decode_tensor(desc, buffers, ns)
    assert_bit_exact(t, out)
    assert out.is_contiguous() and not out.requires_grad


@pytest.mark.parametrize("dtype", DTYPES, ids=tensors.dtype_name)
def test_descriptor_names_dtype_and_shape(dtype, ns):
    t = random_tensor((2, 3), dtype)
    desc = tensors.encode_tensor(t, [], ns)
    assert desc[0] == tensors.dtype_name(dtype) and desc[1] == (2, 3) and desc[2] is False and desc[4] is None
    assert tensors.dtype_from_name(desc[0]) is dtype


def test_inline_boundary_is_inline_max_bytes(ns):
    at_limit = torch.zeros(tensors.INLINE_MAX, dtype=torch.uint8)
    over = torch.zeros(tensors.INLINE_MAX + 1, dtype=torch.uint8)
    buffers: list = []
    assert tensors.encode_tensor(at_limit, buffers, ns)[3] == ("i", 0)
    desc = tensors.encode_tensor(over, buffers, ns)
    assert desc[3][0] == "s" and desc[3][2] >= tensors.INLINE_MAX + 1
    tensors.decode_tensor(desc, buffers, ns)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool, torch.complex64], ids=tensors.dtype_name)
def test_zero_dim(dtype, ns):
    t = random_tensor((), dtype, seed=3)
    out = roundtrip(t, ns)
    assert out.dim() == 0
    assert_bit_exact(t, out)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.bool], ids=tensors.dtype_name)
def test_empty(shape, dtype, ns):
    t = torch.empty(shape, dtype=dtype)
    buffers: list = []
    desc = tensors.encode_tensor(t, buffers, ns)
    assert shm.list_segments(ns) == []  # no zero-byte files in /dev/shm
    out = tensors.decode_tensor(desc, buffers, ns)
    assert out.shape == shape and out.dtype == dtype and out.numel() == 0


NON_CONTIGUOUS = {
    "transposed": lambda t: t.reshape(-1, 4).t(),
    "step_slice": lambda t: t[::3],
    "offset_slice": lambda t: t[5:-7:2],
    "expanded": lambda t: t[:1].expand(t.numel()),
    "permuted_3d": lambda t: t.reshape(4, -1, 2).permute(2, 0, 1),
    "negative_stride_like_flip": lambda t: t.flip(0),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int32], ids=tensors.dtype_name)
def test_non_contiguous(dtype, view, size, ns):
    # The shm base is 4x the limit, so even a view of every third element goes through a segment.
    numel = 8 * (tensors.INLINE_MAX // dtype.itemsize // 2 + 3) if size == "shm" else 8 * 9
    base = random_tensor((numel,), dtype, seed=7)
    t = view(base)
    out = roundtrip(t, ns)
    assert_bit_exact(t, out)
    assert out.is_contiguous()
    if size == "shm":
        assert t.numel() * dtype.itemsize > tensors.INLINE_MAX  # the case really went through a segment


# -- autograd state -----------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_requires_grad_and_grad_survive(size, ns):
    n = numel_for(size, torch.float32)
    x = torch.randn(n).requires_grad_(True)
    x.grad = torch.randn(n)
    buffers: list = []
    desc = tensors.encode_tensor(x, buffers, ns)
    assert desc[2] is True and desc[4] is not None
    out = tensors.decode_tensor(desc, buffers, ns)
    assert out.requires_grad and out.is_leaf
    assert_bit_exact(x, out)
    assert out.grad is not None
    assert_bit_exact(x.grad, out.grad)
    assert not out.grad.requires_grad


def test_requires_grad_without_grad(ns):
    x = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    out = roundtrip(x, ns)
    assert out.requires_grad and out.grad is None


def test_non_leaf_arrives_as_a_leaf_that_requires_grad(ns):
    x = torch.randn(4, requires_grad=True)
    y = x * 2
    out = roundtrip(y, ns)
    assert out.requires_grad and out.is_leaf and out.grad_fn is None and out.grad is None
    assert torch.equal(out.detach(), y.detach())


def test_retained_grad_of_a_non_leaf_survives(ns):
    x = torch.randn(4, requires_grad=True)
    y = x * 3
    y.retain_grad()
    y.sum().backward()
    out = roundtrip(y, ns)
    assert torch.equal(out.grad, torch.ones(4))


def test_backward_works_on_the_decoded_tensor(ns):
    x = torch.randn(5, requires_grad=True)
    out = roundtrip(x, ns)
    (out * out).sum().backward()
    assert torch.allclose(out.grad, 2 * x.detach())
    assert x.grad is None  # the source is untouched


# -- ownership ----------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_decoded_tensor_owns_its_memory(size, ns):
    n = numel_for(size, torch.float32)
    src = torch.arange(n, dtype=torch.float32)
    expected = src.clone()
    buffers: list = []
    desc = tensors.encode_tensor(src, buffers, ns)
    src.fill_(-1)  # after encode: must not reach the decoded tensor
    out = tensors.decode_tensor(desc, buffers, ns)
    assert torch.equal(out, expected)
    out.fill_(42)  # and the decoded tensor's writes do not reach the source
    assert bool(src.eq(-1).all())
    assert out.data_ptr() != src.data_ptr()


def test_decoded_tensor_does_not_alias_a_mutable_frame(ns):
    src = torch.arange(8, dtype=torch.int32)
    buffers: list = []
    desc = tensors.encode_tensor(src, buffers, ns)
    frame = bytearray(buffers[0])  # a receiver's frame may be a mutable buffer
    out = tensors.decode_tensor(desc, [frame], ns)
    frame[:] = b"\xff" * len(frame)
    assert torch.equal(out, src)
    out.zero_()
    assert frame == bytearray(b"\xff" * len(frame))


def test_two_decodes_of_one_inline_descriptor_are_independent(ns):
    buffers: list = []
    desc = tensors.encode_tensor(torch.ones(4), buffers, ns)
    a = tensors.decode_tensor(desc, buffers, ns)
    b = tensors.decode_tensor(desc, buffers, ns)
    a.zero_()
    assert torch.equal(b, torch.ones(4))


# -- segment lifetime: Note [Segment ownership] (segments.py) ----------------------

def release(*tensors):
    """Drop the caller's tensors; their segments go FREE once their memory is collected."""
    del tensors
    gc.collect()


def test_a_segment_is_pooled_and_reused_after_release(ns):
    t = random_tensor((numel_for("shm", torch.float32),), torch.float32)
    buffers: list = []
    desc = tensors.encode_tensor(t, buffers, ns)
    assert buffers == []  # nothing inline
    path = desc[3][1]
    assert os.path.dirname(path) == shm.SHM_DIR
    assert os.path.basename(path).startswith(shm.segment_prefix(ns))
    assert shm.list_segments(ns) == [os.path.basename(path)]
    assert os.path.getsize(path) == shm.HEADER + desc[3][2] and desc[3][2] >= t.numel() * 4
    out = tensors.decode_tensor(desc, buffers, ns)
    assert_bit_exact(t, out)
    seg = segments._MAPPED[path]
    assert out.data_ptr() == ctypes.addressof(seg.state) + shm.HEADER  # built over the mapping: no copy
    assert seg.state.value == shm.BUSY and seg.uses == 1
    again = tensors.encode_tensor(t, [], ns)
    assert again[3][1] != path  # held by `out`: never handed out twice
    tensors.decode_tensor(again, [], ns)  # released at once
    out2 = out
    del out
    gc.collect()
    assert seg.state.value == shm.BUSY  # out2 still holds it
    del out2
    gc.collect()
    assert seg.state.value == shm.FREE and seg.uses == 0
    third = tensors.encode_tensor(t * 2, [], ns)
    assert third[3][1] in (path, again[3][1])  # a free one of the right size is reused
    assert_bit_exact(t * 2, tensors.decode_tensor(third, [], ns))


def test_a_segment_in_flight_is_not_reused(ns):
    big = torch.zeros(numel_for("shm", torch.uint8), dtype=torch.uint8)
    descs = [tensors.encode_tensor(big, [], ns) for _ in range(3)]
    assert len({d[3][1] for d in descs}) == 3 and len(shm.list_segments(ns)) == 3
    for d in descs:
        tensors.decode_tensor(d, [], ns)


def test_tensor_and_grad_travel_in_separate_segments(ns):
    n = numel_for("shm", torch.float32)
    x = torch.randn(n, requires_grad=True)
    x.grad = torch.randn(n)
    desc = tensors.encode_tensor(x, [], ns)
    assert desc[3][1] != desc[4][3][1] and len(shm.list_segments(ns)) == 2
    out = tensors.decode_tensor(desc, [], ns)
    assert torch.equal(out.grad, x.grad) and torch.equal(out.detach(), x.detach())


def test_handover_gives_the_segment_itself(ns):
    t = torch.arange(numel_for("shm", torch.float32), dtype=torch.float32)
    held = tensors.decode_tensor(tensors.encode_tensor(t, [], ns), [], ns)
    address = held.data_ptr()
    handed = tensors.handover(held)
    assert handed is not None
    del held
    gc.collect()
    desc = handed.describe([], ns)
    seg = segments._MAPPED[desc[3][1]]
    assert seg.state.value == shm.BUSY  # our tensor went, but the segment was given away
    back = tensors.decode_tensor(desc, [], ns)
    assert back.data_ptr() == address and torch.equal(back, t)
    del back
    gc.collect()
    assert seg.state.value == shm.FREE


def test_handover_refuses_shared_memory(ns):
    held = tensors.decode_tensor(tensors.encode_tensor(torch.zeros(numel_for("shm", torch.float32)), [], ns), [], ns)
    view = held[1:]
    assert tensors.handover(held) is None  # a view shares the memory
    assert tensors.handover(view) is None  # not the whole segment
    del view
    assert tensors.handover(torch.zeros(4)) is None  # not in a segment at all
    handed = tensors.handover(held)
    assert handed is not None
    tensors.take_back(handed)  # the worker's tensor lived on: the segment stays ours
    assert tensors.handover(held) is not None


def test_idle_segments_beyond_the_budget_are_unlinked(ns, monkeypatch):
    monkeypatch.setattr(segments, "IDLE_MAX", 0)
    desc = tensors.encode_tensor(torch.zeros(numel_for("shm", torch.float32)), [], ns)
    out = tensors.decode_tensor(desc, [], ns)
    assert len(shm.list_segments(ns)) == 1
    release(out)
    del out
    gc.collect()
    assert shm.list_segments(ns) == []


def test_close_unlinks_our_segments_and_keeps_live_tensors(ns):
    t = torch.arange(numel_for("shm", torch.float32), dtype=torch.float32)
    out = tensors.decode_tensor(tensors.encode_tensor(t, [], ns), [], ns)
    segments.close(ns)
    assert shm.list_segments(ns) == [] and segments.stats(ns)["mapped"] == 0
    assert torch.equal(out, t)  # the mapping lives as long as the tensor
    del out
    gc.collect()


def test_a_removed_segment_cannot_be_decoded(ns):
    buffers: list = []
    desc = tensors.encode_tensor(torch.zeros(numel_for("shm", torch.float32)), buffers, ns)
    segments.close(ns)
    with pytest.raises(ProtocolError, match="does not exist"):
        tensors.decode_tensor(desc, buffers, ns)



def test_sweep_removes_only_its_namespace():
    a, b = new_namespace(), new_namespace()
    a_longer = a + "0"  # shares a's text as a prefix: must not be swept with a
    try:
        for namespace, count in ((a, 2), (b, 1), (a_longer, 1)):
            for _ in range(count):
                tensors.encode_tensor(torch.zeros(tensors.INLINE_MAX + 1, dtype=torch.uint8), [], namespace)
        assert len(shm.list_segments(a)) == 2
        assert segments.sweep(a) == 2
        assert shm.list_segments(a) == []
        assert len(shm.list_segments(b)) == 1
        assert len(shm.list_segments(a_longer)) == 1
        assert segments.sweep(a) == 0  # idempotent
    finally:
        swept = segments.sweep(b) + segments.sweep(a_longer)
        segments.sweep(a)
    assert swept == 2
    assert shm.list_segments(b) == shm.list_segments(a_longer) == []


def test_sweep_of_an_unused_namespace_is_zero():
    assert segments.sweep(new_namespace()) == 0


def test_list_segments(ns):
    other = new_namespace()
    try:
        descs = [tensors.encode_tensor(torch.zeros(tensors.INLINE_MAX + 1, dtype=torch.uint8), [], ns) for _ in range(2)]
        tensors.encode_tensor(torch.zeros(tensors.INLINE_MAX + 1, dtype=torch.uint8), [], other)
        mine = shm.list_segments(ns)
        assert mine == sorted(os.path.basename(d[3][1]) for d in descs)
        assert all(name.startswith(shm.segment_prefix(ns)) for name in mine)
        everything = shm.list_segments()
        assert set(mine) <= set(everything)
        assert set(shm.list_segments(other)) <= set(everything)
        assert all(name.startswith("simsyft_") for name in everything)
        assert everything == sorted(everything)
        for d in descs:
            tensors.decode_tensor(d, [], ns)
        assert shm.list_segments(ns) == mine  # pooled until the simulation ends
    finally:
        segments.sweep(other)


def test_segment_prefix():
    assert shm.segment_prefix("123-ab") == "simsyft_123-ab_"


def test_dtype_names_round_trip():
    for dtype in DTYPES:
        assert tensors.dtype_from_name(tensors.dtype_name(dtype)) is dtype
    with pytest.raises(ProtocolError, match="unknown dtype 'float31'"):
        tensors.dtype_from_name("float31")
    with pytest.raises(ProtocolError, match="unknown dtype"):
        tensors.dtype_from_name(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_descriptor_refused_without_cuda():
    data = ("c", (1,), 0, 0, b"handle", 4, 0, b"ref", 0, b"event", False)
    with pytest.raises(ProtocolError, match="no CUDA device"):
        tensors.decode_tensor(("float32", (1,), False, data, None), [])
    with pytest.raises(ProtocolError, match="malformed CUDA IPC descriptor"):
        tensors.decode_tensor(("float32", (1,), False, ("c", (1,), "0", 0, b"h", 4, 0, b"r", 0, b"e", False), None), [])
