"""The comparison protocol's arithmetic (simsyft/binary.py, Note [Most significant bit]), run
here with every party in one process: the dealt tensors are consistent, and the reconstructed
result is msb(x) for every ring element, edge values included, for 2, 3 and 5 parties."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simsyft import binary, ring


def run_msb(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every party's generator, their openings combined as worker/mpc.py's Step does."""
    shares = ring.split(x, n)
    deals = binary.deal_msb(tuple(x.shape), x.dtype, n)
    results, rounds = play([binary.msb_rounds(i == 0, shares[i], deals[i]) for i in range(n)])
    assert all(r is not None for r in results) and rounds == binary.levels(x.dtype) + 2
    return ring.reconstruct(results)


def play(parties: list) -> tuple[list, int]:
    """Run the parties' generators to the end, their openings combined as worker/mpc.py's Step
    does; (each party's result, the number of rounds)."""
    sent = [next(p) for p in parties]
    results: list = [None] * len(parties)
    rounds = 1
    while results[0] is None:
        op = (lambda a, b: a + b) if sent[0][0] == "add" else (lambda a, b: a ^ b)
        opened = tuple(functools.reduce(op, [s[1][k] for s in sent]) for k in range(len(sent[0][1])))
        sent = []
        for i, party in enumerate(parties):
            try:
                sent.append(party.send(opened))
            except StopIteration as done:
                results[i] = done.value
        rounds += bool(sent)
    return results, rounds


def edges(dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return torch.tensor([0, 1, -1, 2, -2, info.min, info.max, info.min + 1, info.max - 1,
                         2 ** (info.bits - 2), -2 ** (info.bits - 2)], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_msb_of_edge_values(dtype, n):
    x = edges(dtype)
    assert torch.equal(run_msb(x, n), (x < 0).to(dtype))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.sampled_from([2, 3, 5]), dtype=st.sampled_from([torch.int64, torch.int32]),
       shape=st.sampled_from([(), (1,), (7,), (3, 4)]))
def test_msb_of_random_ring_elements(seed, n, dtype, shape):
    gen = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)
    assert torch.equal(run_msb(x, n), (x < 0).to(dtype))


def test_the_deal_is_consistent():
    n, shape = 3, (5,)
    deals = binary.deal_msb(shape, torch.int64, n)
    assert all(len(d) == binary.deal_size(torch.int64) == 4 + 3 * 6 for d in deals)
    columns = list(zip(*deals))
    xor = lambda values: functools.reduce(lambda a, b: a ^ b, values)  # noqa: E731
    r = ring.reconstruct(list(columns[0]))
    assert torch.equal(xor(columns[1]), r)  # r shared arithmetically and bitwise
    s = xor(columns[2])
    assert set(s.tolist()) <= {0, 1} and torch.equal(ring.reconstruct(list(columns[3])), s)  # the daBit
    for level in range(6):
        a, b, c = (xor(columns[4 + 3 * level + k]) for k in range(3))
        assert a.shape == (2, *shape) and torch.equal(a & b, c)


def test_a_wrong_and_triple_gives_a_wrong_answer():
    """The check above can fail: a deal whose AND triple is off breaks the result."""
    x = torch.tensor([-5, 7, -1, 3] * 16, dtype=torch.int64)
    shares = ring.split(x, 2)
    deals = [list(d) for d in binary.deal_msb(tuple(x.shape), x.dtype, 2)]
    deals[0][4 + 3 * 5 + 2] = deals[0][4 + 3 * 5 + 2] ^ -1  # the last level's c, all bits flipped
    results, _ = play([binary.msb_rounds(i == 0, shares[i], tuple(deals[i])) for i in range(2)])
    assert not torch.equal(ring.reconstruct(results), (x < 0).to(torch.int64))
