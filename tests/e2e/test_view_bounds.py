"""A failed or careless op never leaves a stored tensor viewing memory outside its storage.

Issue 10's finding: `x.resize_(10**13)` raised, as it should, but left `x` with the new sizes
over its old 24 bytes; `index_select` then returned the worker's heap, `index_fill_` wrote
past the end, `sum()` segfaulted. Each body runs on the in-process and the real-process
backend (a segfault there is a WorkerCrashedError). See executor.py's
Note [Views stay inside their storage].
"""

from __future__ import annotations

import pytest
import torch

import simsyft as sy
from simsyft.wire import tensors
from simsyft.testing import outcome

HUGE = 10**13  # elements: 80 TB of float64, more than any allocator here grants


def local_error(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares whatever torch raised
        return exc
    pytest.skip("this machine allocated 80 TB (overcommit): nothing to refuse")


def remote_error(fn) -> tuple[type, str]:
    """What fn raised, as type and text: keeping the exception would keep its frames' pointers alive."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares whatever came back
        return type(exc), str(exc)
    raise AssertionError("expected the worker to raise")


def assert_intact(bob, x, values: torch.Tensor) -> None:
    """x is `values` on the worker, and ops behave as on an intact tensor."""
    assert bob.info()["views_outside_storage"] == []  # first: before the fix, reading x ran through the heap
    assert x.shape == values.shape
    assert bob._objects[x.id_at_location].shape == values.shape  # the worker's own tensor
    assert torch.equal(x.sum().get(), values.sum())
    index = torch.tensor([0, len(values) - 1])
    assert torch.equal(x.index_select(0, index.send(bob)).get(), values.index_select(0, index))
    x.index_fill_(0, index.send(bob), -1)
    assert torch.equal(x.get(), values.index_fill(0, index, -1))


def test_failed_resize_leaves_the_tensor_as_it_was(bob):
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = values.send(bob)
    neighbour = torch.full((4,), 7.0, dtype=torch.float64).send(bob)  # what index_select leaked
    expected = local_error(lambda: torch.zeros(3, dtype=torch.float64).resize_(HUGE))
    with pytest.raises(type(expected)) as raised:
        x.resize_(HUGE)
    assert str(raised.value) == f"{expected} (raised on worker 'bob')"
    assert_intact(bob, x, values)
    assert torch.equal(neighbour.get(), torch.full((4,), 7.0, dtype=torch.float64))


def test_failed_resize_in_a_pipeline_is_reported_and_leaves_the_tensor(bob):
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = values.send(bob)
    expected = local_error(lambda: torch.zeros(3, dtype=torch.float64).resize_(HUGE))
    with pytest.raises(type(expected), match="raised on worker 'bob'"):
        with sy.pipeline():
            x.resize_(HUGE)  # the worker answers only the failure, at the next sync
            y = x * 2
    del y
    assert bob.info()["views_outside_storage"] == []
    assert bob._objects[x.id_at_location].shape == values.shape
    assert torch.equal(bob._objects[x.id_at_location], values)


@pytest.mark.filterwarnings("ignore:An output with one or more elements was resized")
def test_failed_resize_as_and_out_leave_the_tensors(bob):
    values = torch.tensor([1.0, 2.0, 3.0])
    huge_local = torch.zeros(1).expand(HUGE)  # stride 0: 4 bytes, 10**13 elements
    huge = torch.zeros(1).send(bob).expand(HUGE)
    x = values.send(bob)
    expected = local_error(lambda: torch.zeros(3).resize_as_(huge_local))
    assert remote_error(lambda: x.resize_as_(huge)) == (type(expected), f"{expected} (raised on worker 'bob')")
    expected = local_error(lambda: torch.add(huge_local, 1, out=torch.zeros(3)))
    # out= resizes its output the same way
    assert remote_error(lambda: torch.add(huge, 1, out=x)) == (type(expected), f"{expected} (raised on worker 'bob')")
    assert huge.shape == (HUGE,)  # a view inside its 4 bytes (stride 0), untouched
    del huge  # bob._objects below would copy all 10**13 elements
    assert_intact(bob, x, values)


def test_resize_of_a_shared_memory_tensor_leaves_it_inside(bob):
    # Sent through a segment, whose storage cannot grow: torch sets the sizes, then refuses.
    values = torch.arange(tensors.INLINE_MAX // 8 + 10, dtype=torch.float64)
    x = values.send(bob)
    result = outcome(lambda: x.resize_(len(values) + 1000))
    assert bob.info()["views_outside_storage"] == []
    if not result.ok:  # torch's "Trying to resize storage that is not resizable"
        assert result.error is RuntimeError
        assert_intact(bob, x, values)


def test_as_strided_with_an_overflowing_reach_is_refused(bob):
    values = torch.tensor([1.0, 2.0, 3.0])
    x = values.send(bob)
    # Locally as_strided_ accepts strides whose reach overflows int64 (and x then reads far
    # outside); the worker puts x back and refuses.
    with pytest.raises(sy.ViewOutsideStorageError) as raised:
        x.as_strided_((3,), (2**62,))
    assert isinstance(raised.value, RuntimeError)
    message = str(raised.value)
    assert message.startswith("torch.Tensor.as_strided_ left a tensor viewing memory outside its storage: "
                              "sizes [3], strides [4611686018427387904], storage offset 0 over a 12-byte "
                              "storage was put back to shape [3]")
    assert message.endswith("(raised on worker 'bob')")
    # The failed form (sizes that overflow) raises torch's own error, also leaving x inside.
    expected = local_error(lambda: torch.zeros(3).as_strided_((2**62, 4), (4, 1)))
    with pytest.raises(type(expected)) as raised:
        x.as_strided_((2**62, 4), (4, 1))
    assert str(raised.value) == f"{expected} (raised on worker 'bob')"
    assert_intact(bob, x, values)


def test_failed_resize_through_a_pointer_chain(process_bob):
    # bob holds a pointer to his own tensor: the op is forwarded, and checked where it runs.
    # (Chains need workers of one simulation: processes only.)
    bob = process_bob
    bob.clear_objects()
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    chain = values.send(bob).send(bob)
    expected = local_error(lambda: torch.zeros(3, dtype=torch.float64).resize_(HUGE))
    assert remote_error(lambda: chain.resize_(HUGE))[0] is type(expected)
    assert bob.info()["views_outside_storage"] == []
    assert torch.equal((chain + 1).get().get(), values + 1)
    assert torch.equal(chain.get().get(), values)
    bob.clear_objects()


def test_failed_resize_through_a_chain_of_two_processes(process_bob, process_alice):
    for worker in (process_bob, process_alice):
        worker.clear_objects()
    values = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    chain = values.send(process_bob).send(process_alice)
    expected = local_error(lambda: torch.zeros(3, dtype=torch.float64).resize_(HUGE))
    kind, message = remote_error(lambda: chain.resize_(HUGE))
    assert kind is type(expected) and str(expected) in message
    assert process_bob.info()["views_outside_storage"] == [] and process_alice.info()["views_outside_storage"] == []
    assert torch.equal(chain.get().get(), values)
    for worker in (process_bob, process_alice):
        worker.clear_objects()
