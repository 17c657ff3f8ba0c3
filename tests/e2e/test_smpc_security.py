"""SMPC security properties (issue 15), as tests:

- every single share is uniform: a statistical test over many sharings of one secret cannot
  tell two secrets apart (and the same test does tell apart a sharing that leaks);
- during `x * y` the client receives only acknowledgements, the crypto provider receives nothing
  at all from the parties (its deals are one-way), and the parties open their masked
  values to each other (read from the traffic ledger, issue 13; skipped where it is missing);
- no party's store ever holds a plaintext intermediate value (every value stored is recorded);
- a party killed during a secure op raises the crash error within a second and leaves no
  triple behind on the parties still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import torch

import simsyft as sy
from simsyft.backends.local import LocalBackend
from simsyft.config import WorkerConfig
from simsyft.simulation import Simulation
from simsyft.smpc import additive
from simsyft.smpc.fixed import encode
from simsyft.testing import in_process_worker

N = 4096  # sharings per secret: one tensor of N equal elements is N independent sharings
CHI2_15_AT_1E6 = 56.49  # the chi-square(15) quantile at 1 - 1e-6


@pytest.fixture(scope="module")
def hook():
    return sy.TorchHook(torch)


@pytest.fixture(scope="module")
def parties(hook):
    workers = [sy.VirtualWorker(hook, id=name) for name in ("sec_bob", "sec_alice", "sec_bill")]
    provider = sy.VirtualWorker(hook, id="sec_james")
    yield workers, provider
    for worker in workers + [provider]:
        worker.shutdown()


def nibbles(values: torch.Tensor) -> list[torch.Tensor]:
    """Three 4-bit windows of each int64 (top, middle, bottom): a non-uniform share shows in one."""
    v = values.to(torch.int64)
    return [(v >> 60) & 0xF, (v >> 30) & 0xF, v & 0xF]


def two_sample_chi2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square statistic of homogeneity between two samples of 4-bit values (15 degrees of freedom)."""
    ca = torch.bincount(a, minlength=16).double()
    cb = torch.bincount(b, minlength=16).double()
    total = ca + cb
    ea, eb = total * ca.sum() / total.sum(), total * cb.sum() / total.sum()
    keep = total > 0
    return float((((ca - ea) ** 2 / ea)[keep] + ((cb - eb) ** 2 / eb)[keep]).sum())


def indistinguishable(shares_a: torch.Tensor, shares_b: torch.Tensor) -> bool:
    return all(two_sample_chi2(x, y) < CHI2_15_AT_1E6 for x, y in zip(nibbles(shares_a), nibbles(shares_b)))


def stored_shares(shared) -> list[torch.Tensor]:
    """Each party's share, read from its worker's store (`bob._objects`), not from the pointer."""
    return [p.location._objects[p.id_at_location] for p in shared.child.values()]


@pytest.mark.parametrize("n", [2, 3])
def test_every_single_share_is_uniform_whatever_the_secret(parties, n):
    workers, james = parties
    secret_a, secret_b = torch.zeros(N, dtype=torch.int64), torch.full((N,), 2 ** 62 + 12345)
    a = stored_shares(secret_a.share(*workers[:n], crypto_provider=james))
    b = stored_shares(secret_b.share(*workers[:n], crypto_provider=james))
    for share_a, share_b in zip(a, b):
        assert indistinguishable(share_a, share_b)
    # the power check: a "sharing" whose shares are only 40 bits wide is told apart at once
    weak = torch.randint(-2 ** 39, 2 ** 39, (N,))
    assert not indistinguishable(weak, secret_b - weak)


def test_shares_made_on_a_worker_and_products_are_uniform_too(parties):
    workers, james = parties
    bob, alice = workers[:2]
    on_bob = [torch.full((N,), v).send(bob) for v in (0, -(2 ** 61))]
    a, b = (stored_shares(p.share(bob, alice, crypto_provider=james).get()) for p in on_bob)
    for share_a, share_b in zip(a, b):
        assert indistinguishable(share_a, share_b)
    one = torch.ones(N, dtype=torch.int64).share(bob, alice, crypto_provider=james)
    zero = torch.zeros(N, dtype=torch.int64).share(bob, alice, crypto_provider=james)
    x, y = torch.full((N,), 7).share(bob, alice, crypto_provider=james), torch.full((N,), 3).share(
        bob, alice, crypto_provider=james)
    for share_a, share_b in zip(stored_shares(x * one), stored_shares(y * zero)):
        assert indistinguishable(share_a, share_b)
    # a public zero factor makes every share zero: it is refreshed with fresh shares of zero
    for share_a, share_b in zip(stored_shares(x * 1), stored_shares(x * 0)):
        assert indistinguishable(share_a, share_b)


# -- the ledger ---------------------------------------------------------------------------

ACK_MAX = 256  # bytes: an Ack or a small Value, never a tensor's data


def _needs_ledger():
    if not hasattr(sy, "measure") or not hasattr(sy, "traffic"):
        pytest.skip("the traffic ledger (sy.traffic / sy.measure, issue 13) is not on this branch yet")


