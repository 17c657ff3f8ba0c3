"""The comparison protocol's arithmetic, both ends: what the crypto provider deals for one
comparison (`deal_msb`) and what each party computes, round by round (`msb_rounds`).

Owns the protocol of Note [Most significant bit]; worker/mpc.py drives `msb_rounds` (it carries
the openings between parties) and the provider's Deal calls `deal_msb`. Pure tensor code: it
imports ring.py only, so the client (dealing as the local worker "me") and the workers share it.

Note [Most significant bit]
    Every comparison reduces to the sign of a shared x, its most significant bit in the ring of
    L bits (x < y is msb(x - y)). The provider deals, per element, a random r shared twice,
    arithmetically and as XOR shares of its L bits packed in one word (an "edaBit"), log2(L)
    pairs of AND triples on packed words, and a random bit shared both ways (a "daBit").
      1. The parties open c = x + r: uniform, so it says nothing about x.
      2. x = c - r = c + ~r + 1 as bit strings: a public word plus an XOR-shared one. Its carries
         come from a Kogge-Stone prefix over (generate, propagate) words: log2(L) rounds, each two
         ANDs of packed words opened at once (Beaver's trick over GF(2)). Shifts and XOR are
         local. msb(x) = propagate bit L-1 XOR the carry into bit L-1.
      3. The XOR-shared bit b becomes arithmetic with the daBit s: open m = b ^ s, then
         b = m + s - 2ms, linear in the shares of s.
    2 + log2(L) rounds (8 in the 2^64 ring, 7 in 2^32); every opened value is masked by a fresh
    uniform word or bit, and the result is exact for every x in the ring.
"""

from __future__ import annotations

from typing import Generator

import torch

from . import ring

__all__ = ["deal_msb", "deal_size", "levels", "msb_rounds"]


def _bits(dtype: torch.dtype) -> int:
    return torch.iinfo(dtype).bits


def levels(dtype: torch.dtype) -> int:
    """Kogge-Stone levels for a ring of `dtype`: log2(L)."""
    return _bits(dtype).bit_length() - 1


def deal_size(dtype: torch.dtype) -> int:
    """Tensors a party receives per comparison: r, r's bits, the daBit (two), a triple per level."""
    return 4 + 3 * levels(dtype)


def _xor_split(value: torch.Tensor, n: int) -> list[torch.Tensor]:
    shares = [ring.uniform(value.shape, value.dtype) for _ in range(n - 1)]
    last = value.clone()
    for share in shares:
        last ^= share
    return shares + [last]


def deal_msb(shape: tuple, dtype: torch.dtype, n: int) -> list[tuple]:
    """The provider's correlated randomness for msb of a `shape` tensor: one tuple per party."""
    r = ring.uniform(shape, dtype)
    s = ring.uniform(shape, dtype) & 1
    parts = [ring.split(r, n), _xor_split(r, n), _xor_split(s, n), ring.split(s, n)]
    for _ in range(levels(dtype)):  # two ANDs per level, stacked on a leading dim
        a, b = ring.uniform((2, *shape), dtype), ring.uniform((2, *shape), dtype)
        parts += [_xor_split(a, n), _xor_split(b, n), _xor_split(a & b, n)]
    return [tuple(part[i] for part in parts) for i in range(n)]


Opening = tuple  # ("add" | "xor", tuple of tensors): what a round opens; the sum / XOR comes back


def msb_rounds(first: bool, x: torch.Tensor, deal: tuple) -> Generator[Opening, tuple, torch.Tensor]:
    """One party's side of Note [Most significant bit]: yields each round's masked shares and
    receives the opened values; returns its arithmetic share of msb(x) (0 or 1)."""
    bits = _bits(x.dtype)
    r, r_bits, s_bit, s_arith = deal[:4]
    triples = deal[4:]
    (c,) = yield "add", (x + r,)
    ones = torch.full_like(x, -1)
    not_r = r_bits ^ ones if first else r_bits  # ~r: one party flips its share
    generate = c & not_r
    propagate = c ^ not_r if first else not_r
    top = propagate  # the per-bit propagate, for the sum bit at the end
    generate = generate ^ (propagate & 1)  # the carry-in of 1: bit 0 carries out a | b = g ^ p
    shift = 1
    for level in range(levels(x.dtype)):
        a, b, ab = triples[3 * level:3 * level + 3]
        left = torch.stack((propagate, propagate))
        right = torch.stack((generate << shift, propagate << shift))
        d, e = yield "xor", (left ^ a, right ^ b)
        both = ab ^ (d & b) ^ (e & a)
        if first:
            both ^= d & e
        generate = generate ^ both[0]  # g and p of one span never both hold: XOR is OR here
        propagate = both[1]
        shift *= 2
    bit = ((top >> (bits - 1)) ^ (generate >> (bits - 2))) & 1
    (m,) = yield "xor", ((bit ^ s_bit) & 1,)
    share = s_arith * (1 - 2 * m)
    return share + m if first else share
