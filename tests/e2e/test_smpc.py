"""SMPC part 1 on worker processes (issue 15): PySyft's reprs and API for fixed precision and
additive sharing, what each worker's store holds, the errors, sharing a worker's data on that
worker, and the Part 9 / Part 10 examples' outputs."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys

import pytest
import torch

import simsyft as sy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINTER = r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> {}:\d+\]"


@pytest.fixture(scope="module")
def hook():
    return sy.TorchHook(torch)


@pytest.fixture(scope="module")
def workers(hook):
    names = ("sm_bob", "sm_alice", "sm_bill", "sm_james")
    made = [sy.VirtualWorker(hook, id=name) for name in names]
    yield made
    for worker in made:
        worker.shutdown()


@pytest.fixture
def world(workers):
    for worker in workers:
        worker.clear_objects()
    yield workers
    for worker in workers:
        worker.clear_objects()


def test_share_repr_stores_and_get(world):
    bob, alice, bill, james = world
    x = torch.tensor([25, -3]).share(bob, alice, crypto_provider=james)
    assert isinstance(x, sy.AdditiveSharingTensor)
    assert re.fullmatch(r"\(Wrapper\)>\[AdditiveSharingTensor\]\n\t-> " + POINTER.format("sm_bob") + r"\n\t-> "
                        + POINTER.format("sm_alice") + r"\n\t\*crypto provider: sm_james\*", repr(x)), repr(x)
    (bob_id, bob_share), = bob._tensors.items()
    (alice_id, alice_share), = alice._objects.items()
    assert bob_id == x.child["sm_bob"].id_at_location and alice_id == x.child["sm_alice"].id_at_location
    assert bob_share.dtype == torch.int64 and torch.equal(bob_share + alice_share, torch.tensor([25, -3]))
    assert james._objects == {} and bill._objects == {}
    assert torch.equal(x.get(), torch.tensor([25, -3]))
    assert bob._objects == {} and alice._objects == {}  # get() frees the shares
    with pytest.raises(sy.ObjectNotFoundError):
        x.get()


def test_default_crypto_provider_is_me_and_then_the_client_deals(world):
    bob, alice, bill, _ = world
    x = torch.tensor([25]).share(bob, alice, bill)
    assert repr(x).endswith("\n\t*crypto provider: me*")
    y = torch.tensor([5]).share(bob, alice, bill)
    assert torch.equal((x * y).get(), torch.tensor([125]))


def test_int_ring_shares_are_int32(world):
    bob, alice, _, james = world
    x = torch.tensor([2 ** 31 - 1, 7]).share(bob, alice, crypto_provider=james, dtype="int")
    assert {t.dtype for t in bob._objects.values()} == {torch.int32}
    assert x.field == 2 ** 32
    assert torch.equal((x + x).get(), torch.tensor([-2, 14], dtype=torch.int32))  # wraps in the 2^32 ring


def test_errors(world):
    bob, alice, bill, james = world
    with pytest.raises(TypeError, match=r"^FloatTensor cannot be additively shared, Use fix_precision\.$"):
        torch.tensor([1.0]).share(bob, alice)
    with pytest.raises(ValueError, match="crypto provider 'sm_james' cannot also hold a share"):
        torch.tensor([1]).share(bob, james, crypto_provider=james)
    with pytest.raises(ValueError, match="got a worker twice"):
        torch.tensor([1]).share(bob, bob)
    x = torch.tensor([1, 2]).share(bob, alice, crypto_provider=james)
    with pytest.raises(sy.LocationMismatchError, match="shared between"):
        x + torch.tensor([1, 2]).share(bob, bill, crypto_provider=james)
    with pytest.raises(TypeError, match="different rings"):
        x * torch.tensor([1, 2]).share(bob, alice, crypto_provider=james, dtype="int")
    with pytest.raises(ValueError, match="different crypto providers"):
        x * torch.tensor([1, 2]).share(bob, alice, crypto_provider=bill)
    with pytest.raises(TypeError, match="fix_precision"):
        x + 0.5
    with pytest.raises(TypeError, match="public positive int"):
        x / 0
    with pytest.raises(ValueError, match="boolean"):
        bool(x)
    with pytest.raises(ValueError, match="cannot be correctly embedded"):
        torch.tensor([1e30]).fix_prec()
    with pytest.raises(NotImplementedError, match="requires_grad"):  # refused, never ignored
        torch.tensor([1]).share(bob, alice, requires_grad=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        torch.tensor([1]).send(bob).share(bob, alice, crypto_povider=james)


def test_free_ops_and_public_operands(world):
    bob, alice, bill, james = world
    t = torch.arange(12).view(3, 4)
    x = t.share(bob, alice, bill, crypto_provider=james)
    assert torch.equal(x.view(4, 3).get(), t.view(4, 3))
    assert torch.equal(x.reshape(-1).get(), t.reshape(-1))
    assert torch.equal(x.t().get(), t.t())
    assert torch.equal(x[1:, 2].get(), t[1:, 2])
    assert torch.equal(torch.cat([x, x]).get(), torch.cat([t, t]))
    assert torch.equal(torch.stack([x, x], dim=1).get(), torch.stack([t, t], dim=1))
    assert torch.equal((x + torch.tensor([1, 2, 3, 4])).get(), t + torch.tensor([1, 2, 3, 4]))
    assert torch.equal((x * torch.tensor([1, 0, 3, 4])).get(), t * torch.tensor([1, 0, 3, 4]))
    assert torch.equal((x @ torch.ones(4, 2, dtype=torch.long)).get(), t @ torch.ones(4, 2, dtype=torch.long))
    assert torch.equal((10 - x).get(), 10 - t)
    assert torch.equal(torch.add(x, x).get(), t + t)
    assert torch.equal(x.sum(1).get(), t.sum(1))
    assert torch.equal(x.get(), t)  # no op above consumed x's shares


def test_fixed_precision_reprs_and_arithmetic(world):
    bob, alice, _, james = world
    x = torch.tensor([0.1, 0.2, 0.3]).fix_prec()
    assert repr(x) == "(Wrapper)>FixedPrecisionTensor>tensor([100, 200, 300])"
    assert torch.equal(x.child, torch.tensor([100, 200, 300]))
    assert torch.allclose((x + x).float_prec(), torch.tensor([0.2, 0.4, 0.6]))
    assert torch.allclose((x * x).float_precision(), torch.tensor([0.01, 0.04, 0.09]))
    assert repr(torch.tensor([1.5]).fix_precision(base=2, precision_fractional=4)) == \
        "(Wrapper)>FixedPrecisionTensor>tensor([24])"
    s = torch.tensor([0.1, 0.2, 0.3]).fix_prec().share(bob, alice, crypto_provider=james)
    assert re.fullmatch(r"\(Wrapper\)>FixedPrecisionTensor>\[AdditiveSharingTensor\]\n\t-> " + POINTER.format("sm_bob")
                        + r"\n\t-> " + POINTER.format("sm_alice") + r"\n\t\*crypto provider: sm_james\*", repr(s))
    y = (s + s).get()
    assert repr(y) == "(Wrapper)>FixedPrecisionTensor>tensor([200, 400, 600])"
    assert torch.allclose(y.float_prec(), torch.tensor([0.2, 0.4, 0.6]))
    assert torch.allclose((s * s).get().float_prec(), torch.tensor([0.01, 0.04, 0.09]), atol=1e-3)
    assert torch.allclose((s * 2.5).get().float_prec(), torch.tensor([0.25, 0.5, 0.75]), atol=1e-3)
    with pytest.raises(TypeError, match="get"):
        s.float_precision()


def test_fix_precision_and_share_of_a_workers_data_run_on_that_worker(world):
    bob, alice, bill, james = world
    data = torch.tensor([1.5, -2.25, 3.0])
    ptr = data.send(bob)
    fixed = ptr.fix_precision()
    assert re.fullmatch(POINTER.format("sm_bob"), repr(fixed))
    assert any(torch.equal(v, torch.tensor([1500, -2250, 3000])) for v in bob._objects.values())
    assert torch.allclose(fixed.float_precision().get(), data)  # decoded on bob
    shared_ptr = fixed.share(bob, alice, bill, crypto_provider=james)
    assert re.fullmatch(POINTER.format("sm_bob"), repr(shared_ptr))
    # bob split it and sent the shares: alice and bill each hold one share, never the value
    assert len(alice._objects) == 1 and len(bill._objects) == 1
    shared = shared_ptr.get()
    assert isinstance(shared, sy.FixedPrecisionTensor) and isinstance(shared.child, sy.AdditiveSharingTensor)
    with pytest.raises(sy.ObjectNotFoundError):
        shared_ptr.get()
    assert torch.allclose((shared * 2).get().float_precision(), data * 2)
    assert torch.allclose(shared.get().float_precision(), data)
    assert alice._objects == {} and bill._objects == {}
    # an integer pointer shares without fixed precision; a float one is refused, as locally
    assert torch.equal(torch.tensor([7, 8]).send(alice).share(bob, alice).get().get(), torch.tensor([7, 8]))
    with pytest.raises(TypeError, match="FloatTensor cannot be additively shared"):
        torch.tensor([1.0]).send(alice).share(bob, alice)


def test_dropping_a_shared_pointer_frees_its_shares(world):
    bob, alice, _, james = world
    ptr = torch.tensor([1, 2]).send(bob)
    shared_ptr = ptr.share(bob, alice, crypto_provider=james)
    assert len(alice._objects) == 1
    del shared_ptr
    gc.collect()
    assert alice._objects == {}


def run_example(name: str) -> str:
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True, text=True,
                            timeout=300, cwd=os.path.join(ROOT, "examples"), env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_part9_example_output():
    out = run_example("tutorial_part9.py")
    outs = dict(re.findall(r"Out\[(\d+)\]: (.*?)\n\n", out, re.S))
    assert outs["8"] == "25" and outs["12"] == "30"
    assert outs["17"] == "tensor([25])" and outs["18"] == "{}"
    shares = [int(re.fullmatch(r"tensor\(\[(-?\d+)\]\)", outs[k]).group(1)) for k in ("20", "21", "22")]
    assert (sum(shares) + 2 ** 63) % 2 ** 64 - 2 ** 63 == 25 and all(abs(s) > 2 ** 20 for s in shares)
    assert outs["23"] == "tensor([25])"
    assert outs["25"] == "tensor([30])" and outs["26"] == "tensor([20])" and outs["29"] == "tensor([125])"
    assert outs["31"] == "tensor([[2, 4],\n        [6, 8]])"
    assert "*crypto provider: crypto_provider*" in outs["32"]
    # issue 16: the comparison and max cells
    assert outs["34"] == "tensor([1])" and outs["35"] == "tensor([0])"  # x > y, x <= y
    assert outs["36"] == "tensor([0])" and outs["37"] == "tensor([1])"  # x == y, x == y + 20
    assert outs["38"] == "tensor(4)"  # PySyft 0.2.9's max(): a 0-dim sum
    assert outs["39"] == "tensor([4, 3])" and outs["40"] == "tensor([1, 0])"


def test_part10_example_secure_average_equals_the_plain_one():
    out = run_example("tutorial_part10.py")
    losses = [float(v) for v in re.findall(r"^\s*Test set: Average loss: ([\d.]+)$", out, re.M)]
    assert len(losses) == 3  # section 1, then each of section 2's epochs
    assert losses[2] < losses[1]  # the securely averaged models keep learning
    error = float(re.search(r"max \|secure - plain\| over all parameters: ([\d.e-]+)", out).group(1))
    assert error <= 1e-3  # fixed precision truncates each parameter by < 1e-3; halving keeps it below
