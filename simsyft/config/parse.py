"""Simulation configs: TOML file -> the frozen dataclasses of config/model.py, every check here.

Owns the config format (documented in docs/config.md) and the ``device = "cuda:*"``
expansion. Starts nothing: it only reads the file, looks at this process's CPU affinity
(psutil) and, when some worker names a CUDA device, counts devices with torch (imported
lazily, so a CPU-only config never pays for importing torch here). Imports the standard
library, psutil, config/model.py, simsyft.errors and the names in simsyft.backends' registry.

Every error is a ConfigError whose text is ``<source>: <where>: <reason>``::

    configs/hospitals.toml: [workers.bob] cpus: CPU 17 not available (have 0-1)
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import psutil

from ..errors import ConfigError
from .model import (_BARE_KEY, _CPU_RANGE, _CUDA, _DATA_ITEM_KEYS, _LINK_KEYS, _NAME, _NAME_RULE, _NETWORK_KEYS,
                    _REQUEST_TIMEOUT_MAX_S, _REQUEST_TIMEOUT_MIN_S, _SEED_MAX, _SIMULATION_KEYS, _SPREAD, _STARTS,
                    _STARTUP_MEMORY, _TAG, _TOP_LEVEL_KEYS, _WORKER_KEYS, ALL_GPUS, GROUP_MAX, MEMORY_LIMIT_MIN,
                    NETWORK_MODES, REQUEST_TIMEOUT_S, THREADS_MAX, DataItem, LinkConfig, NetworkConfig,
                    SimulationConfig, WorkerConfig, _describe, _name_problem, format_size, parse_size)

__all__ = ["load_config", "parse_config"]


def load_config(path: str | os.PathLike[str]) -> SimulationConfig:
    """Read and validate a TOML config; relative data paths are taken from its directory.

    >>> sim = load_config("configs/default.toml")
    >>> [w.name for w in sim.workers]
    ['bob', 'alice']
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: byte {exc.start}: not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {_toml_error(exc)}") from None
    return parse_config(data, source, Path(os.path.abspath(path)).parent)


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> SimulationConfig:
    """Validate an already-parsed config; relative data paths resolve against ``base_dir``
    (default: the current directory).

    >>> parse_config({"simulation": {"name": "s"}, "workers": {"bob": {}}}).workers[0].device
    'cpu'
    """
    return _Parser(source, Path.cwd() if base_dir is None else Path(base_dir)).parse(data)


# ---------------------------------------------------------------------------
# Parsing


