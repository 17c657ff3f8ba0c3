"""The `simsyft` command line (also `python -m simsyft`). Nothing imports this module.

    simsyft demo        run the PySyft Part 1 tutorial on real worker processes
    simsyft sweep       remove leftovers of simulations whose owner process died
    simsyft version     print versions
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

__all__ = ["main"]

_TUTORIAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tutorial_part1.py")


def _demo(args: argparse.Namespace) -> int:
    if not os.path.exists(_TUTORIAL):
        print(f"simsyft demo: {_TUTORIAL} not found; run it from a source checkout (pip install -e .)",
              file=sys.stderr)
        return 2
    runpy.run_path(_TUTORIAL, run_name="__main__")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .simulation import sweep_stale

    removed = sweep_stale()
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} leftover(s) removed")
    return 0


def _version(args: argparse.Namespace) -> int:
    import torch
    import zmq

    from . import __version__

    print(f"simsyft {__version__} (torch {torch.__version__}, pyzmq {zmq.__version__}, python {sys.version.split()[0]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsyft", description="PySyft 0.2's pointer API on real worker processes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="run the Part 1 tutorial on real worker processes").set_defaults(func=_demo)
    sub.add_parser("sweep", help="remove leftovers of simulations whose owner died").set_defaults(func=_sweep)
    sub.add_parser("version", help="print versions").set_defaults(func=_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
