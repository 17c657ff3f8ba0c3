"""Sharing: any tensor survives send/get bit-exactly, with requires_grad and .grad.

Any dtype, contiguous or not (transposed, stepped, expanded with a zero stride, offset),
any size from 0 bytes to several megabytes (inline frames below wire_tensors.INLINE_MAX,
shared-memory segments above), NaN payloads and every other bit pattern included. After
the round trip the worker holds nothing and no segment is left behind.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simsyft.wire import tensors as wire_tensors
from simsyft.testing import DTYPES, assert_same, tensors

THOROUGH = settings.default.max_examples >= 1000  # the `thorough` profile (tests/property/conftest.py)


def examples(ci: int, thorough: int) -> int:
    return thorough if THOROUGH else ci
MB = 1024 * 1024


@st.composite
def sized_shapes(draw, max_bytes: int = 6 * MB):
    """Shapes by byte size: 0 bytes, just below / at / above the inline limit, up to `max_bytes`."""
    itemsize = draw(st.shared(st.sampled_from(DTYPES), key="dtype")).itemsize
    nbytes = draw(st.one_of(
        st.integers(0, 64),
        st.sampled_from([wire_tensors.INLINE_MAX - itemsize, wire_tensors.INLINE_MAX, wire_tensors.INLINE_MAX + itemsize]),
        st.integers(0, max_bytes),
    ))
    numel = nbytes // itemsize
    rows = draw(st.sampled_from([1, 2, 3, 4]))
    if numel % rows == 0 and draw(st.booleans()):
        return (rows, numel // rows)
    return (numel,)


any_tensor = tensors(dtype=st.shared(st.sampled_from(DTYPES), key="dtype"), requires_grad=None)
big_tensor = tensors(dtype=st.shared(st.sampled_from(DTYPES), key="dtype"), shape=sized_shapes(), requires_grad=None)


def check_roundtrip(pool, t):
    (bob,) = pool.world(1)
    expected = t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(t.requires_grad)
    if t.grad is not None:
        expected.grad = t.grad.clone()
    p = t.send(bob)
    assert p.shape == t.shape and p.dtype == t.dtype and p.requires_grad == t.requires_grad
    assert_same(bob._objects[p.id_at_location], expected, "bob._objects", grad=False)
    back = p.get()
    assert_same(back, expected, "get()")
    assert back.is_leaf, "a fetched tensor is a leaf of its own"
    assert back._base is None, "a fetched tensor owns its memory (it is not a view of a receive buffer)"
    assert bob.object_count() == 0
    assert not pool.segments(), f"segments left behind: {pool.segments()}"


@settings(max_examples=examples(300, 2_000))
@given(t=any_tensor)
def test_small_tensors_survive_send_get_inprocess(simsyft_inprocess, t):
    check_roundtrip(simsyft_inprocess, t)


@settings(max_examples=examples(30, 200))
@given(t=big_tensor)
def test_tensors_up_to_megabytes_survive_send_get_inprocess(simsyft_inprocess, t):
    check_roundtrip(simsyft_inprocess, t)


@settings(max_examples=examples(100, 300))
@given(t=st.one_of(any_tensor, big_tensor))
def test_tensors_survive_send_get_processes(simsyft_sim, t):
    check_roundtrip(simsyft_sim, t)


@settings(max_examples=examples(100, 1_000))
@given(t=tensors(requires_grad=None), data=st.data())
def test_results_computed_remotely_come_back_exact(simsyft_inprocess, t, data):
    """What the worker computed crosses back bit-exactly too, including non-contiguous results."""
    (bob,) = simsyft_inprocess.world(1)
    view = data.draw(st.sampled_from(["a.t()" if t.dim() <= 2 else "a.transpose(0, 1)", "a[::2]" if t.dim() else "a",
                                      "a.expand(2, *a.shape)", "a.flip(0)" if t.dim() else "a", "a.clone()"]))
    ref = t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(t.requires_grad)
    local = eval(view, {}, {"a": ref})
    remote = eval(view, {}, {"a": t.send(bob)})
    back = remote.get()
    assert_same(back, local, view, grad=False)
    assert back._base is None, "a fetched tensor owns its memory (it is not a view of a receive buffer)"
