"""The cost of each secure operation, read from the traffic ledger (docs/smpc.md's table).

For 2 and 3 parties and a crypto provider, each worker its own process, it runs each op once
on tensors of ELEMENTS elements inside `sy.measure()` and prints, per op: the client's
messages, and the bytes per element that crossed party to party, provider to parties, and to
the client. `--wan` runs the same under a [network] profile (50 ms, 100 Mbit/s between every
two parties, a simulated clock) and adds the simulated time: "what would this cost over a WAN?".
Needs the traffic ledger (`sy.measure`, issue 13).

    python examples/smpc_costs.py [--wan]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import simsyft as sy

ELEMENTS = 1024
SIDE = 32  # mm: (32 x 32) @ (32 x 32), 1024 elements per matrix

WAN = """[simulation]
name = "smpc_costs_wan"

[network]
mode = "account"
latency_ms = 50
bandwidth_mbps = 100
seed = 0
"""


def ops(x, y, a, b):
    """name -> thunk; x, y: shared vectors, a, b: shared matrices (fixed precision where FP)."""
    return {
        "x + y": lambda: x + y,
        "x * 3 (public)": lambda: x * 3,
        "x * y": lambda: x * y,
        "a.mm(b)": lambda: a.mm(b),
        "x.sum()": lambda: x.sum(),
        "x / 7 (public int)": lambda: x / 7,
        "x > y": lambda: x > y,
        "x == y": lambda: x == y,
        "x.relu()": lambda: x.relu(),
        "a.max(dim=1)": lambda: a.max(dim=1),
        "x.get()": lambda: x.copy().get(),
    }


def measure(parties, james, clock: bool) -> list[tuple]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, thunk in ops(*(t.share(*parties, crypto_provider=james) for t in (
            torch.randint(-1000, 1000, (ELEMENTS,), generator=gen), torch.randint(-1000, 1000, (ELEMENTS,), generator=gen),
            torch.randint(-1000, 1000, (SIDE, SIDE), generator=gen),
            torch.randint(-1000, 1000, (SIDE, SIDE), generator=gen)))).items():
        warm = thunk()  # once first: links between workers are made on first use (kept: no frees below)
        with sy.measure() as m:
            result = thunk()
        del warm, result
        names = {p.id for p in parties}
        party = provider = client = from_client = 0
        client_msgs = 0
        for (src, dst), t in m.traffic.links.items():
            if src in names and dst in names:
                party += t.bytes
            elif src == james.id and dst in names:
                provider += t.bytes
            elif dst == "me":
                client += t.bytes
            if src == "me":
                client_msgs += t.messages
                from_client += t.bytes
        rows.append((name, len(parties), client_msgs, from_client / ELEMENTS, party / ELEMENTS, provider / ELEMENTS, client / ELEMENTS,
                     m.simulated_s if clock else None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wan", action="store_true", help="run under a [network] profile and report simulated time")
    args = ap.parse_args()
    if not hasattr(sy, "measure"):
        raise SystemExit("this needs the traffic ledger (sy.measure, issue 13)")
    hook = sy.TorchHook(torch)
    with tempfile.TemporaryDirectory() as d:
        sim = None
        if args.wan:
            path = os.path.join(d, "wan.toml")
            with open(path, "w") as f:
                f.write(WAN + "".join(f"\n[workers.{n}]\nthreads = 1\n" for n in ("p0", "p1", "p2", "james")))
            sim = sy.launch(path)
        workers = [sy.VirtualWorker(hook, id=n) for n in ("p0", "p1", "p2")]
        james = sy.VirtualWorker(hook, id="james")
        rows = measure(workers[:2], james, args.wan) + measure(workers, james, args.wan)
        print("| op | parties | client messages | client->parties B/elem | party<->party B/elem | "
              "provider->parties B/elem | to client B/elem |" + (" simulated s |" if args.wan else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if args.wan else ""))
        for name, n, msgs, sent, party, provider, client, sim_s in rows:
            print(f"| `{name}` | {n} | {msgs} | {sent:.2f} | {party:.1f} | {provider:.1f} | {client:.2f} |"
                  + (f" {sim_s:.3f} |" if args.wan else ""))
        if sim is not None:
            sim.shutdown()
    sy.shutdown()


if __name__ == "__main__":
    main()
