"""Pointer semantics, each body run against the in-process and the real-process backend."""

from __future__ import annotations

import gc
import re

import pytest
import torch
import torch.nn.functional as F

import simsyft as sy
from simsyft.wire import tensors

REPR = re.compile(r"\(Wrapper\)>\[PointerTensor \| me:(\d+) -> bob:(\d+)\]")


def same(remote, local):
    """Exactly what torch gives locally: values (NaN positions too), dtype, shape."""
    assert isinstance(remote, torch.Tensor), f"expected a tensor, got {type(remote).__name__}"
    assert remote.dtype == local.dtype
    assert remote.shape == local.shape
    assert torch.equal(remote, local) or (
        remote.dtype.is_floating_point and torch.allclose(remote, local, equal_nan=True, rtol=0, atol=0)
    )


# -- the tutorial surface ------------------------------------------------------

def test_repr_and_attributes(bob):
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    m = REPR.fullmatch(repr(x_ptr))
    assert m, repr(x_ptr)
    assert int(m.group(1)) == x_ptr.id and int(m.group(2)) == x_ptr.id_at_location
    assert str(x_ptr) == repr(x_ptr)
    assert x_ptr.location == bob and x_ptr.location is bob
    assert x_ptr.owner == sy.local_worker
    assert repr(x_ptr.owner) == "<VirtualWorker id:me #objects:0>"
    assert repr(bob) == "<VirtualWorker id:bob #objects:1>"
    assert 0 < x_ptr.id_at_location < 2**63 and 0 < x_ptr.id < 2**63


def test_objects_snapshot_in_order(bob):
    x_ptr = torch.tensor([1, 2, 3, 4, 5]).send(bob)
    y_ptr = torch.tensor([1, 1, 1, 1, 1]).send(bob)
    z = x_ptr + x_ptr
    objects = bob._objects
    assert list(objects) == [x_ptr.id_at_location, y_ptr.id_at_location, z.id_at_location]
    assert repr(list(objects.values())) == "[tensor([1, 2, 3, 4, 5]), tensor([1, 1, 1, 1, 1]), tensor([ 2,  4,  6,  8, 10])]"
    assert torch.equal(x_ptr.get(), torch.tensor([1, 2, 3, 4, 5]))
    assert torch.equal(y_ptr.get(), torch.tensor([1, 1, 1, 1, 1]))
    assert torch.equal(z.get(), torch.tensor([2, 4, 6, 8, 10]))
    assert bob._objects == {}


def test_ids_do_not_depend_on_global_random(bob):
    import random

    random.seed(0)
    a = torch.ones(1).send(bob)
    random.seed(0)
    b = torch.ones(1).send(bob)
    torch.manual_seed(0)
    assert a.id_at_location != b.id_at_location and a.id != b.id
    assert len(bob._objects) == 2


def test_remote_autograd(bob):
    x = torch.tensor([1, 2, 3, 4, 5.0], requires_grad=True).send(bob)
    y = torch.tensor([1, 1, 1, 1, 1.0], requires_grad=True).send(bob)
    z = (x + y).sum()
    back = z.backward()
    assert REPR.fullmatch(repr(back))
    assert back.get() is None
    grad_ptr = x.grad
    assert isinstance(grad_ptr, sy.PointerTensor)
    assert torch.equal(grad_ptr.get(), torch.ones(5))
    x = x.get()
    assert repr(x) == "tensor([1., 2., 3., 4., 5.], requires_grad=True)"
    assert repr(x.grad) == "tensor([1., 1., 1., 1., 1.])"


def test_grad_is_none_before_backward(bob):
    x = torch.tensor([1.0, 2.0], requires_grad=True).send(bob)
    assert x.grad is None


def test_grad_mode_travels_with_commands(bob):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True).send(bob)
    with torch.no_grad():
        y = x * 2
        with torch.enable_grad():
            w = x * 2
    z = x * 2
    assert (y.requires_grad, w.requires_grad, z.requires_grad) == (False, True, True)
    assert y.get().requires_grad is False


