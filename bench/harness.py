"""The measuring machinery: modes, timing, statistics, figures, ratios, output.

Knows nothing about zmq, torch or simsyft; `floors.py`, `peers.py` and
`simsyft_rows.py` produce `Figure`s with it and `cli.py` prints them.

A `Figure` is one measured number (a time with p50/p99, or a rate) plus what
it is compared with: a list of `Compare(floor_name, goal, limit)`. Ratios are
filled in after every row has run (`resolve`), so a row never needs its floor
to have run first, and a missing floor gives "no floor" instead of a crash.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator

MB = 1 << 20


# --------------------------------------------------------------------------- modes

@dataclass(frozen=True)
class Settings:
    """How hard to measure. One instance per mode; rows read what they need."""

    mode: str
    warmup: int              # untimed calls before a latency loop
    reps: int                # timed calls in a latency loop
    pipelined: int           # messages / ops in one pipelined burst
    bursts: int              # pipelined bursts (median rate reported)
    sizes: tuple[int, ...]   # bytes, for memcpy / share / queue / send / get
    big_reps: int            # timed reps per size for the largest sizes
    cold_reps: int           # fresh-process probes per size for cold transfers
    spawn_reps: int          # reps of the "start 4 processes" rows
    scaling: tuple[int, ...] # worker counts for the scaling row
    scaling_s: float         # seconds each scaling point runs
    fedavg: tuple[int, ...]  # worker counts for the FedAvg round
    fedavg_rounds: int

    def reps_for(self, nbytes: int) -> int:
        """Fewer reps for big buffers: 1 MB gets 20x, 64 MB 3x the big-size count."""
        if nbytes <= 4 * MB:
            return self.big_reps * 20
        if nbytes <= 64 * MB:
            return self.big_reps * 3
        return self.big_reps


MODES: dict[str, Settings] = {
    "smoke": Settings(
        mode="smoke", warmup=20, reps=200, pipelined=1000, bursts=2,
        sizes=(1 * MB,), big_reps=2, cold_reps=1, spawn_reps=1,
        scaling=(1, 2), scaling_s=0.3, fedavg=(2,), fedavg_rounds=1,
    ),
    "quick": Settings(
        mode="quick", warmup=200, reps=2000, pipelined=10_000, bursts=3,
        sizes=(1 * MB, 64 * MB, 256 * MB), big_reps=5, cold_reps=1, spawn_reps=1,
        scaling=(1, 2, 4, 8), scaling_s=0.5, fedavg=(2, 4, 8), fedavg_rounds=2,
    ),
    "full": Settings(
        mode="full", warmup=1000, reps=10_000, pipelined=30_000, bursts=5,
        sizes=(1 * MB, 64 * MB, 256 * MB), big_reps=15, cold_reps=3, spawn_reps=5,
        scaling=(1, 2, 4, 8), scaling_s=3.0, fedavg=(2, 4, 8), fedavg_rounds=5,
    ),
}


# --------------------------------------------------------------------------- figures

@dataclass
class Compare:
    """Compare a figure with another one (a floor or a peer) by name.

    `ratio` is this / floor for times and this / floor for rates too; `better`
    on the figure says which direction is good. `goal` and `limit` come from
    DESIGN.md's goals table ("goal" / "never worse than"); None when it sets none.
    """

    floor: str
    goal: float | None = None
    limit: float | None = None
    note: str = ""
    ratio: float | None = None
    verdict: str = ""

    @classmethod
    def absolute(cls, goal: float | None, limit: float | None) -> "Compare":
        """Bounds on the figure's own value (seconds or per second), not on a ratio."""
        return cls(ABSOLUTE, goal, limit)


ABSOLUTE = "(absolute)"


