"""The `simsyft` command line (also `python -m simsyft`). Nothing imports this module.

    simsyft up CONFIG [--detach] [--verbose]   start a simulation, show live status; Ctrl-C stops it
    simsyft run CONFIG [--verbose] -- CMD...   start, run CMD attached to it, print its traffic (and
                                               simulated time), stop; exit with CMD's code
    simsyft status [NAME] [--all]              status of running simulations and their links' traffic
                                               (--all: every group member)
    simsyft down [NAME]                        stop running simulations and remove leftovers
    simsyft check CONFIG                       validate a config file only
    simsyft demo                               the Part 1 tutorial on configs/default.toml
    simsyft bench [ARGS...]                    the benchmark suite (python -m bench)
    simsyft sweep                              remove leftovers of simulations whose owner died
    simsyft version                            print versions
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["main"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TUTORIAL = os.path.join(_ROOT, "examples", "tutorial_part1.py")
_DEFAULT_CONFIG = os.path.join(_ROOT, "configs", "default.toml")


def _fail(message: str, code: int = 2) -> int:
    print(f"simsyft: error: {message}", file=sys.stderr)
    return code


def _terminate_as_interrupt() -> None:
    # `simsyft down` sends SIGTERM: stop as cleanly as on Ctrl-C.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# -- status table ------------------------------------------------------------------

def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _cpus(cpus: Any) -> str:
    if not cpus:
        return "-"
    cpus = sorted(cpus)
    ranges, start = [], cpus[0]
    for prev, cur in zip(cpus, cpus[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(ranges)


def _fold(group: str, members: list[dict[str, Any]]) -> tuple[str, ...]:
    """One line for a group: counts by state, memory and traffic summed."""
    states: dict[str, int] = {}
    for row in members:
        states[row["state"]] = states.get(row["state"], 0) + 1

    def total(key: str) -> Any:
        values = [row[key] for row in members if isinstance(row.get(key), (int, float))]
        return sum(values) if values else None

    devices = sorted({str(row.get("device", "-")) for row in members})
    cpus = sorted({cpu for row in members for cpu in row.get("cpus") or ()})
    uptimes = [row["uptime"] for row in members if "uptime" in row]
    return (
        f"{group} [{len(members)}]", ", ".join(f"{state} {n}" for state, n in states.items()), "-",
        ",".join(devices), _cpus(cpus), _fmt_bytes(total("rss")), _fmt_bytes(total("uss")),
        str(total("objects") if total("objects") is not None else "-"), _fmt_bytes(total("bytes")),
        f"{total('messages_in') if total('messages_in') is not None else '-'}/"
        f"{total('messages_out') if total('messages_out') is not None else '-'}",
        f"{max(uptimes):.0f}s" if uptimes else "-",
    )


def format_status(name: str, status: dict[str, dict[str, Any]], fold: bool = True) -> str:
    """The status table; with `fold`, a group's workers share one line (memory summed)."""
    headers = ("worker", "state", "pid", "device", "cpus", "rss", "uss", "objects", "held", "msgs in/out",
               "uptime")
    rows = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in status.values():
        if fold and row.get("group"):
            if row["group"] not in groups:
                rows.append(row["group"])  # its place: where its first member is
            groups.setdefault(row["group"], []).append(row)
            continue
        rows.append((
            row["name"], row["state"], str(row["pid"]), str(row.get("device", "-")), _cpus(row.get("cpus")),
            _fmt_bytes(row.get("rss")), _fmt_bytes(row.get("uss")), str(row.get("objects", "-")),
            _fmt_bytes(row.get("bytes")), f"{row.get('messages_in', '-')}/{row.get('messages_out', '-')}",
            f"{row['uptime']:.0f}s" if "uptime" in row else "-",
        ))
    rows = [_fold(r, groups[r]) if isinstance(r, str) else r for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [f"simulation {name!r}", "  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_traffic(sim: Any, indent: str = "") -> str:
    """The traffic table of a simulation: this process's links, the workers' own, and the client
    links of processes that attached and have left (a script under `simsyft run`)."""
    from .errors import SimsyftError

    try:
        ledger = sim.traffic(clients=True, timeout_s=2.0)  # as the status table: a stopped worker must not hold it
    except SimsyftError as exc:
        return f"{indent}traffic: not available ({type(exc).__name__}: {exc})"
    if not ledger.links:
        return f"{indent}traffic: none yet"
    return "\n".join([f"{indent}traffic:"] + [indent + "  " + line for line in str(ledger).splitlines()])


def format_clock(sim: Any) -> str | None:
    """The simulated time the clients that left took (mode account or enforce), else None."""
    if sim.network_mode == "off":
        return None
    clocks = [c["clock_s"] for c in sim.detached_clients() if isinstance(c.get("clock_s"), (int, float))]
    if not clocks:
        return f"simulated time ({sim.network_mode}): no client has finished"
    return f"simulated time ({sim.network_mode}): {max(clocks):.3f} s (the command's clock when it ended)"


# -- log streaming -------------------------------------------------------------------

class _LogStreamer(threading.Thread):
    """Follows <run_dir>/*.log and prints each new line tagged with its worker's name."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.offsets: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.poll()

    def poll(self) -> None:
        for path in sorted(glob.glob(os.path.join(self.run_dir, "*.log"))):
            name = os.path.basename(path)[:-4]
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
                    self.offsets[path] = f.tell()
            except OSError:
                continue
            for line in data.decode("utf-8", "replace").splitlines():
                print(f"[{name}] {line}", file=sys.stderr, flush=True)


# -- commands ------------------------------------------------------------------------

def _launch(config: str):
    from .errors import ConfigError
    from .simulation import launch

    try:
        return launch(config)
    except ConfigError as exc:
        raise SystemExit(_fail(str(exc)))


def _up(args: argparse.Namespace) -> int:
    if args.detach:
        return _up_detached(args)
    _terminate_as_interrupt()
    sim = _launch(args.config)
    streamer = _LogStreamer(sim.run_dir) if args.verbose else None
    if streamer:
        streamer.start()
    live = sys.stdout.isatty() and not args.once
    try:
        print(f"simulation {sim.name!r} is up (run dir {sim.run_dir}); Ctrl-C or `simsyft down {sim.name}` stops it",
              flush=True)
        print(format_status(sim.name, sim.status()), flush=True)
        while not args.once:
            time.sleep(args.interval)
            if live:
                print("\033[H\033[J" + format_status(sim.name, sim.status()), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if streamer:
            streamer.stop.set()
            streamer.poll()
        sim.shutdown()
        print(f"simulation {sim.name!r} stopped", flush=True)
        if args.log:  # a detached daemon's log is only worth keeping if it failed
            try:
                os.unlink(args.log)
            except OSError:
                pass
    return 0


def _up_detached(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import ConfigError
    from .rundir import read_meta, running_simulations

    try:
        name = load_config(args.config).name
    except ConfigError as exc:
        return _fail(str(exc))
    import tempfile

    from .rundir import run_root

    # In the private run root: a log in the shared temp dir could be read or pre-created by others.
    log = tempfile.NamedTemporaryFile(dir=run_root(), prefix=f"up-{name}-", suffix=".log", delete=False)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "simsyft", "up", args.config, "--interval", "3600", "--log", log.name],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            log.close()
            with open(log.name) as f:
                return _fail(f"simulation {name!r} did not start:\n{f.read().strip()}")
        for run_dir, meta in running_simulations():
            if meta.get("owner_pid") == daemon.pid and read_meta(run_dir).get("ready"):
                print(f"simulation {name!r} running in the background (owner pid {daemon.pid}, "
                      f"run dir {run_dir}, log {log.name}); stop it with `simsyft down {name}`")
                return 0
        time.sleep(0.1)
    daemon.terminate()
    return _fail(f"simulation {name!r} did not become ready within 120 s (log {log.name})")


def _run(args: argparse.Namespace) -> int:
    from .rundir import RUN_DIR_ENV

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return _fail("simsyft run CONFIG -- COMMAND...: no command given")
    _terminate_as_interrupt()
    sim = _launch(args.config)
    streamer = _LogStreamer(sim.run_dir) if args.verbose else None
    if streamer:
        streamer.start()
    env = {**os.environ, RUN_DIR_ENV: sim.run_dir}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    try:
        code = subprocess.call(command, env=env)
        _print_run_summary(sim)
    except FileNotFoundError:
        code = _fail(f"command not found: {command[0]}", 127)
    except KeyboardInterrupt:
        code = 130
    finally:
        if streamer:
            streamer.stop.set()
            streamer.poll()
        sim.shutdown()
    return code


def _print_run_summary(sim: Any) -> None:
    """On stderr, so the command's own output stays the last thing on stdout."""
    from .errors import SimsyftError

    try:
        lines = [format_traffic(sim), format_clock(sim)]
    except SimsyftError as exc:  # say so, and still stop the workers
        lines = [f"traffic: not available ({exc})"]
    print("\n".join(line for line in lines if line), file=sys.stderr, flush=True)


def _status(args: argparse.Namespace) -> int:
    from .errors import SimsyftError
    from .rundir import running_simulations
    from .simulation import attach

    running = [(d, m) for d, m in running_simulations() if args.name is None or m.get("name") == args.name]
    if not running:
        print(f"no running simulation{' called ' + repr(args.name) if args.name else ''}")
        return 1 if args.name else 0
    for run_dir, meta in running:
        try:
            sim = attach(run_dir)
        except SimsyftError as exc:
            print(f"{run_dir}: {exc}")
            continue
        try:
            print(format_status(sim.name, sim.status(), fold=not args.all))
            print(f"  owner pid {meta.get('owner_pid')}, run dir {run_dir}")
            print(format_traffic(sim, "  "))
        finally:
            sim.backend.shutdown()  # attached: closes our sockets only
    return 0


def _down(args: argparse.Namespace) -> int:
    from .rundir import owner_alive
    from .rundir import owned_by_cli, running_simulations, sweep_stale

    targets = [(d, m) for d, m in running_simulations() if args.name is None or m.get("name") == args.name]
    if args.name and not targets:
        print(f"no running simulation called {args.name!r}")
    if not args.force:
        # A simulation owned by a user's script (sy.launch, the implicit one) is that script's to stop.
        for run_dir, meta in [t for t in targets if not owned_by_cli(t[1])]:
            print(f"left running: simulation {meta.get('name')!r} belongs to pid {meta.get('owner_pid')}, "
                  "not to `simsyft up` (use --force to stop it anyway)")
        targets = [t for t in targets if owned_by_cli(t[1])]
    for run_dir, meta in targets:
        owner = int(meta["owner_pid"])
        # Only the very process that started the simulation (same start time, so not a reused
        # pid), and only while it is alive, is signalled.
        if _signal_owner(meta, signal.SIGTERM):
            deadline = time.monotonic() + 15
            while owner_alive(meta) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _signal_owner(meta, signal.SIGKILL):
                time.sleep(0.1)
        print(f"stopped simulation {meta.get('name')!r} (owner pid {owner})")
    # Workers exit on their own once their owner is gone; anything left is swept.
    deadline = time.monotonic() + 5
    removed = sweep_stale()
    while any(os.path.exists(d) for d, _ in targets) and time.monotonic() < deadline:
        time.sleep(0.1)
        removed += sweep_stale()
    for path in removed:
        print(f"removed leftover {path}")
    return 0


def _signal_owner(meta: dict, signum: int) -> bool:
    """Signal a simulation's owner if it is still the process that started it; whether it was."""
    from .rundir import owner_alive

    if not owner_alive(meta):
        return False
    try:
        os.kill(int(meta["owner_pid"]), signum)
    except ProcessLookupError:
        return False
    return True


def _check(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    described: list[str] = []
    for w in cfg.workers:
        if w.group is None:
            described.append(f"{w.name} ({w.device}{', cpus ' + _cpus(w.cpus) if w.cpus else ''})")
        elif w.name == f"{w.group}_0":  # a group is one entry: its first and last member
            members = cfg.group(w.group)
            described.append(f"{w.name}..{members[-1].name} ({len(members)} workers, {w.device})")
    workers = ", ".join(described)
    print(f"{args.config}: OK: simulation {cfg.name!r}, {len(cfg.workers)} worker(s): {workers}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    for path in (_TUTORIAL, _DEFAULT_CONFIG):
        if not os.path.exists(path):
            return _fail(f"{path} not found; run the demo from a source checkout (pip install -e .)")
    return _run(argparse.Namespace(config=_DEFAULT_CONFIG, command=[sys.executable, _TUTORIAL], verbose=args.verbose))


def _bench(args: argparse.Namespace) -> int:
    if not os.path.isdir(os.path.join(_ROOT, "bench")):
        return _fail("bench/ not found; run benchmarks from a source checkout")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.call([sys.executable, "-m", "bench", *args.args], cwd=_ROOT, env=env)


def _sweep(args: argparse.Namespace) -> int:
    from .rundir import sweep_stale

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
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start a simulation from a config file and show its status")
    up.add_argument("config")
    up.add_argument("--detach", action="store_true", help="leave it running in the background")
    up.add_argument("--verbose", "-v", action="store_true", help="stream worker logs, tagged with names")
    up.add_argument("--interval", type=float, default=1.0, help="seconds between status refreshes")
    up.add_argument("--once", action="store_true", help="print the status once, then stop the simulation")
    up.add_argument("--log", help=argparse.SUPPRESS)  # set by --detach for its background process
    up.set_defaults(func=_up)

    run = sub.add_parser("run", help="start a simulation, run a command attached to it, stop it")
    run.add_argument("config")
    run.add_argument("--verbose", "-v", action="store_true", help="stream worker logs, tagged with names")
    run.add_argument("command", nargs="*", help="-- COMMAND [ARGS...] (everything after -- is the command)")
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="status of running simulations")
    status.add_argument("name", nargs="?")
    status.add_argument("--all", action="store_true", help="one line per worker (groups are folded otherwise)")
    status.set_defaults(func=_status)

    down = sub.add_parser("down", help="stop running simulations (all, or NAME) and remove leftovers")
    down.add_argument("name", nargs="?")
    down.add_argument("--force", action="store_true", help="also stop simulations owned by other programs")
    down.set_defaults(func=_down)

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(func=_check)

    demo = sub.add_parser("demo", help="the Part 1 tutorial on configs/default.toml")
    demo.add_argument("--verbose", "-v", action="store_true")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="the benchmark suite (python -m bench); options pass through",
                           add_help=False)
    bench.set_defaults(func=_bench, args=[])

    sub.add_parser("sweep", help="remove leftovers of simulations whose owner died").set_defaults(func=_sweep)
    sub.add_parser("version", help="print versions").set_defaults(func=_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to python -m bench
        return _bench(argparse.Namespace(args=argv[1:]))
    command: list[str] | None = None
    if argv[:1] == ["run"] and "--" in argv:  # simsyft run [OPTIONS] CONFIG [OPTIONS] -- COMMAND...
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.command = command
    return args.func(args)