class _Parser:
    """One pass over one config; holds what every check needs to name its place."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self._cuda_count: int | None = None
        self._available_cpus: list[int] | None = None
        self._spread = 0  # workers given a CPU by cpus = "spread" so far

    def fail(self, where: str, reason: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {where}: {reason}")

    def parse(self, data: Mapping[str, Any]) -> SimulationConfig:
        if not isinstance(data, Mapping):
            self.fail("top level", f"expected a table, got {_describe(data)}")
        for key, value in data.items():
            if key not in _TOP_LEVEL_KEYS:
                kind = "table" if isinstance(value, Mapping) else "key"
                where = f"[{_key(key)}]" if kind == "table" else _key(key)
                self.fail(where, f"unknown {kind} (expected one of: {', '.join(_TOP_LEVEL_KEYS)})")
        name, seed, timeout, backend, start = self._simulation(data.get("simulation"))
        workers = self._workers(data.get("workers"))
        if seed is not None:
            if seed + len(workers) - 1 > _SEED_MAX:
                self.fail("[simulation] seed", f"must be at most {_SEED_MAX - len(workers) + 1} "
                          f"(worker i gets seed + i, and there are {len(workers)} workers)")  # fmt: skip
            workers = [_replace_seed(w, seed + i) for i, w in enumerate(workers)]
        self._check_gpu_fractions(workers)
        network = self._network(data.get("network", {}), [w.name for w in workers], backend)
        self._check_network_use(workers, network)
        address = self._ray_keys(data["simulation"], workers, backend)
        return SimulationConfig(name, seed, tuple(workers), self.source, timeout, backend, network, start, address)

    def _ray_keys(self, table: Mapping[str, Any], workers: list[WorkerConfig], backend: str) -> str | None:
        """`[simulation] address` and the workers' `node`: where a Ray backend's workers run."""
        address = None if "address" not in table else self._str("[simulation] address", table["address"])
        if backend != "ray":
            if address is not None:
                self.fail("[simulation] address", f'only backend = "ray" connects to a cluster (backend is {backend!r})')
            for worker in workers:
                if worker.node is not None:
                    self.fail(f"[workers.{_key(worker.name)}] node", 'places a worker on a Ray node: it needs '
                              f'backend = "ray" (backend is {backend!r})')
        elif address is not None and address != "auto" and not re.fullmatch(r"(ray://)?[^\s:]+:[0-9]{1,5}", address):
            self.fail("[simulation] address", f'expected "auto" or "host:port", got {address!r}')
        return address

    # -- [simulation] --------------------------------------------------------

    def _simulation(self, table: Any) -> tuple[str, int | None, float, str, str | None]:
        if table is None:
            self.fail("[simulation]", 'missing (every config needs [simulation] with name = "...")')
        if not isinstance(table, Mapping):
            self.fail("simulation", f"expected a table [simulation], got {_describe(table)}")
        self._check_keys("[simulation]", table, _SIMULATION_KEYS)
        if "name" not in table:
            self.fail("[simulation] name", 'missing (e.g. name = "hospitals")')
        name = self._str("[simulation] name", table["name"])
        if not _NAME.fullmatch(name):
            self.fail("[simulation] name", f"invalid simulation name {name!r}: {_NAME_RULE}")
        seed = table.get("seed")
        if seed is not None:
            seed = self._int("[simulation] seed", seed)
            if seed < 0:
                self.fail("[simulation] seed", f"must be 0 or more, got {seed}")
        timeout = REQUEST_TIMEOUT_S
        if "request_timeout_s" in table:
            timeout = self._timeout("[simulation] request_timeout_s", table["request_timeout_s"])
        backend = self._str("[simulation] backend", table.get("backend", "local"))
        from ..backends import REGISTRY  # the names only: no backend is imported

        if backend not in REGISTRY:
            self.fail("[simulation] backend", f"unknown backend {backend!r} (known: {', '.join(sorted(REGISTRY))})")
        start = None
        if "start" in table:
            start = self._str("[simulation] start", table["start"])
            if start not in _STARTS:
                self.fail("[simulation] start", f'{start!r} is not a way to start workers: use "fork" (from a warm '
                          'template, the default on Linux) or "spawn" (a fresh interpreter each)')  # fmt: skip
            if backend != "local":
                self.fail("[simulation] start", f"only the local backend starts worker processes "
                          f"(backend is {backend!r})")  # fmt: skip
        return name, seed, timeout, backend, start

    # -- [workers.<name>] ------------------------------------------------------

    def _workers(self, table: Any) -> list[WorkerConfig]:
        if table is not None and not isinstance(table, Mapping):
            self.fail("workers", f"expected tables [workers.<name>], got {_describe(table)}")
        if not table:
            self.fail("[workers]", "no workers (add a table such as [workers.bob])")
        workers: list[WorkerConfig] = []
        origin: dict[str, str] = {}  # worker name -> table that made it, to report clashes
        grouped: set[str] = set()  # the tables among them with `count`
        for name, spec in table.items():
            where = f"[workers.{_key(name)}]"
            problem = _name_problem(name)
            if problem is not None:
                self.fail(where, problem)
            if not isinstance(spec, Mapping):
                self.fail(where, f"expected a table, got {_describe(spec)}")
            made = self._worker(name, where, spec) if "count" not in spec else self._group(name, where, spec)
            for worker in made:
                if worker.name in origin:
                    if worker.group is not None:
                        self.fail(f"{where} count", f"names a worker {worker.name!r} ({worker.group}_<index>), "
                                  f"which {origin[worker.name]} also names")  # fmt: skip
                    if origin[worker.name] in grouped:  # a single worker whose name a group took
                        self.fail(where, f"{origin[worker.name]} count already names a worker {worker.name!r}; "
                                  "rename one of them")  # fmt: skip
                    self.fail(f"{where} device", f"{ALL_GPUS!r} names a worker {worker.name!r}, "
                              f"which {origin[worker.name]} also names")  # fmt: skip
                origin[worker.name] = where
                if worker.group is not None:
                    grouped.add(where)
                workers.append(worker)
        return workers

    def _group(self, name: str, where: str, spec: Mapping[str, Any]) -> list[WorkerConfig]:
        """``count = N``: workers <name>_0 ... <name>_<N-1>, "{i}" in every string replaced by the index."""
        count = self._int(f"{where} count", spec["count"])
        if not 1 <= count <= GROUP_MAX:
            self.fail(f"{where} count", f"must be from 1 to {GROUP_MAX}, got {count}")
        if spec.get("device") == ALL_GPUS:
            self.fail(f"{where} device", f'{ALL_GPUS!r} cannot be combined with count (use device = "cuda:{{i}}" '
                      "to give worker i GPU i)")  # fmt: skip
        members = []
        for i in range(count):
            member = f"{name}_{i}"
            problem = _name_problem(member)
            if problem is not None:
                self.fail(f"{where} count", f"cannot name worker {i}: {problem}")
            table = {k: _with_index(v, i) for k, v in spec.items() if k != "count"}
            for worker in self._worker(member, where, table, f"workers.{_key(name)}.data"):
                members.append(dataclasses.replace(worker, group=name))
        return members

    def _worker(self, name: str, where: str, spec: Mapping[str, Any],
                data_path: str | None = None) -> list[WorkerConfig]:
        """The worker(s) one table describes: one, or one per GPU for ``device = "cuda:*"``."""
        self._check_keys(where, spec, _WORKER_KEYS)
        device = self._device(f"{where} device", spec.get("device", "cpu"))
        threads = self._int(f"{where} threads", spec.get("threads", 1))
        if threads < 1:
            self.fail(f"{where} threads", f"must be at least 1, got {threads}")
        if threads > THREADS_MAX:
            self.fail(f"{where} threads", f"must be at most {THREADS_MAX}, got {threads} (torch starts that many "
                      "threads in the worker; more than the machine's CPUs only compete for them)")  # fmt: skip
        cpus = None if "cpus" not in spec else self._cpus(f"{where} cpus", spec["cpus"])
        memory_limit = None
        if "memory_limit" in spec:
            memory_limit = self._size(f"{where} memory_limit", spec["memory_limit"])
            if memory_limit < MEMORY_LIMIT_MIN:
                self.fail(f"{where} memory_limit", f"must be at least {format_size(MEMORY_LIMIT_MIN)}, "
                          f"got {spec['memory_limit']!r} (a worker needs {_STARTUP_MEMORY} to start: "
                          "Python and torch)")  # fmt: skip
        fraction = None
        if "gpu_memory_fraction" in spec:
            fraction = self._fraction(f"{where} gpu_memory_fraction", spec["gpu_memory_fraction"], device)
        data = self._data(data_path or f"workers.{_key(name)}.data", spec.get("data", {}))
        extra = self._worker_network(where, spec)
        if "node" in spec:
            extra["node"] = self._str(f"{where} node", spec["node"])
        if device != ALL_GPUS:
            return [WorkerConfig(name, device, cpus, threads, memory_limit, fraction, None, data, **extra)]
        count = self._cuda_device_count()
        if count == 0:
            self.fail(f"{where} device", f"{ALL_GPUS!r} needs at least one CUDA device "
                      f"(this machine has 0 CUDA devices)")  # fmt: skip
        workers = []
        for i in range(count):
            problem = _name_problem(f"{name}{i}")
            if problem is not None:
                self.fail(f"{where} device", f"{ALL_GPUS!r} cannot name worker {i}: {problem}")
            workers.append(WorkerConfig(f"{name}{i}", f"cuda:{i}", cpus, threads, memory_limit,
                                        fraction, None, data, **extra))  # fmt: skip
        return workers

    def _worker_network(self, where: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A worker's keys for the network model: compute_factor, offline, message_pending_time."""
        extra: dict[str, Any] = {}
        if "compute_factor" in spec:
            factor = self._number(f"{where} compute_factor", spec["compute_factor"])
            if not factor > 0 or math.isinf(factor):
                self.fail(f"{where} compute_factor", f"must be a finite number more than 0, got {factor}")
            extra["compute_factor"] = float(factor)
        if "offline" in spec:
            value = spec["offline"]
            if not isinstance(value, list | tuple):
                self.fail(f"{where} offline", f"expected an array of [start, end] pairs, got {_describe(value)}")
            windows = []
            for window in value:
                if not isinstance(window, list | tuple) or len(window) != 2:
                    self.fail(f"{where} offline", f"each window is [start, end] in simulated seconds, e.g. "
                              f"[30.0, 90.0]; got {window!r}")
                start, end = (self._number(f"{where} offline", t) for t in window)
                if not 0 <= start < end or math.isinf(end):
                    self.fail(f"{where} offline", f"window [{start}, {end}]: need 0 <= start < end (finite)")
                windows.append((float(start), float(end)))
            extra["offline"] = tuple(sorted(windows))
        if "message_pending_time" in spec:
            pending = self._number(f"{where} message_pending_time", spec["message_pending_time"])
            if not 0 <= pending <= 3600:
                self.fail(f"{where} message_pending_time", f"must be from 0 to 3600 seconds, got {pending}")
            extra["message_pending_time"] = float(pending)
        return extra

    # -- [network] -------------------------------------------------------------

    def _network(self, table: Any, names: list[str], backend: str) -> NetworkConfig:
        if not isinstance(table, Mapping):
            self.fail("network", f"expected a table [network], got {_describe(table)}")
        self._check_keys("[network]", table, _NETWORK_KEYS)
        mode = self._str("[network] mode", table.get("mode", "off"))
        if mode not in NETWORK_MODES:
            self.fail("[network] mode", f"unknown mode {mode!r} (expected one of: {', '.join(NETWORK_MODES)})")
        default = self._link("[network]", table, LinkConfig(0.0, None, 0.0))
        seed = self._int("[network] seed", table.get("seed", 0))
        if not 0 <= seed <= _SEED_MAX:
            self.fail("[network] seed", f"must be from 0 to {_SEED_MAX}, got {seed}")
        links_table = table.get("links", {})
        if not isinstance(links_table, Mapping):
            self.fail("[network] links", f'expected tables such as [network.links."me->bob"], got {_describe(links_table)}')
        links: dict[tuple[str, str], LinkConfig] = {}
        for key, spec in links_table.items():
            where = f"[network.links.{_quote(key)}]"
            pairs = self._link_ends(where, key, names)
            if not isinstance(spec, Mapping):
                self.fail(where, f"expected a table of {', '.join(_LINK_KEYS)}, got {_describe(spec)}")
            self._check_keys(where, spec, _LINK_KEYS)
            config = self._link(where, spec, LinkConfig())
            for pair in pairs:
                if pair in links:
                    self.fail(where, f"link {pair[0]}->{pair[1]} is set twice")
                links[pair] = config
        if mode == "off":
            given = [k for k in _NETWORK_KEYS if k in table and k not in ("mode", "seed")]
            if given:
                self.fail(f"[network] {given[0]}", 'has no effect with mode = "off" (traffic only): set mode = '
                          '"account" (a simulated clock) or "enforce" (real waits)')
        elif backend != "local":
            self.fail("[network] mode", f"the network model needs worker processes (backend = \"local\"), "
                      f"not backend {backend!r}")
        return NetworkConfig(mode, default, seed, tuple((a, b, c) for (a, b), c in links.items()))

    def _link(self, where: str, table: Mapping[str, Any], base: LinkConfig) -> LinkConfig:
        latency, bandwidth, jitter = base.latency_ms, base.bandwidth_mbps, base.jitter_ms
        if "latency_ms" in table:
            latency = float(self._number(f"{where} latency_ms", table["latency_ms"]))
            if not 0 <= latency < math.inf:
                self.fail(f"{where} latency_ms", f"must be 0 or more (milliseconds), got {latency}")
        if "jitter_ms" in table:
            jitter = float(self._number(f"{where} jitter_ms", table["jitter_ms"]))
            if not 0 <= jitter < math.inf:
                self.fail(f"{where} jitter_ms", f"must be 0 or more (milliseconds), got {jitter}")
        if "bandwidth_mbps" in table:
            bandwidth = float(self._number(f"{where} bandwidth_mbps", table["bandwidth_mbps"]))
            if not 0 < bandwidth < math.inf:
                self.fail(f"{where} bandwidth_mbps", f"must be more than 0 (megabits per second; leave it out "
                          f"for unlimited), got {bandwidth}")
        return LinkConfig(latency, bandwidth, jitter)

    def _link_ends(self, where: str, key: str, names: list[str]) -> list[tuple[str, str]]:
        both = "<->" in key
        parts = key.split("<->" if both else "->")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            self.fail(where, 'a link is "src->dst" (one direction) or "a<->b" (both), with worker names or '
                      '"me" for the client')
        a, b = (p.strip() for p in parts)
        for end in (a, b):
            if end != "me" and end not in names:
                self.fail(where, f"no worker {end!r} (workers: {', '.join(names)}; \"me\" is the client)")
        if a == b:
            self.fail(where, f"a link joins two different parties, not {a!r} to itself")
        return [(a, b), (b, a)] if both else [(a, b)]

    def _check_network_use(self, workers: list[WorkerConfig], network: NetworkConfig) -> None:
        if network.mode != "off":
            return
        for worker in workers:
            for key, unset in (("compute_factor", 1.0), ("offline", ())):
                if getattr(worker, key) != unset:
                    self.fail(f"[workers.{_key(worker.name)}] {key}", 'needs the simulated clock: set [network] '
                              'mode = "account" or "enforce"')

    def _device(self, where: str, value: Any) -> str:
        device = self._str(where, value)
        if device == "cpu" or device == ALL_GPUS:
            return device
        match = _CUDA.fullmatch(device)
        if match is None:
            self.fail(where, f'{device!r} is not a device: use "cpu", "cuda", "cuda:N" or {ALL_GPUS!r}')
        index = int(match.group(1) or 0)  # a fresh worker's "cuda" is cuda:0; say so explicitly
        count = self._cuda_device_count()
        if index >= count:
            self.fail(where, f"{device} not available (this machine has {_plural(count, 'CUDA device')})")
        return f"cuda:{index}"

    def _cpus(self, where: str, value: Any) -> tuple[int, ...]:
        if value == _SPREAD:  # the next CPU, round-robin across every "spread" worker in file order
            available = self._cpus_available()
            cpu = available[self._spread % len(available)]
            self._spread += 1
            return (cpu,)
        if isinstance(value, str):
            cpus = _parse_cpu_list(value)
            if cpus is None:
                self.fail(where, f'invalid CPU list {value!r}: use an array such as [0, 1] '
                          f'or a string such as "0-3,6"')  # fmt: skip
        elif isinstance(value, list | tuple):
            cpus = [self._int(where, cpu) for cpu in value]
        else:
            self.fail(where, f"expected an array of CPU numbers, got {_describe(value)}")
        if not cpus:
            self.fail(where, "no CPUs given (leave cpus out to let the worker run on any CPU)")
        seen: set[int] = set()
        for cpu in cpus:
            if cpu < 0:
                self.fail(where, f"CPU numbers are 0 or more, got {cpu}")
            if cpu in seen:
                self.fail(where, f"CPU {cpu} listed twice")
            seen.add(cpu)
        available = self._cpus_available()
        missing = [cpu for cpu in cpus if cpu not in available]
        if missing:
            have = _format_cpus(available) or "none"
            self.fail(where, f"{'CPU' if len(missing) == 1 else 'CPUs'} {_format_cpus(missing)} "
                      f"not available (have {have})")  # fmt: skip
        return tuple(cpus)

    def _fraction(self, where: str, value: Any, device: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"expected a number, got {_describe(value)}")
        if not device.startswith("cuda"):
            self.fail(where, f"only valid with a cuda device (device is {device!r})")
        if not 0 < value <= 1 or math.isnan(value):
            self.fail(where, f"must be more than 0 and at most 1, got {value}")
        return float(value)

    def _check_gpu_fractions(self, workers: list[WorkerConfig]) -> None:
        by_gpu: dict[str, list[WorkerConfig]] = {}
        for worker in workers:
            if worker.gpu_memory_fraction is not None:
                by_gpu.setdefault(worker.device, []).append(worker)
        for gpu, sharing in by_gpu.items():
            total = sum(w.gpu_memory_fraction for w in sharing)  # type: ignore[misc]
            if total > 1 + 1e-9:  # tolerate float error in e.g. 0.1 + 0.2 + 0.7
                parts = ", ".join(f"{w.name} {w.gpu_memory_fraction:g}" for w in sharing)
                self.fail("[workers] gpu_memory_fraction",
                          f"fractions on {gpu} add up to {total:.6g} ({parts}); they must not exceed 1")  # fmt: skip

    def _data(self, table_path: str, value: Any) -> tuple[DataItem, ...]:
        if not isinstance(value, Mapping):
            self.fail(f"[{table_path}]", f"expected a table of data items, got {_describe(value)}")
        items = []
        for key, spec in value.items():
            where = f"[{table_path}.{_key(key)}]"
            if not isinstance(spec, Mapping):
                self.fail(where, f'expected a table such as {{ path = "x.pt", tags = ["#x"] }}, '
                          f"got {_describe(spec)}")  # fmt: skip
            self._check_keys(where, spec, _DATA_ITEM_KEYS)
            if "path" not in spec:
                self.fail(f"{where} path", 'missing (e.g. path = "data/xray.pt")')
            path = Path(self._str(f"{where} path", spec["path"])).expanduser()
            resolved = os.path.abspath(self.base_dir / path)  # no-op when path is absolute
            if not os.path.exists(resolved):
                self.fail(f"{where} path", f"file not found: {resolved}")
            if not os.path.isfile(resolved):
                self.fail(f"{where} path", f"not a file: {resolved}")
            if "tags" not in spec:
                self.fail(f"{where} tags", 'missing (e.g. tags = ["#xray", "#train"])')
            tags = spec["tags"]
            if not isinstance(tags, list | tuple):
                self.fail(f"{where} tags", f"expected an array of strings, got {_describe(tags)}")
            if not tags:
                self.fail(f"{where} tags", 'give at least one tag, e.g. ["#xray"]: tags are how the data is found')
            for tag in tags:
                tag = self._str(f"{where} tags", tag)
                if not _TAG.fullmatch(tag):
                    self.fail(f"{where} tags", f"tag {tag!r} must be '#' followed by text without spaces, e.g. '#xray'")
            if len(set(tags)) != len(tags):
                duplicate = next(t for t in tags if tags.count(t) > 1)
                self.fail(f"{where} tags", f"tag {duplicate!r} listed twice")
            description = spec.get("description")
            if description is not None:
                description = self._str(f"{where} description", description)
            items.append(DataItem(str(key), resolved, tuple(tags), description))
        return tuple(items)

    # -- small checks ----------------------------------------------------------

    def _check_keys(self, where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f"{where} {_key(key)}", f"unknown key (expected one of: {', '.join(allowed)})")

    def _str(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {_describe(value)}")
        return value

    def _number(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            self.fail(where, f"expected a number, got {_describe(value)}")
        return value

    def _int(self, where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass
            self.fail(where, f"expected an integer, got {_describe(value)}")
        return value

    def _timeout(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"expected a number of seconds, got {_describe(value)}")
        if value != 0 and not _REQUEST_TIMEOUT_MIN_S <= value <= _REQUEST_TIMEOUT_MAX_S:  # NaN fails both
            self.fail(where, f"must be 0 (wait forever) or from {_REQUEST_TIMEOUT_MIN_S:g} to "
                      f"{_REQUEST_TIMEOUT_MAX_S:g} seconds (a day), got {value}")  # fmt: skip
        return float(value)

    def _size(self, where: str, value: Any) -> int:
        try:
            return parse_size(value)
        except ConfigError as exc:
            self.fail(where, str(exc))

    def _cuda_device_count(self) -> int:
        if self._cuda_count is None:
            import torch  # lazily: only configs that name a CUDA device pay for importing torch

            self._cuda_count = torch.cuda.device_count()
        return self._cuda_count

    def _cpus_available(self) -> list[int]:
        if self._available_cpus is None:
            try:
                self._available_cpus = sorted(psutil.Process().cpu_affinity())
            except (AttributeError, NotImplementedError):  # macOS: no affinity API at all
                self._available_cpus = list(range(psutil.cpu_count() or 1))
        return self._available_cpus


# ---------------------------------------------------------------------------
# Formatting


def _replace_seed(worker: WorkerConfig, seed: int) -> WorkerConfig:
    return dataclasses.replace(worker, seed=seed)


def _with_index(value: Any, index: int) -> Any:
    """``value`` with "{i}" replaced by ``index`` in every string, however deep (a group's member)."""
    if isinstance(value, str):
        return value.replace("{i}", str(index))
    if isinstance(value, Mapping):
        return {k: _with_index(v, index) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_with_index(v, index) for v in value]
    return value


def _key(key: str) -> str:
    """A key as TOML would print it: bare when possible, quoted otherwise."""
    return key if isinstance(key, str) and _BARE_KEY.fullmatch(key) else _quote(key)


def _quote(key: Any) -> str:
    text = str(key).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _format_cpus(cpus: Iterable[int]) -> str:
    """Compact CPU list: [0, 2, 4, 5, 6, 7] -> "0,2,4-7"."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _parse_cpu_list(text: str) -> list[int] | None:
    """Inverse of _format_cpus ("0-3,6" -> [0, 1, 2, 3, 6]); None if malformed."""
    cpus: list[int] = []
    for part in text.split(","):
        match = _CPU_RANGE.fullmatch(part)
        if match is None:
            return None
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            return None
        cpus.extend(range(first, last + 1))
    return cpus


_TOML_POSITION = re.compile(r"^(?P<msg>.*?) \((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$")
_TOML_TWICE = re.compile(r"^(?:Cannot declare (?P<a>\(.*\)) twice|Cannot redefine namespace (?P<b>\(.*\)))$")


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """'<where>: <reason>' for a tomllib error (Python 3.11 keeps the position only in the text)."""
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return f"invalid TOML: {exc}"
    message = match.group("msg")
    where = "end of file" if match.group("line") is None else f"line {match.group('line')}"
    twice = _TOML_TWICE.match(message)
    if twice is not None:
        # TOML refuses a table declared twice; for [workers.x] that means a duplicate worker.
        path = ast.literal_eval(twice.group("a") or twice.group("b"))
        table = ".".join(_key(part) for part in path)
        if len(path) == 2 and path[0] == "workers":
            return f"{where}: [{table}] is declared twice (worker names must be unique)"
        return f"{where}: [{table}] is declared twice"
    column = "" if match.group("col") is None else f" (column {match.group('col')})"
    return f"{where}: invalid TOML: {message[:1].lower()}{message[1:]}{column}"