@dataclass
class Figure:
    """One measured number with its statistics and its comparisons."""

    name: str
    group: str                       # "floor", "peer" or "simsyft"
    what: str                        # one line for the table
    kind: str = "time"               # "time" (seconds, lower is better) or "rate" (per second, higher is better)
    unit: str = ""                   # for rates: "ops/s", "msgs/s", "calls/s"
    p50: float | None = None         # seconds for times; per second for rates
    p99: float | None = None         # times only
    n: int = 0                       # samples behind p50
    nbytes: int | None = None        # payload size, for GB/s and the plot
    series: str | None = None        # plot series name (figures of one series differ by nbytes)
    expected: tuple[float, float] | None = None  # DESIGN.md's range for a floor, same units as p50
    compare: list[Compare] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"               # "ok", "skipped: why" or "error: why"

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.p50 is not None

    @property
    def better(self) -> str:
        return "lower" if self.kind == "time" else "higher"

    @property
    def gb_per_s(self) -> float | None:
        if self.kind != "time" or not self.nbytes or not self.p50:
            return None
        return self.nbytes / self.p50 / 1e9

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["better"] = self.better
        if self.kind == "time":
            out["p50_us"] = None if self.p50 is None else self.p50 * 1e6
            out["p99_us"] = None if self.p99 is None else self.p99 * 1e6
            out["gb_per_s"] = self.gb_per_s
        return out


class Skip(Exception):
    """Raised by a row that cannot run here (e.g. one CPU); it becomes "skipped: ..."."""


def failed(name: str, group: str, what: str, exc: BaseException | str, **kw: Any) -> Figure:
    """A figure standing for a row that raised; the run goes on."""
    if isinstance(exc, Skip):
        return skipped(name, group, what, str(exc), **kw)
    if isinstance(exc, BaseException):
        why = f"error: {type(exc).__name__}: {exc}".strip()
        kw.setdefault("extra", {})["traceback"] = "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )[-4000:]
    else:
        why = exc
    return Figure(name=name, group=group, what=what, status=why.splitlines()[0][:300], **kw)


def skipped(name: str, group: str, what: str, why: str, **kw: Any) -> Figure:
    return Figure(name=name, group=group, what=what, status=f"skipped: {why}", **kw)


# --------------------------------------------------------------------------- timing

now = time.perf_counter


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def time_figure(samples: list[float], **kw: Any) -> Figure:
    """A time figure (seconds) from per-call samples."""
    if not samples:
        raise ValueError("no samples")
    return Figure(kind="time", p50=statistics.median(samples), p99=percentile(samples, 99),
                  n=len(samples), **kw)


def rate_figure(rates: list[float], unit: str, **kw: Any) -> Figure:
    """A rate figure from several bursts: the median burst, min and max in `extra`."""
    if not rates:
        raise ValueError("no bursts")
    fig = Figure(kind="rate", unit=unit, p50=statistics.median(rates), n=len(rates), **kw)
    fig.extra.update(rate_min=min(rates), rate_max=max(rates))
    return fig


def time_calls(fn: Callable[[], Any], reps: int, warmup: int = 0,
               setup: Callable[[], Any] | None = None) -> list[float]:
    """Call `fn` reps times after `warmup` untimed calls; seconds per call.

    With `setup`, each call is `fn(setup())` and only `fn` is timed (for a
    fresh input per call, e.g. a cold `share_memory_()`). The garbage
    collector is off while timing so a collection does not land in one sample.
    """
    for _ in range(warmup):
        fn() if setup is None else fn(setup())
    out: list[float] = []
    with no_gc():
        for _ in range(reps):
            arg = None if setup is None else setup()
            t0 = now()
            fn() if setup is None else fn(arg)
            out.append(now() - t0)
    return out


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# --------------------------------------------------------------------------- progress

