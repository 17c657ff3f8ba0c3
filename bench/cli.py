"""`python -m bench`: run the rows, print the table, write JSON (and a PNG if matplotlib is there).

    python -m bench                 # full, < 15 min on 2 cores
    python -m bench --quick         # < 2 min
    python -m bench --smoke         # seconds; what CI and tests/unit/test_bench.py run
    python -m bench --only small_op,chain   # rows whose name contains a word, plus the floors they need
    python -m bench --list          # the rows and what they measure

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable

from . import floors, peers, simsyft_rows
from . import smpc_rows
from .harness import (MODES, Figure, Progress, busyness, failed, now, read_json, render, resolve,
                      write_json, write_plot)

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


@dataclass(frozen=True)
class Row:
    """One registry entry: a function producing figures, and the rows it compares with."""

    name: str
    group: str                        # "floor", "peer", "simsyft"
    func: Callable
    doc: str
    needs: tuple[str, ...] = field(default=())


def _row(name: str, group: str, func: Callable, needs: tuple[str, ...] = ()) -> Row:
    doc = (func.__doc__ or "").strip().splitlines()[0]
    return Row(name, group, func, doc, needs)


ROWS: list[Row] = [
    _row("zmq_reqrep", "floor", floors.floor_zmq_reqrep),
    _row("unix_pingpong", "floor", floors.floor_unix_pingpong),
    _row("zmq_pipelined", "floor", floors.floor_zmq_pipelined),
    _row("tensor_pickle", "floor", floors.floor_tensor_pickle),
    _row("memcpy", "floor", floors.floor_memcpy),
    _row("share_memory", "floor", floors.floor_share_memory),
    _row("mp_queue", "floor", floors.floor_mp_queue),
    _row("import_torch_x4", "floor", floors.floor_import_torch),
    _row("torch_rpc", "peer", peers.peer_torch_rpc),
    _row("ray", "peer", peers.peer_ray),
    _row("small_op", "simsyft", simsyft_rows.row_small_op, ("zmq_reqrep", "torch_rpc", "ray")),
    _row("traffic_cost", "simsyft", simsyft_rows.row_traffic_cost),
    _row("send_get_small", "simsyft", simsyft_rows.row_send_get_small, ("zmq_reqrep",)),
    _row("encode_decode", "simsyft", simsyft_rows.row_encode_decode, ("tensor_pickle",)),
    _row("chain", "simsyft", simsyft_rows.row_chain, ("zmq_pipelined", "torch_rpc", "ray")),
    _row("transfer_warm", "simsyft", simsyft_rows.row_transfer_warm, ("memcpy",)),
    _row("transfer_cold", "simsyft", simsyft_rows.row_transfer_cold, ("memcpy", "share_memory", "mp_queue")),
    _row("scaling", "simsyft", simsyft_rows.row_scaling),
    _row("fedavg", "simsyft", simsyft_rows.row_fedavg),
    _row("startup", "simsyft", simsyft_rows.row_startup, ("import_torch_x4",)),
    _row("smpc", "simsyft", smpc_rows.row_smpc),
]


def select(only: str | None, skip: str | None = None) -> list[Row]:
    """Rows whose name contains one of the comma-separated words, plus what they compare with;
    then minus the rows named exactly in `skip`."""
    skipped = {w.strip() for w in (skip or "").split(",") if w.strip()}
    unknown = skipped - {r.name for r in ROWS}
    if unknown:
        raise SystemExit(f"--skip: no row named {', '.join(sorted(unknown))}")
    if not only:
        return [r for r in ROWS if r.name not in skipped]
    words = [w.strip() for w in only.split(",") if w.strip()]
    chosen = {r.name for r in ROWS if any(w in r.name for w in words)}
    if not chosen:
        raise SystemExit(f"--only {only!r} matches no row; rows: {', '.join(r.name for r in ROWS)}")
    for r in ROWS:
        if r.name in chosen:
            chosen.update(r.needs)
    return [r for r in ROWS if r.name in chosen and r.name not in skipped]


def run(rows: list[Row], mode: str, progress: Progress,
        checkpoint: Callable[[list[Figure]], None] | None = None) -> list[Figure]:
    """Run rows in order; any exception becomes an error figure for that row.

    `checkpoint(figures)` is called after each row, so a run that is killed
    still leaves what it measured.
    """
    settings = MODES[mode]
    figures: list[Figure] = []
    lab = None
    lab_error: Exception | None = None
    try:
        for row in rows:
            progress.say(f"{row.group:7} {row.name} ...")
            t0 = now()
            try:
                if row.group == "simsyft":
                    if lab is None and lab_error is None:
                        try:
                            lab = simsyft_rows.Lab()
                        except Exception as exc:  # simsyft missing or broken: every row says so
                            lab_error = exc
                    if lab_error is not None:
                        raise lab_error
                    got = row.func(settings, lab)
                else:
                    got = row.func(settings)
            except Exception as exc:  # one broken row must not lose the others
                got = [failed(f"{row.group}_{row.name}" if row.group == "simsyft" else row.name,
                              row.group, row.doc, exc)]
            figures += got
            bad = [f"{f.name}: {f.status}" for f in got if f.status != "ok"]
            progress.say(f"{row.group:7} {row.name} done in {now() - t0:.1f}s"
                         + (f" ({'; '.join(bad)})" if bad else ""))
            if checkpoint is not None:
                checkpoint(figures)
    finally:
        if lab is not None:
            try:
                lab.close()
            except Exception as exc:  # report; the figures are still worth printing
                progress.say(f"simsyft shutdown failed: {type(exc).__name__}: {exc}")
    resolve(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds: tiny sizes, few reps (CI)")
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="under 2 minutes on 2 cores")
    ap.add_argument("--json", default=DEFAULT_JSON, metavar="PATH",
                    help="where to write every figure and the machine description (default %(default)s)")
    ap.add_argument("--plot", default=None, metavar="PATH",
                    help="PNG of latency/bandwidth vs size (default: next to --json; needs matplotlib)")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    ap.add_argument("--only", metavar="ROWS", help="comma-separated words; rows whose name contains one")
    ap.add_argument("--skip", metavar="ROWS", help="comma-separated exact row names to leave out")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    ap.add_argument("--render", metavar="JSON", help="print the tables of an earlier run's JSON; measure nothing")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    mode_name = args.mode or "full"

    if args.list:
        for r in ROWS:
            needs = f"  (compares with {', '.join(r.needs)})" if r.needs else ""
            print(f"{r.group:8} {r.name:16} {r.doc}{needs}")
        return 0

    if args.render:
        figures, doc = read_json(args.render)
        m, meta = doc["machine"], doc["meta"]
        print(f"{meta.get('command')} on {m.get('date')}: {m.get('cpu_model')}, {m.get('logical_cpus')} CPUs, "
              f"{m.get('memory_gb')} GB, Python {m.get('python')}, torch {m.get('torch_version')}, "
              f"pyzmq {m.get('zmq_version')} (libzmq {m.get('libzmq_version')}); {meta.get('elapsed_s')} s; "
              f"CPU busy before start {meta.get('busy_before', {}).get('cpu_busy_percent')} %\n")
        print(render(figures, markdown=args.markdown))
        return 0

    rows = select(args.only, args.skip)
    progress = Progress(quiet=args.quiet)
    progress.say(f"mode {mode_name}: {len(rows)} rows")
    before = busyness(0.5)
    if before.get("cpu_busy_percent", 0) > 25:
        progress.say(f"warning: the machine is busy before we start ({before}); "
                     "figures will be noisy, ratios less so (most floors are paired)")
    t0 = now()
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {"mode": mode_name, "command": command.strip(), "rows": [r.name for r in rows],
            "busy_before": before}

    def checkpoint(figs: list[Figure]) -> None:
        resolve(figs)
        write_json(args.json, figs, {**meta, "partial": True, "elapsed_s": round(now() - t0, 1)})

    figures = run(rows, mode_name, progress, checkpoint)
    elapsed = now() - t0
    meta.update(elapsed_s=round(elapsed, 1), busy_after=busyness(), partial=False)
    write_json(args.json, figures, meta)
    plot = None
    if not args.no_plot:
        plot = write_plot(args.plot or os.path.splitext(args.json)[0] + ".png", figures)
    print(render(figures, markdown=args.markdown))
    errors = [f for f in figures if f.status.startswith("error")]
    print(f"{len(figures)} figures, {len(errors)} errors, {elapsed:.0f}s, mode {mode_name}; "
          f"JSON {args.json}" + (f"; plot {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