def test_multiplication_sends_the_client_only_acks_and_the_provider_nothing(parties):
    _needs_ledger()
    workers, james = parties
    bob, alice = workers[:2]
    x = torch.randint(-100, 100, (64,)).share(bob, alice, crypto_provider=james)
    y = torch.randint(-100, 100, (64,)).share(bob, alice, crypto_provider=james)
    with sy.measure() as m:
        z = x * y
    links = m.traffic.links
    to_me = {src: t for (src, dst), t in links.items() if dst == "me"}
    assert set(to_me) <= {bob.id, alice.id, james.id}
    for src, t in to_me.items():
        assert t.shm_bytes == 0 and t.bytes <= t.messages * ACK_MAX, (src, t)
    for party in (bob.id, alice.id):
        # Note [One-way deals]: not a byte from a party to the provider, not even an acknowledgement
        back = links.get((party, james.id))
        assert back is None or (back.messages == 0 and back.bytes == 0), (party, back)
        assert links[(james.id, party)].bytes >= 3 * 64 * 8  # its shares of a, b and c
    # the parties open their masked values to each other: eps and delta, 64 int64 each
    assert links[(bob.id, alice.id)].bytes >= 2 * 64 * 8 and links[(alice.id, bob.id)].bytes >= 2 * 64 * 8
    assert z.get().shape == (64,)


def test_sharing_on_a_worker_never_sends_the_value_to_the_client(parties):
    _needs_ledger()
    workers, james = parties
    bob, alice = workers[:2]
    data = torch.randn(1000).send(bob)
    with sy.measure() as m:
        shared = data.fix_precision().share(bob, alice, crypto_provider=james).get()
    for (src, dst), t in m.traffic.links.items():
        if dst == "me":
            assert t.shm_bytes == 0 and t.bytes <= t.messages * ACK_MAX, (src, t)
    assert m.traffic.links[(bob.id, alice.id)].bytes >= 1000 * 8  # alice's share went bob -> alice
    shared.get()


# -- no plaintext in any store --------------------------------------------------------------

class Recording(dict):
    """A store that remembers every tensor ever put in it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen: list[torch.Tensor] = []

    def __setitem__(self, key, value):
        if isinstance(value, torch.Tensor):
            self.seen.append(value.detach().clone())
        super().__setitem__(key, value)


@contextlib.contextmanager
def recording_workers(names):
    """In-process workers whose stores are `Recording`s: (workers, stores); shut down after."""
    workers = [in_process_worker(name) for name in names]
    sim = workers[0].simulation
    stores = []
    for worker in workers:
        core = sim.backend.cores[worker.id]
        core.store = Recording(core.store)
        stores.append(core.store)
    try:
        yield workers, stores
    finally:
        for worker in workers:
            worker.shutdown()


def assert_no_plaintext_stored(stores, plaintexts) -> None:
    for store in stores:
        for value in store.seen:
            for plain in plaintexts:
                if value.shape == plain.shape and value.dtype == plain.dtype:
                    assert not torch.equal(value, plain), "a party stored a plaintext value"


def test_no_party_store_ever_holds_a_plaintext_intermediate(hook):
    with recording_workers(("rec_bob", "rec_alice", "rec_bill", "rec_james")) as (workers, stores):
        parties, james = workers[:3], workers[3]
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.randint(-2 ** 20, 2 ** 20, (4, 4), generator=gen) for _ in range(2))
        fx, fy = x.float() / 1000, y.float() / 1000
        ex, ey = encode(fx, 10, 3), encode(fy, 10, 3)  # the fixed-point encodings
        plaintexts = [x, y, x * y, x @ y, (x * y).sum(0), x + y, x - y,
                      ex, ey, ex * ey, ex @ ey, torch.div(ex * ey, 1000, rounding_mode="floor"),
                      torch.div(ex @ ey, 1000, rounding_mode="floor")]
        for n in (2, 3):
            sx, sy_ = (t.share(*parties[:n], crypto_provider=james) for t in (x, y))
            results = [sx * sy_, sx @ sy_, (sx * sy_).sum(0), sx + sy_, sx - sy_]
            px, py = (t.fix_prec().share(*parties[:n], crypto_provider=james) for t in (fx, fy))
            results += [px * py, px.mm(py), (px * py).mean(), px / 3]  # truncations, collapsed for n = 3
            del results
        assert sum(len(store.seen) for store in stores) > 50  # the recording saw the protocol's traffic
        assert_no_plaintext_stored(stores, plaintexts)


# -- a crash during a secure op -----------------------------------------------------------------

@pytest.mark.parametrize("when", ["before the deal", "between deal and opening"])
def test_a_party_killed_during_multiplication_raises_within_a_second(hook, monkeypatch, when):
    sim = Simulation(LocalBackend(f"smpc-crash-{when.split()[0]}"))
    try:
        for name in ("bob", "alice", "james"):
            sim.backend.start(WorkerConfig(name))
        bob, alice, james = sim["bob"], sim["alice"], sim["james"]
        x = torch.tensor([1, 2, 3]).share(bob, alice, crypto_provider=james)
        y = torch.tensor([4, 5, 6]).share(bob, alice, crypto_provider=james)
        kept = {x.child["bob"].id_at_location, y.child["bob"].id_at_location}
        pid = alice.pid
        if when == "before the deal":
            os.kill(pid, signal.SIGKILL)
        else:
            real = additive._deal

            def deal_then_kill(*args):
                real(*args)
                os.kill(pid, signal.SIGKILL)
            monkeypatch.setattr(additive, "_deal", deal_then_kill)
        start = time.monotonic()
        with pytest.raises(sy.WorkerCrashedError, match="alice"):
            x * y
        assert time.monotonic() - start < 1.0
        assert set(bob._objects) == kept  # no triple share left on the party still alive
        assert james._objects == {}
    finally:
        sim.shutdown()