class Progress:
    """Progress lines on stderr, so stdout stays a clean table."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.t0 = now()

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[bench {now() - self.t0:6.1f}s] {msg}", file=self.stream, flush=True)


# --------------------------------------------------------------------------- ratios

def resolve(figures: list[Figure]) -> None:
    """Fill every Compare's ratio and verdict from the figures it names."""
    by_name = {f.name: f for f in figures}
    seen: set[int] = set()
    for fig in figures:
        for c in fig.compare:
            if id(c) in seen:  # a shared Compare would carry the last figure's ratio for both
                raise ValueError(f"{fig.name}: a Compare object is shared with another figure")
            seen.add(id(c))
            floor = by_name.get(c.floor)
            if not fig.ok:
                c.ratio, c.verdict = None, "no figure"
                continue
            if c.floor == ABSOLUTE:
                c.ratio, c.verdict = None, verdict(fig.p50, c.goal, c.limit, fig.better)
                continue
            if floor is None or not floor.ok or not floor.p50:
                c.ratio, c.verdict = None, f"no floor ({c.floor})"
                continue
            c.ratio = fig.p50 / floor.p50
            c.verdict = verdict(c.ratio, c.goal, c.limit, fig.better)


def verdict(ratio: float, goal: float | None, limit: float | None, better: str) -> str:
    def meets(bound: float) -> bool:
        return ratio <= bound if better == "lower" else ratio >= bound

    if goal is None and limit is None:
        return "info"
    if goal is not None and meets(goal):
        return "goal"
    if limit is not None and meets(limit):
        return "within limit" if goal is not None else "ok"
    if limit is None:
        return "short of goal"
    return "OVER LIMIT"


def in_expected(fig: Figure) -> str:
    """A floor against DESIGN.md's range: 'in range', or 'x1.4 of range'."""
    if not fig.ok or fig.expected is None:
        return ""
    lo, hi = fig.expected
    if lo * 0.7 <= fig.p50 <= hi * 1.3:   # DESIGN: figures drift +-30% run to run
        return "in range" if lo <= fig.p50 <= hi else "within 30%"
    mid = (lo + hi) / 2
    return f"{fig.p50 / mid:.2f}x design"


# --------------------------------------------------------------------------- formatting

def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_value(fig: Figure, which: str = "p50") -> str:
    v = getattr(fig, which)
    if v is None:
        return "-"
    if fig.kind == "time":
        return fmt_time(v)
    if v >= 1000:
        return f"{v / 1000:.1f}k {fig.unit}"
    return f"{v:.1f} {fig.unit}"


def fmt_ratio(c: Compare) -> str:
    return "-" if c.ratio is None else f"{c.ratio:.2f}x"


def fmt_bound(c: Compare, better: str) -> str:
    sign = "<=" if better == "lower" else ">="
    show = (lambda v: fmt_time(v).replace(" ", "")) if c.floor == ABSOLUTE else (lambda v: f"{v:g}x")
    parts = []
    if c.goal is not None:
        parts.append(f"{sign}{show(c.goal)}")
    if c.limit is not None:
        parts.append(f"limit {show(c.limit)}")
    return ", ".join(parts) or "-"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render(figures: list[Figure], markdown: bool = False) -> str:
    """The stdout report: floors and peers, then simsyft rows with ratios."""
    floors = [f for f in figures if f.group in ("floor", "peer")]
    ours = [f for f in figures if f.group == "simsyft"]
    sections = []

    rows = []
    for f in floors:
        exp = ""
        if f.expected:
            lo, hi = f.expected
            if f.kind == "time":
                exp = f"{fmt_time(lo)}-{fmt_time(hi)}"
            else:
                exp = f"{lo / 1000:g}k-{hi / 1000:g}k {f.unit}"
        gbs = f"{f.gb_per_s:.2f}" if f.gb_per_s else ""
        rows.append([f.name, fmt_value(f), fmt_value(f, "p99") if f.kind == "time" else "",
                     gbs, exp, in_expected(f) if f.ok else f.status])
    sections.append(("Floors and peers",
                     ["row", "p50 / rate", "p99", "GB/s", "DESIGN.md", "check"], rows))

    rows = []
    for f in ours:
        comps = f.compare or [None]
        for i, c in enumerate(comps):
            first = i == 0
            gbs = f"{f.gb_per_s:.2f}" if (first and f.gb_per_s) else ""
            if not f.ok:
                rows.append([f.name, f.status if first else "", "", "", c.floor if c else "", "", "", ""])
                continue
            rows.append([
                f.name if first else "",
                fmt_value(f) if first else "",
                (fmt_value(f, "p99") if f.kind == "time" else "") if first else "",
                gbs,
                c.floor if c else "",
                fmt_ratio(c) if c else "",
                fmt_bound(c, f.better) if c else "",
                c.verdict if c else "",
            ])
    sections.append(("simsyft against its floors",
                     ["row", "p50 / rate", "p99", "GB/s", "vs", "ratio", "goal", "verdict"], rows))

    out = []
    for title, headers, rows in sections:
        if not rows:
            continue
        if markdown:
            out.append(f"### {title}\n")
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
            out.append("")
        else:
            out.append(title)
            out.append(table(headers, rows))
            out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- machine, json, plot

