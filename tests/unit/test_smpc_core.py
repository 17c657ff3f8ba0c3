"""The SMPC handlers of worker/mpc.py on WorkerCores in this process (backends/inprocess.py):
ShareOut, Deal/Triple, Open/Opened/Beaver, and their refusals; ring.py's uniform and split."""

from __future__ import annotations

import pytest
import torch

from simsyft import ring
from simsyft.backends.inprocess import InProcessBackend
from simsyft.config import WorkerConfig
from simsyft.errors import ProtocolError
from simsyft.wire import messages
from simsyft.worker import mpc


@pytest.fixture
def cores():
    backend = InProcessBackend("smpc-unit")
    for name in ("bob", "alice", "james"):
        backend.start(WorkerConfig(name))
    yield backend
    backend.shutdown()


def ask(backend, name, make):
    return backend.link(name).request(make)


def test_split_sums_to_the_secret_with_wrap_around_in_both_rings():
    for dtype in (torch.int64, torch.int32):
        info = torch.iinfo(dtype)
        secret = torch.tensor([0, 1, -1, info.max, info.min], dtype=dtype)
        shares = ring.split(secret, 5)
        assert all(s.dtype == dtype for s in shares)
        assert torch.equal(ring.reconstruct(shares), secret)


def test_uniform_covers_the_whole_int64_ring():
    u = ring.uniform((20000,), torch.int64)
    # every byte value appears in the top byte: not a 63-bit or 32-bit draw
    top = ((u >> 56) & 0xFF).unique()
    assert top.numel() == 256 and bool((u < 0).any()) and bool((u > 2 ** 62).any())


def test_share_out_sends_one_share_per_party_and_keeps_the_data(cores):
    bob, alice = cores.cores["bob"], cores.cores["alice"]
    x = torch.tensor([5, -7, 2 ** 62])
    ask(cores, "bob", lambda seq: messages.Store(seq, 11, x))
    reply = ask(cores, "bob", lambda seq: messages.ShareOut(seq, 11, ("bob", "alice"), (21, 22), "long"))
    assert reply.value == ("int64", (3,), False, "cpu")
    assert torch.equal(bob.store[11], x)  # the data stays; its pointer frees it
    assert torch.equal(bob.store[21] + alice.store[22], x)
    assert not torch.equal(bob.store[21], x) and not torch.equal(alice.store[22], x)


def test_share_out_of_a_float_tensor_raises_pysyfts_type_error(cores):
    ask(cores, "bob", lambda seq: messages.Store(seq, 11, torch.ones(2)))
    with pytest.raises(TypeError, match="FloatTensor cannot be additively shared, Use fix_precision."):
        ask(cores, "bob", lambda seq: messages.ShareOut(seq, 11, ("bob", "alice"), (21, 22), "long"))
    assert 22 not in cores.cores["alice"].store


def test_deal_sends_each_party_its_triple_and_keeps_nothing(cores):
    ids = ((1, 2, 3), (4, 5, 6))
    ask(cores, "james", lambda seq: messages.Deal(seq, "matmul", ((2, 3), (3, 4)), "long", ("bob", "alice"), ids))
    bob, alice = cores.cores["bob"].store, cores.cores["alice"].store
    a, b, c = (bob[i] + alice[j] for i, j in zip(*ids))
    assert torch.equal(a.matmul(b), c) and c.shape == (2, 4)
    assert cores.cores["james"].store == {}


def test_the_crypto_provider_refuses_to_be_a_party(cores):
    with pytest.raises(ValueError, match="crypto provider"):
        ask(cores, "james", lambda seq: messages.Deal(seq, "mul", ((2,), (2,)), "long", ("bob", "james"),
                                                      ((1, 2, 3), (4, 5, 6))))


def test_beaver_multiplication_across_two_cores(cores):
    x, y = torch.tensor([3, -4, 2 ** 40]), torch.tensor([7, 9, 2 ** 30])
    xs, ys = ring.split(x, 2), ring.split(y, 2)
    for name, xi, yi, ids in (("bob", xs[0], ys[0], (10, 11)), ("alice", xs[1], ys[1], (10, 11))):
        for object_id, value in zip(ids, (xi, yi)):
            ask(cores, name, lambda seq, i=object_id, v=value: messages.Store(seq, i, v))
    triples = ((1, 2, 3), (1, 2, 3))
    ask(cores, "james", lambda seq: messages.Deal(seq, "mul", ((3,), (3,)), "long", ("bob", "alice"), triples))
    for name in ("bob", "alice"):
        ask(cores, name, lambda seq: messages.Open(seq, 99, 10, 11, 1, 2, ("bob", "alice")))
    # each party holds both openings, out of its store
    assert set(cores.cores["alice"].mpc.openings[99]) == {"bob", "alice"}
    z = []
    for i, name in enumerate(("bob", "alice")):
        ack = ask(cores, name, lambda seq: messages.Beaver(seq, 99, "mul", 1, 2, 3, 50, i == 0))
        assert ack.result[:2] == ("p", 50)
        z.append(cores.cores[name].store[50])
        assert set(cores.cores[name].store) == {10, 11, 50}  # the triple is dropped
        assert 99 not in cores.cores[name].mpc.openings
    assert torch.equal(z[0] + z[1], x * y)


def test_beaver_without_openings_and_malformed_openings_are_refused(cores):
    with pytest.raises(ValueError, match="no openings"):
        ask(cores, "bob", lambda seq: messages.Beaver(seq, 5, "mul", 1, 2, 3, 4, True))
    with pytest.raises(ProtocolError, match="two tensors"):
        ask(cores, "bob", lambda seq: messages.Opened(seq, 5, "alice", (torch.ones(1),)))
    with pytest.raises(ProtocolError, match="unknown op"):
        ask(cores, "james", lambda seq: messages.Deal(seq, "div", ((1,), (1,)), "long", ("bob",), ((1, 2, 3),)))


def test_openings_are_bounded():
    state = mpc.MpcState()
    for tag in range(200):
        state.slot(tag)["bob"] = (torch.zeros(1), torch.zeros(1))
    assert len(state.openings) == mpc._KEPT and 199 in state.openings and 0 not in state.openings
