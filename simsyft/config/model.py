"""The config's types and the rules every part of simsyft shares: workers, data, sizes, names.

Owns the frozen dataclasses a config becomes (`SimulationConfig`, `WorkerConfig`,
`DataItem`), the limits a value must respect, worker-name rules and sizes ("4GiB").
Plain data: a WorkerConfig crosses to a worker process as JSON (worker/spec.py) and
comes back the same type. Imports the standard library and simsyft.errors.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, unknown_worker

__all__ = [
    "ALL_GPUS",
    "GROUP_MAX",
    "MEMORY_LIMIT_MIN",
    "REQUEST_TIMEOUT_S",
    "THREADS_MAX",
    "NETWORK_MODES",
    "DataItem",
    "LinkConfig",
    "NetworkConfig",
    "SimulationConfig",
    "WorkerConfig",
    "check_worker_name",
    "format_size",
    "parse_size",
]

ALL_GPUS = "cuda:*"
"""Device value that turns one worker table into one worker per visible GPU."""

REQUEST_TIMEOUT_S = 300.0
"""Default ``[simulation] request_timeout_s``: how long a call waits for a worker's answer.

Long enough for any single op a simulation plausibly runs on CPU (minutes), for multi-GiB
transfers (seconds) and for a sync point that waits for a long queue of pipelined ops; short
enough that a stopped or hung worker is reported in minutes instead of never. torch.rpc's
default is 60 s; simsyft's calls include the whole op, so it waits longer. 0 waits forever.
"""
_REQUEST_TIMEOUT_MIN_S = 0.1  # a blocked call looks at the clock every 100 ms (connection.py)
_REQUEST_TIMEOUT_MAX_S = 86400.0  # a day: anything longer is "forever", which is 0

MEMORY_LIMIT_MIN = 256 * 2**20
"""The smallest ``memory_limit``: a CPU worker's memory right after start-up is about 225 MiB
(Python 3.11, torch 2.13 CPU, pyzmq: VmRSS 224 MiB, VmData 237 MiB, measured), so a limit
below this leaves it nothing to work with, or stops it before it answers."""
_STARTUP_MEMORY = "about 225 MiB"

THREADS_MAX = 1024
"""The most ``threads`` a worker may have: torch starts that many threads in the worker (each
with its own stack), far beyond any machine's CPUs; more is a typo (8 on a 2-CPU machine is
allowed: oversubscribed, but it works)."""

_TOP_LEVEL_KEYS = ("network", "simulation", "workers")
_SIMULATION_KEYS = ("address", "backend", "name", "request_timeout_s", "seed", "start")
_WORKER_KEYS = ("compute_factor", "count", "cpus", "data", "device", "gpu_memory_fraction", "memory_limit",
                "message_pending_time", "node", "offline", "threads")
_LINK_KEYS = ("bandwidth_mbps", "jitter_ms", "latency_ms")
_NETWORK_KEYS = ("bandwidth_mbps", "jitter_ms", "latency_ms", "links", "mode", "seed")
_STARTS = ("fork", "spawn")  # [simulation] start: how the local backend starts a worker process
_SPREAD = "spread"  # cpus = "spread": one CPU each, round-robin over the available ones
GROUP_MAX = 10_000
"""The most workers one ``count`` may make (a typo guard: each is a process)."""

NETWORK_MODES = ("off", "account", "enforce")
"""``[network] mode``: "off" counts traffic only; "account" keeps a simulated clock without real
delays; "enforce" also makes every delivery really wait until its arrival time (docs/network.md)."""
_DATA_ITEM_KEYS = ("description", "path", "tags")
_RESERVED_NAMES = frozenset({"me"})  # the local client, sy.local_worker

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_NAME_RULE = "use letters, digits, '_' and '-', starting with a letter or '_' (at most 64 characters)"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CUDA = re.compile(r"cuda(?::(0|[1-9][0-9]*))?")
_TAG = re.compile(r"#\S+")
_CPU_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE_RULE = (
    "use a number of bytes or a number with a unit: B, KB, MB, GB, TB (powers of 1000) "
    'or KiB, MiB, GiB, TiB (powers of 1024), e.g. "4GiB"'
)
_SEED_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DataItem:
    """One tensor file loaded into a worker at start; ``path`` is absolute."""

    key: str
    path: str
    tags: tuple[str, ...]
    description: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """One worker process. Plain data, so it can cross to the spawned worker as JSON.

    >>> spec = WorkerConfig("bob", threads=2)
    >>> WorkerConfig.from_dict(spec.to_dict()) == spec
    True
    """

    name: str
    device: str = "cpu"
    cpus: tuple[int, ...] | None = None
    threads: int = 1
    memory_limit: int | None = None
    gpu_memory_fraction: float | None = None
    seed: int | None = None
    data: tuple[DataItem, ...] = ()
    compute_factor: float = 1.0  # its compute counts this many times its CPU time (simulated clock)
    offline: tuple[tuple[float, float], ...] = ()  # simulated [start, end) seconds it refuses calls
    message_pending_time: float = 0.0  # PySyft 0.2's: each message really waits this long first
    group: str | None = None  # the [workers.<group>] table with `count` that made it
    node: str | None = None  # backend "ray": a custom resource or node id that pins the worker to a node

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, str, int, float and None (json.dumps-able)."""
        return {
            "compute_factor": self.compute_factor,
            "offline": [list(window) for window in self.offline],
            "message_pending_time": self.message_pending_time,
            "node": self.node,
            "name": self.name,
            "device": self.device,
            "cpus": None if self.cpus is None else list(self.cpus),
            "threads": self.threads,
            "memory_limit": self.memory_limit,
            "gpu_memory_fraction": self.gpu_memory_fraction,
            "seed": self.seed,
            "data": [
                {"key": d.key, "path": d.path, "tags": list(d.tags), "description": d.description}
                for d in self.data
            ],
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> WorkerConfig:
        """Inverse of to_dict(). The dict is trusted (it came from to_dict()), not re-validated."""
        unknown = set(spec) - {"name", "device", "cpus", "threads", "memory_limit", "gpu_memory_fraction",
                               "seed", "data", "compute_factor", "offline", "message_pending_time",
                               "group", "node"}  # fmt: skip
        if unknown:
            raise ConfigError(f"worker spec: unknown keys {sorted(unknown)}")
        cpus = spec.get("cpus")
        return cls(
            name=spec["name"],
            device=spec.get("device", "cpu"),
            cpus=None if cpus is None else tuple(cpus),
            threads=spec.get("threads", 1),
            memory_limit=spec.get("memory_limit"),
            gpu_memory_fraction=spec.get("gpu_memory_fraction"),
            seed=spec.get("seed"),
            data=tuple(
                DataItem(d["key"], d["path"], tuple(d["tags"]), d.get("description"))
                for d in spec.get("data", ())
            ),
            compute_factor=spec.get("compute_factor", 1.0),
            offline=tuple((float(a), float(b)) for a, b in spec.get("offline", ())),
            message_pending_time=spec.get("message_pending_time", 0.0),
            group=spec.get("group"),
            node=spec.get("node"),
        )


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One directed link's model; None: the ``[network]`` default (bandwidth None: unlimited)."""

    latency_ms: float | None = None
    bandwidth_mbps: float | None = None
    jitter_ms: float | None = None

    def over(self, default: "LinkConfig") -> "LinkConfig":
        """This link's settings, the default's where it sets none."""
        return LinkConfig(*(mine if mine is not None else theirs for mine, theirs in
                            zip((self.latency_ms, self.bandwidth_mbps, self.jitter_ms),
                                (default.latency_ms, default.bandwidth_mbps, default.jitter_ms))))


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """``[network]``: the mode, the default link, the jitter seed, and per-link overrides
    (``links``: ((src, dst, LinkConfig), ...), "me" for the client; "a<->b" is already two)."""

    mode: str = "off"
    default: LinkConfig = LinkConfig(0.0, None, 0.0)
    seed: int = 0
    links: tuple[tuple[str, str, LinkConfig], ...] = ()

    def link(self, src: str, dst: str) -> LinkConfig:
        """The model of link src -> dst."""
        for a, b, config in self.links:
            if a == src and b == dst:
                return config.over(self.default)
        return self.default

    def to_dict(self) -> dict[str, Any]:
        def one(link: LinkConfig) -> list:
            return [link.latency_ms, link.bandwidth_mbps, link.jitter_ms]
        return {"mode": self.mode, "default": one(self.default), "seed": self.seed,
                "links": [[a, b, one(config)] for a, b, config in self.links]}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "NetworkConfig":
        """Inverse of to_dict() (trusted input, as WorkerConfig.from_dict)."""
        return cls(spec["mode"], LinkConfig(*spec["default"]), spec["seed"],
                   tuple((a, b, LinkConfig(*config)) for a, b, config in spec["links"]))


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """A whole simulation: workers in file order (``cuda:*`` tables already expanded)."""

    name: str
    seed: int | None
    workers: tuple[WorkerConfig, ...]
    source: str = "<config>"
    request_timeout_s: float = REQUEST_TIMEOUT_S  # 0: wait forever
    backend: str = "local"  # where the workers run: a name in simsyft.backends.REGISTRY
    network: NetworkConfig = NetworkConfig()
    start: str | None = None  # "fork" or "spawn" (local backend); None: fork where possible
    address: str | None = None  # backend "ray": "auto", "host:port", or None to start a local Ray

    def worker(self, name: str) -> WorkerConfig:
        """The worker called ``name``; KeyError naming the known workers otherwise."""
        for spec in self.workers:
            if spec.name == name:
                return spec
        raise unknown_worker(self.name, name, [w.name for w in self.workers])

    def group(self, name: str) -> tuple[WorkerConfig, ...]:
        """The workers of group ``name`` (``[workers.<name>] count = N``), in index order."""
        return tuple(w for w in self.workers if w.group == name)


# ---------------------------------------------------------------------------
# Public helpers


def check_worker_name(name: str) -> None:
    """Raise ConfigError unless ``name`` can name a worker (also used by sy.VirtualWorker).

    >>> check_worker_name("bob")
    """
    problem = _name_problem(name)
    if problem is not None:
        raise ConfigError(problem)


def parse_size(value: int | str) -> int:
    """Bytes in ``value``: an int of bytes, or a string like "512MB" or "4GiB".

    >>> parse_size("4GiB"), parse_size("1.5 KB"), parse_size(100)
    (4294967296, 1500, 100)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"invalid size: expected an integer or a string, got {_describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"invalid size {value}: must not be negative")
        return value
    match = _SIZE.fullmatch(value)
    unit = None if match is None else _SIZE_UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise ConfigError(f"invalid size {value!r}: {_SIZE_RULE}")
    number = match.group(1)
    # Exact arithmetic for integers so "8TiB" is not rounded through a float.
    return int(number) * unit if number.isdigit() else int(float(number) * unit)


def format_size(size: int) -> str:
    """``size`` bytes the way a config writes them, in the largest binary unit that fits.

    >>> format_size(256 * 2**20), format_size(3 * 2**29), format_size(1000)
    ('256MiB', '1.5GiB', '1000B')
    """
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + unit
    return f"{size}B"


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"invalid worker name {name!r}: expected a string, got {_describe(name)}"
    if not _NAME.fullmatch(name):
        return f"invalid worker name {name!r}: {_NAME_RULE}"
    if name in _RESERVED_NAMES:
        return f"invalid worker name {name!r}: it is reserved for the local client (sy.local_worker)"
    return None


def _describe(value: Any) -> str:
    """TOML's name for the type of ``value``, for 'expected X, got Y' messages."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__
