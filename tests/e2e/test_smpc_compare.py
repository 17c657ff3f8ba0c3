"""SMPC part 2 on worker processes (issue 16): what the traffic ledger shows during comparisons,
relu, max and a training step (the provider receives nothing, the client only acknowledgements), that no store
holds a plaintext intermediate, and the errors. (Part 9's comparison cells: tests/e2e/test_smpc.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.optim as optim

import simsyft as sy
from tests.e2e.test_smpc_security import ACK_MAX, assert_no_plaintext_stored, recording_workers
from tests.e2e.test_smpc_training import Net

pytestmark = pytest.mark.skipif(not hasattr(sy, "measure"), reason="needs the traffic ledger (issue 13)")


@pytest.fixture(scope="module")
def parties():
    hook = sy.TorchHook(torch)
    workers = [sy.VirtualWorker(hook, id=name) for name in ("cmp_bob", "cmp_alice", "cmp_bill", "cmp_james")]
    yield workers[:3], workers[3]
    for worker in workers:
        worker.shutdown()


def assert_quiet_provider_and_client(m, provider, party_ids, elements):
    links = m.traffic.links
    for (src, dst), t in links.items():
        if dst == "me":  # acknowledgements only: no share, no opened value reaches the client
            assert t.shm_bytes == 0 and t.bytes <= t.messages * ACK_MAX, (src, t)
        if dst == provider.id and src != "me":  # Note [One-way deals]
            assert t.messages == 0 and t.bytes == 0, (src, t)
    for party in party_ids:
        assert links[(provider.id, party)].bytes >= 4 * elements * 8  # r twice and the daBit, at least
    for a in party_ids:  # the masked openings cross party to party
        for b in party_ids:
            if a != b:
                assert links[(a, b)].bytes >= elements * 8


@pytest.mark.parametrize("n", [2, 3])
def test_comparisons_send_the_provider_nothing_and_the_client_only_acks(parties, n):
    workers, james = parties
    workers = workers[:n]
    x = torch.randint(-100, 100, (64,)).share(*workers, crypto_provider=james)
    y = torch.randint(-100, 100, (64,)).share(*workers, crypto_provider=james)
    with sy.measure() as m:
        results = [x > y, x <= 3, x == y, x.relu(), x.max(), x.view(8, 8).max(dim=1)[1], x.argmax()]
    assert_quiet_provider_and_client(m, james, [w.id for w in workers], 64)
    for r in results:
        r.get()


def test_fixed_precision_relu_and_max_pool_like_max_stay_quiet(parties):
    workers, james = parties
    x = torch.randn(4, 8).fix_prec().share(*workers[:2], crypto_provider=james)
    with sy.measure() as m:
        out = (torch.nn.functional.relu(x) > 0.1).max(dim=1)[0]
    assert_quiet_provider_and_client(m, james, [w.id for w in workers[:2]], 32)
    assert out.get().child.shape == (4,)


def test_no_party_store_holds_a_plaintext_during_comparisons(hook):
    with recording_workers(("crec_bob", "crec_alice", "crec_bill", "crec_james")) as (workers, stores):
        gen = torch.Generator().manual_seed(1)
        x, y = (torch.randint(-2 ** 20, 2 ** 20, (16,), generator=gen) for _ in range(2))
        x[:4] = y[:4]  # some ties
        plaintexts = [x, y, x - y, y - x, (x > y).long(), (x < y).long(), (x >= y).long(), (x <= y).long(),
                      (x == y).long(), torch.relu(x), (x < 0).long(), (x >= 0).long()]
        for n in (2, 3):
            sx, sy_ = (t.share(*workers[:n], crypto_provider=workers[3]) for t in (x, y))
            results = [sx > sy_, sx < sy_, sx >= sy_, sx <= sy_, sx == sy_, sx.relu(), sx.max(), sx.argmax()]
            del results
        assert sum(len(store.seen) for store in stores) > 100
        assert_no_plaintext_stored(stores, plaintexts)


def test_errors(parties):
    workers, james = parties
    x = torch.tensor([1, 2]).share(*workers[:2], crypto_provider=james)
    with pytest.raises(ValueError, match="wrap around the ring"):
        x > 2 ** 62  # noqa: B015
    with pytest.raises(TypeError, match="fix_precision"):
        x > 0.5  # noqa: B015
    other = torch.tensor([1, 2]).share(*workers[1:3], crypto_provider=james)
    with pytest.raises(sy.LocationMismatchError):
        x < other  # noqa: B015
    with pytest.raises(ValueError, match="decrypt"):
        bool(x > 0)
    with pytest.raises(IndexError):
        torch.tensor([[1], [2]]).share(*workers[:2], crypto_provider=james)[:, :0].max(dim=1)
    assert torch.equal((x >= 2).get(), torch.tensor([0, 1]))


def test_a_training_step_sends_the_provider_nothing_and_the_client_only_acks(parties):
    workers, james = parties
    bob, alice = workers[:2]
    # the Part 12 step: forward, loss, backward, SGD step, all on the shares
    data = torch.rand(4, 3).fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    target = torch.rand(4, 2).fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    model = Net(3).fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    opt = optim.SGD(params=model.parameters(), lr=0.1).fix_precision()
    with sy.measure() as m:
        opt.zero_grad()
        loss = ((model(data) - target) ** 2).sum()
        loss.backward()
        opt.step()
    links = m.traffic.links
    for (src, dst), traffic in links.items():
        if dst == "me":
            assert traffic.shm_bytes == 0 and traffic.bytes <= traffic.messages * ACK_MAX, (src, traffic)
        if dst == james.id and src != "me":
            assert traffic.messages == 0 and traffic.bytes == 0, (src, traffic)
    assert links[(james.id, bob.id)].bytes > 0 and links[(bob.id, alice.id)].bytes > 0
    assert loss.get().float_precision().item() >= 0
