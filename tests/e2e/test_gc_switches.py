"""PySyft 0.2's garbage-collection switches: `send(..., garbage_collect_data=False)`,
`ptr.garbage_collection`, `ptr.gc` and `ptr.disable_gc` (each body on both backends)."""

from __future__ import annotations

import gc

import pytest
import torch

from simsyft.errors import ObjectNotFoundError


def dropped(worker, ptr_id_at_location):
    """Whether the object is gone from the worker once the pointers to it were dropped."""
    gc.collect()
    return ptr_id_at_location not in worker._objects  # a round trip: pending frees go first


def test_send_without_gc_leaves_the_data_after_del(bob):
    kept = torch.tensor([1, 2, 3]).send(bob, garbage_collect_data=False)
    freed = torch.tensor([4, 5]).send(bob)
    kept_id, freed_id = kept.id_at_location, freed.id_at_location
    assert kept.garbage_collection is False and kept.gc is False and freed.gc is True
    del kept, freed
    assert dropped(bob, freed_id)
    assert not dropped(bob, kept_id)
    assert torch.equal(bob._objects[kept_id], torch.tensor([1, 2, 3]))  # still reachable


def test_a_pointer_without_gc_still_works_and_get_removes(bob):
    x_ptr = torch.tensor([1.0, 2.0]).send(bob, garbage_collect_data=False)
    y_ptr = x_ptr * 2
    assert y_ptr.gc is True  # results belong to their new pointers, as usual
    assert y_ptr.get().tolist() == [2.0, 4.0]
    object_id = x_ptr.id_at_location
    assert x_ptr.get().tolist() == [1.0, 2.0]  # get() still fetches, and removes
    assert object_id not in bob._objects
    with pytest.raises(ObjectNotFoundError):
        x_ptr.get()
    with pytest.raises(ObjectNotFoundError):
        x_ptr.gc = True  # nothing left to own


def test_garbage_collection_is_settable_both_ways(bob):
    kept, freed = torch.tensor([7]).send(bob), torch.tensor([8]).send(bob)
    kept_id, freed_id = kept.id_at_location, freed.id_at_location
    kept.garbage_collection = False
    freed.gc = False
    freed.gc = True  # and back: it frees again
    assert (kept.gc, freed.garbage_collection) == (False, True)
    del kept, freed
    assert dropped(bob, freed_id) and not dropped(bob, kept_id)


def test_disable_gc_returns_the_pointer(bob):
    x_ptr = torch.tensor([1.0]).send(bob)
    same = x_ptr.disable_gc
    assert same is x_ptr and x_ptr.gc is False
    object_id = x_ptr.id_at_location
    del x_ptr, same
    assert not dropped(bob, object_id)
    assert torch.tensor([1.0]).send(bob).disable_gc.gc is False


def test_search_results_can_take_over_gc(bob):
    ptr = torch.tensor([1, 2]).tag("#gc").send(bob, garbage_collect_data=False)
    object_id = ptr.id_at_location
    del ptr
    (found,) = bob.search("#gc")
    assert found.gc is False
    found.gc = True
    del found
    assert dropped(bob, object_id)


def test_nothing_to_collect_on_a_void_result(bob):
    w = torch.ones(2, requires_grad=True).send(bob)
    nothing = w.sum().backward()
    assert nothing.gc is False
    nothing.gc = False  # already so
    with pytest.raises(ValueError, match="points at nothing"):
        nothing.gc = True


def test_gc_off_and_requires_grad_together(bob):
    x = torch.tensor([2.0], requires_grad=True)
    x_ptr = x.send(bob, requires_grad=True, garbage_collect_data=False)
    (x_ptr * 4).sum().backward()
    assert x.grad.tolist() == [4.0] and x_ptr.gc is False
    object_id = x_ptr.id_at_location
    del x_ptr
    assert not dropped(bob, object_id)


def test_unknown_send_keywords_are_refused(bob):
    with pytest.raises(TypeError, match="local_autograd"):
        torch.tensor([1.0]).send(bob, local_autograd=True)
