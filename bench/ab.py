"""A/B: the same bench rows on two checkouts, alternating in one run, so drift hits both alike.

    python -m bench.ab --old ../old-checkout --new . --rounds 3 \
        --only small_op,chain,transfer_warm,startup \
        --figures simsyft_small_op,simsyft_chain,simsyft_send_warm_256MB,simsyft_get_computed_256MB,simsyft_start4_launch

Each round runs `python -m bench --quiet --no-plot --only ROWS --json ...` in the old checkout,
then in the new one (each with its own simsyft on PYTHONPATH), and keeps every figure's p50.
The table gives, per figure, the median over rounds on each side and new/old ("better" says
which direction wins). Nothing here asserts a threshold: it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

__all__ = ["main"]


def run_once(checkout: str, only: str, quick: bool) -> dict[str, tuple[float, str]]:
    """{figure name: (p50, better)} of one bench run in `checkout`."""
    with tempfile.TemporaryDirectory(prefix="simsyft-ab-") as tmp:
        out = os.path.join(tmp, "run.json")
        command = [sys.executable, "-m", "bench", "--quiet", "--no-plot", "--only", only, "--json", out]
        if quick:
            command.append("--quick")
        env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
        subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            data = json.load(f)
    return {fig["name"]: (fig["p50"], fig["better"]) for fig in data["figures"] if fig.get("p50") is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="checkout measured first in each round")
    parser.add_argument("--new", required=True, help="checkout measured second in each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", required=True, help="bench rows (python -m bench --only)")
    parser.add_argument("--figures", required=True, help="comma-separated figure names to report")
    parser.add_argument("--quick", action="store_true", help="pass --quick to each run")
    args = parser.parse_args(argv)
    wanted = args.figures.split(",")
    samples: dict[str, dict[str, list[float]]] = {name: {"old": [], "new": []} for name in wanted}
    better: dict[str, str] = {}
    for i in range(args.rounds):
        for side, checkout in (("old", args.old), ("new", args.new)):
            figures = run_once(checkout, args.only, args.quick)
            for name in wanted:
                if name in figures:
                    samples[name][side].append(figures[name][0])
                    better[name] = figures[name][1]
            print(f"round {i + 1}/{args.rounds} {side} done", file=sys.stderr, flush=True)
    print(f"| figure | old (median of {args.rounds}) | new | new/old | better |")
    print("|---|---|---|---|---|")
    for name in wanted:
        old, new = samples[name]["old"], samples[name]["new"]
        if not old or not new:
            print(f"| {name} | - | - | - | - |")
            continue
        a, b = statistics.median(old), statistics.median(new)
        print(f"| {name} | {a:.6g} | {b:.6g} | {b / a:.3f} | {better.get(name, '?')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
