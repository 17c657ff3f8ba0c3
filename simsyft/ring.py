"""Ring arithmetic both ends of SMPC share: uniform ring elements and additive splits.

Owns the rings additive shares live in (`RINGS`: "long" is Z/2^64 as int64, "int" is Z/2^32 as
int32; torch's integer ops wrap exactly like the ring), `uniform` (ring elements drawn from a
generator seeded by the OS, never torch's global seed, which a config fixes) and `split` (n
additive shares of a tensor). The client (smpc/) and the workers (worker/mpc.py) both deal
shares, so it sits below both. Imports nothing of simsyft.
"""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["RINGS", "ring_dtype", "split", "uniform"]

# PySyft's dtype names -> (torch dtype, field size).
RINGS = {"long": (torch.int64, 2 ** 64), "int": (torch.int32, 2 ** 32)}
_BY_TORCH = {torch.int64: "long", torch.int32: "int"}
_local = threading.local()


def ring_dtype(name: str) -> torch.dtype:
    try:
        return RINGS[name][0]
    except KeyError:
        raise ValueError(f"dtype must be 'long' (the 2^64 ring) or 'int' (2^32), got {name!r}") from None


def ring_name(dtype: torch.dtype) -> str:
    return _BY_TORCH[dtype]


def _generator() -> torch.Generator:
    # One per thread, seeded from the OS: shares must not be predictable from a config seed.
    gen = getattr(_local, "gen", None)
    if gen is None or getattr(_local, "pid", None) != os.getpid():  # a forked child reseeds
        gen = _local.gen = torch.Generator()
        gen.manual_seed(int.from_bytes(os.urandom(8), "little"))
        _local.pid = os.getpid()
    return gen


def uniform(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Elements drawn uniformly from the whole ring of `dtype` (every bit pattern equally likely)."""
    gen = _generator()
    if dtype == torch.int32:
        return torch.randint(-2 ** 31, 2 ** 31, tuple(shape), dtype=torch.int64, generator=gen).to(torch.int32)
    if dtype != torch.int64:
        raise TypeError(f"shares live in int64 or int32 rings, not {dtype}")
    # randint cannot span all 2^64 values in one call: two 32-bit halves, combined with wrap-around.
    high = torch.randint(-2 ** 31, 2 ** 31, tuple(shape), dtype=torch.int64, generator=gen)
    low = torch.randint(0, 2 ** 32, tuple(shape), dtype=torch.int64, generator=gen)
    return (high << 32) | low


def split(secret: torch.Tensor, n: int) -> list[torch.Tensor]:
    """`n` additive shares of `secret` (an int64 or int32 tensor): any n-1 of them are uniform and
    independent of the secret; all n sum to it with wrap-around."""
    if n < 1:
        raise ValueError("sharing needs at least one party")
    shares = [uniform(secret.shape, secret.dtype).to(secret.device) for _ in range(n - 1)]
    last = secret.clone()
    for share in shares:
        last -= share
    return shares + [last]


def reconstruct(shares: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the shares, wrapping in the ring (int32 sums stay int32)."""
    total = shares[0].clone()
    for share in shares[1:]:
        total += share
    return total