def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    with contextlib.suppress(Exception):
        import psutil
        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
        info["physical_cores"] = psutil.cpu_count(logical=False)
    info.update(busyness())
    for mod in ("torch", "zmq", "psutil", "numpy", "ray", "simsyft"):
        with contextlib.suppress(Exception):
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
    with contextlib.suppress(Exception):
        import zmq
        info["libzmq_version"] = zmq.zmq_version()
    return info


def busyness(sample_s: float = 0.0) -> dict[str, Any]:
    """How busy the machine is right now: load average, CPU pressure, and (if
    sample_s) the share of CPU time others used over that many seconds."""
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        out["loadavg_1m"] = float(open("/proc/loadavg").read().split()[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = open("/proc/pressure/cpu").readline().split()
        out["cpu_pressure_avg10"] = float(some[1].split("=")[1])
    if sample_s:
        with contextlib.suppress(Exception):
            import psutil
            out["cpu_busy_percent"] = psutil.cpu_percent(interval=sample_s)
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def read_json(path: str) -> tuple[list[Figure], dict[str, Any]]:
    """Figures and the whole document back from a file `write_json` wrote."""
    with open(path) as f:
        doc = json.load(f)
    names = {f.name for f in fields(Figure)}
    figures = []
    for raw in doc["figures"]:
        kw = {k: v for k, v in raw.items() if k in names}
        kw["compare"] = [Compare(**c) for c in kw.get("compare", [])]
        if kw.get("expected") is not None:
            kw["expected"] = tuple(kw["expected"])
        figures.append(Figure(**kw))
    return figures, doc


def write_json(path: str, figures: list[Figure], meta: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"meta": meta, "machine": machine(), "figures": [f.to_json() for f in figures]}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


def write_plot(path: str, figures: list[Figure]) -> str | None:
    """Latency and bandwidth vs size, if matplotlib is importable; else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    series: dict[str, list[Figure]] = {}
    for f in figures:
        if f.ok and f.series and f.nbytes and f.kind == "time":
            series.setdefault(f.series, []).append(f)
    if not series:
        return None
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    for name, figs in sorted(series.items()):
        figs.sort(key=lambda f: f.nbytes)
        xs = [f.nbytes / MB for f in figs]
        style = "--" if figs[0].group != "simsyft" else "-"
        ax_t.plot(xs, [f.p50 * 1e3 for f in figs], style, marker="o", label=name)
        ax_b.plot(xs, [f.gb_per_s for f in figs], style, marker="o", label=name)
    for ax, ylabel in ((ax_t, "p50 (ms)"), (ax_b, "GB/s (from p50)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (MB)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_yscale("log")
    ax_b.set_yscale("log")
    ax_b.legend(fontsize=7)
    ax_t.set_title("latency vs size (dashed: floors)")
    ax_b.set_title("bandwidth vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


