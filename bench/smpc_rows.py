"""The SMPC row (issues 15, 16): a 2-party secure `mm` (256 x 256), a 1M-element secure multiply,
and a 100k-element secure `>` and `relu`, each timed in the same run as the same plaintext op
(the floor), through the public API only.

    x = a.share(bob, alice, crypto_provider=james); (x.mm(y)).get() vs a.mm(b)

The secure op is timed up to the result's shares (no `.get()`): the triple dealt by james,
the openings party to party, the local products. docs/smpc.md explains the ratio.
"""

from __future__ import annotations

from typing import Any

from .harness import Compare, Figure, Settings, time_calls, time_figure

G = "simsyft"


def row_smpc(s: Settings, lab: Any) -> list[Figure]:
    """2-party secure mm 256x256, 1M-element multiply, 100k-element > and relu vs plaintext (int64)."""
    torch = lab.torch
    bob, alice, james = lab.worker("bob"), lab.worker("alice"), lab.worker("james")
    small = s.mode == "smoke"
    side, numel = (32, 10_000) if small else (256, 1_000_000)
    reps = 3 if small else 7
    out: list[Figure] = []
    a, b = torch.randint(-1000, 1000, (side, side)), torch.randint(-1000, 1000, (side, side))
    u, v = torch.randint(-1000, 1000, (numel,)), torch.randint(-1000, 1000, (numel,))
    c, d = u[:numel // 10].clone(), v[:numel // 10].clone()
    for name, what, plain, shared_op, args in (
        (f"smpc_mm_{side}", f"2-party secure mm {side}x{side} (int64 ring, james deals)", lambda: a.mm(b),
         lambda x, y: x.mm(y), (a, b)),
        (f"smpc_mul_{numel}", f"2-party secure multiply, {numel} elements", lambda: u * v,
         lambda x, y: x * y, (u, v)),
        # Comparisons (issue 16): 8 rounds and ~1 kB per element each, so a tenth of the elements.
        (f"smpc_gt_{numel // 10}", f"2-party secure x > y, {numel // 10} elements", lambda: c > d,
         lambda x, y: x > y, (c, d)),
        (f"smpc_relu_{numel // 10}", f"2-party secure relu, {numel // 10} elements", lambda: c.relu(),
         lambda x, y: x.relu(), (c, d)),
    ):
        floor = time_calls(plain, reps, warmup=1)
        x, y = (t.share(bob, alice, crypto_provider=james) for t in args)
        secure = time_calls(lambda: shared_op(x, y), reps, warmup=1)
        out.append(time_figure(floor, name=f"{name}_plain", group="floor", what=f"the same op in plain torch, "
                               "in this process"))
        out.append(time_figure(secure, name=name, group=G, what=what, compare=[Compare(f"{name}_plain")]))
    return out