def test_requires_grad_setter_and_grad_assignment(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    x.requires_grad = True
    assert x.requires_grad
    (x * 3).sum().backward()
    x.grad = None
    assert x.grad is None


# -- the torch surface ----------------------------------------------------------

BINARY = [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
    lambda a, b: a // b, lambda a, b: a % b, lambda a, b: a ** b, lambda a, b: a @ b.t(),
    lambda a, b: a < b, lambda a, b: a <= b, lambda a, b: a > b, lambda a, b: a >= b,
    lambda a, b: a == b, lambda a, b: a != b, torch.add, torch.mul, torch.maximum, torch.atan2,
    lambda a, b: torch.add(a, b, alpha=2), lambda a, b: torch.stack([a, b]), lambda a, b: torch.cat((a, b), dim=1),
    lambda a, b: torch.where(a > b, a, b), F.mse_loss, lambda a, b: a.matmul(b.t()),
]
UNARY = [
    lambda a: -a, abs, lambda a: a.sum(), lambda a: a.mean(), lambda a: a.sum(dim=1), lambda a: a.mean(0, keepdim=True),
    lambda a: a.view(6), lambda a: a.reshape(3, 2), lambda a: a.t(), lambda a: a.transpose(0, 1), lambda a: a.T,
    lambda a: a.abs(), lambda a: a.exp(), torch.sigmoid, F.relu, lambda a: F.softmax(a, dim=1), torch.tanh,
    lambda a: a[0], lambda a: a[:, 1:], lambda a: a[..., ::2], lambda a: a[None], lambda a: a[a > 0],
    lambda a: a[[1, 0]], lambda a: a.clone(), lambda a: a.to(torch.float64), lambda a: a.int(), lambda a: a.float(),
    lambda a: a.unsqueeze(0), lambda a: a.flatten(), lambda a: a.argmax(), lambda a: torch.sort(a, dim=1).values,
    lambda a: 2 + a, lambda a: 2 - a, lambda a: 2 * a, lambda a: 2 / a, lambda a: 2 ** a, lambda a: a + 1.5,
    lambda a: a > 0, lambda a: a.clamp(min=0.0), lambda a: a.max(), lambda a: a.norm(),
]


@pytest.mark.parametrize("op", BINARY, ids=lambda f: getattr(f, "__name__", "op"))
def test_binary_ops_equal_local(bob, op):
    torch.manual_seed(0)
    a, b = torch.randn(2, 3), torch.rand(2, 3) + 0.5
    result = op(a.send(bob), b.send(bob))
    same(result.get(), op(a, b))


@pytest.mark.parametrize("index", range(len(UNARY)))
def test_unary_ops_equal_local(bob, index):
    op = UNARY[index]
    torch.manual_seed(1)
    a = torch.randn(2, 3)
    same(op(a.send(bob)).get(), op(a))


def test_integer_ops_and_bitwise(bob):
    a, b = torch.tensor([5, -3, 7]), torch.tensor([2, 2, 3])
    pa, pb = a.send(bob), b.send(bob)
    for op in (lambda x, y: x & y, lambda x, y: x | y, lambda x, y: x ^ y, lambda x, y: x << 1,
               lambda x, y: x >> 1, lambda x, y: ~x, lambda x, y: x // y, lambda x, y: x % y):
        same(op(pa, pb).get(), op(a, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                                   torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_dtypes_roundtrip_and_compute(bob, dtype):
    base = torch.tensor([[0, 1, 2], [3, 4, 5]])
    t = base.to(dtype)
    p = t.send(bob)
    assert p.dtype == dtype and p.shape == torch.Size([2, 3])
    same((p + p).get() if dtype is not torch.bool else (p | p).get(), t + t if dtype is not torch.bool else t | t)
    same(p.get(), t)


def test_inplace_returns_same_pointer(bob):
    p = torch.zeros(3).send(bob)
    before = bob._objects
    assert p.add_(1) is p
    assert p.mul_(3) is p
    q = p
    q += 1
    assert q is p
    p[0] = 10
    p.unsqueeze_(0)
    assert p.shape == torch.Size([1, 3])
    assert list(bob._objects) == list(before)
    same(p.get(), torch.tensor([[10.0, 4.0, 4.0]]))


def test_out_argument_is_an_alias(bob):
    a, out = torch.ones(3).send(bob), torch.zeros(3).send(bob)
    result = torch.add(a, a, out=out)
    assert result is out
    same(out.get(), torch.full((3,), 2.0))


def test_multi_output_ops_return_pointers(bob):
    a = torch.tensor([[1.0, 5.0], [3.0, 2.0]])
    p = a.send(bob)
    m = torch.max(p, dim=0)
    local = torch.max(a, dim=0)
    assert type(m) is type(local)
    same(m.values.get(), local.values)
    same(m.indices.get(), local.indices)
    parts = torch.split(p, 1)
    assert isinstance(parts, tuple) and len(parts) == 2
    for remote, local_part in zip(parts, torch.split(a, 1)):
        same(remote.get(), local_part)
    values, indices = p.sort(dim=1)
    same(values.get(), a.sort(dim=1).values)
    assert len(bob._objects) == 1 + 1  # p plus the unfetched sort indices
    del indices


def test_shape_dtype_without_round_trip(bob):
    p = torch.zeros(4, 5, dtype=torch.float64).send(bob)
    sent = bob.traffic()["messages_sent"]
    assert p.shape == torch.Size([4, 5]) and p.size() == torch.Size([4, 5]) and p.size(1) == 5
    assert p.dtype == torch.float64 and p.dim() == 2 and p.ndim == 2 and p.numel() == 20 and len(p) == 4
    assert bob.traffic()["messages_sent"] == sent


def test_scalar_results_come_back_as_values(bob):
    p = torch.tensor([1.0, 2.0]).send(bob)
    assert torch.equal(p, p) is True
    assert p.is_contiguous() is True


# -- errors ------------------------------------------------------------------------

def test_remote_exception_same_type_and_message(bob):
    a, b = torch.ones(4), torch.ones(5)
    with pytest.raises(RuntimeError) as local:
        a + b
    with pytest.raises(RuntimeError) as remote:
        a.send(bob) + b.send(bob)
    assert type(remote.value) is type(local.value)
    assert str(remote.value).startswith(str(local.value))
    assert "'bob'" in str(remote.value)
    with pytest.raises(IndexError, match="index 10 is out of bounds.*'bob'"):
        torch.ones(3).send(bob)[10]
    with pytest.raises(TypeError) as local_t:
        torch.ones(3).view("x")
    with pytest.raises(TypeError) as remote_t:
        torch.ones(3).send(bob).view("x")
    assert str(local_t.value) in str(remote_t.value)


def test_mixing_workers_is_refused_and_changes_nothing(bob, alice):
    x, y = torch.ones(2).send(bob), torch.ones(2).send(alice)
    before_bob, before_alice = list(bob._objects), list(alice._objects)
    with pytest.raises(sy.LocationMismatchError, match="'bob' and 'alice'"):
        x + y
    with pytest.raises(sy.LocationMismatchError, match="'bob' and 'alice'"):
        torch.add(x, y)
    assert list(bob._objects) == before_bob and list(alice._objects) == before_alice


def test_mixing_pointer_and_local_tensor_is_refused(bob):
    x = torch.ones(2).send(bob)
    before = list(bob._objects)
    for attempt in (lambda: x + torch.ones(2), lambda: torch.ones(2) + x, lambda: torch.add(torch.ones(2), x),
                    lambda: torch.cat([x, torch.ones(2)])):
        with pytest.raises(sy.LocationMismatchError, match="'bob' and a local tensor on 'me'"):
            attempt()
    assert list(bob._objects) == before


def test_get_twice_and_use_after_get(bob):
    x = torch.ones(2).send(bob)
    x.get()
    for attempt in (x.get, lambda: x + 1, lambda: x.sum(), lambda: x.shape, lambda: torch.add(x, 1)):
        with pytest.raises(sy.ObjectNotFoundError, match="already fetched"):
            attempt()
    assert bob._objects == {}


def test_value_methods_ask_for_get(bob):
    x = torch.tensor([3.0]).send(bob)
    for attempt in (x.item, x.tolist, x.numpy, lambda: bool(x), lambda: float(x), lambda: int(x)):
        with pytest.raises(sy.RemoteValueError, match=r"call \.get\(\) first"):
            attempt()


def test_underscore_and_unknown_attributes_are_refused(bob):
    x = torch.ones(2).send(bob)
    for name in ("_grad", "_version", "nonexistent"):  # __array__ refuses with RemoteValueError: test_silent.py
        with pytest.raises(AttributeError):
            getattr(x, name)
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle

        pickle.dumps(x)


def test_worker_refuses_ops_outside_allowlist(bob):
    from simsyft.wire import messages

    x = torch.ones(2).send(bob)
    for op in ("torch.save", "torch.load", "os.system", "torch.Tensor.numpy", "torch.Tensor._grad.__get__"):
        with pytest.raises(sy.OpNotAllowedError, match=re.escape(f"'{op}' is not in simsyft's op allowlist")):
            bob.connection.request(
                lambda seq: messages.Command(seq, op, (messages.Ref(x.id_at_location), "f.pt"), {}, 1, True))
    same(x.get(), torch.ones(2))  # the worker keeps serving


# -- lifetime ------------------------------------------------------------------------

def test_dropping_last_pointer_frees_remote_object(bob):
    x = torch.ones(2).send(bob)
    y = torch.zeros(2).send(bob)
    keep = y.add_(1)  # same pointer object: must not free on its own
    x_id, y_id = x.id_at_location, y.id_at_location
    del x
    gc.collect()
    assert list(bob._objects) == [y_id]
    del keep
    assert y_id in bob._objects  # `y` still reaches it
    del y
    assert x_id not in bob._objects and bob._objects == {}


def test_objects_snapshot_holds_copies_that_never_free(bob):
    x = torch.tensor([1.0, 2.0]).send(bob)
    snapshot = bob._objects
    snapshot[x.id_at_location].add_(100)  # a local copy
    del snapshot
    assert torch.equal(bob._objects[x.id_at_location], torch.tensor([1.0, 2.0]))


def test_sent_tensor_is_owned_by_the_worker(bob):
    for size in (5, tensors.INLINE_MAX // 4 + 1024):  # inline and shared memory
        local = torch.zeros(size)
        p = local.send(bob)
        local.add_(7)
        fetched = p.get()
        assert torch.count_nonzero(fetched) == 0
        fetched.add_(1)
        assert torch.count_nonzero(local - 7) == 0


def test_large_tensor_travels_through_shared_memory(bob):
    big = torch.randn(16 * 1024 * 1024)  # 64 MB
    before = bob.traffic()
    p = big.send(bob)
    same((p * 2).get(), big * 2)
    back = p.get()
    after = bob.traffic()
    same(back, big)
    through_socket = (after["bytes_sent"] - before["bytes_sent"]) + (after["bytes_received"] - before["bytes_received"])
    assert through_socket < 8 * 1024, f"{through_socket} bytes went through the socket for 64 MB"


def test_requires_grad_and_grad_survive_send_and_get(bob):
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    (t * 3).sum().backward()
    p = t.send(bob)
    assert p.requires_grad
    same(p.grad.get(), torch.tensor([3.0, 3.0]))
    back = p.get()
    assert back.requires_grad and torch.equal(back.grad, torch.tensor([3.0, 3.0]))


def test_nonleaf_and_view_can_be_sent(bob):
    w = torch.randn(4, requires_grad=True)
    part = (w * 2)[1:3]  # a non-leaf view: torch's own multiprocessing pickler refuses these
    p = part.send(bob)
    assert p.requires_grad
    same(p.get().detach(), part.detach())
