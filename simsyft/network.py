"""The network model: per-link latency, bandwidth and jitter, and each party's simulated clock.

Owns `Network` (one per simulation per process: this party's `Clock`, the queue of every link
*into* this party, the per-link jitter generators) and the stamps that carry simulated time
with each message. No central clock (DESIGN.md, "The simulated clock"): a message carries its
sender's send time and size; the receiver computes its arrival from the link's latency,
bandwidth and the moment the link is free (one message at a time), and starts handling it at
max(its own clock, arrival). A worker's handling takes its CPU time x `compute_factor`; the
client's clock advances with its own elapsed time between calls. `enforce` mode makes every
arrival a real wait: clocks then are CLOCK_MONOTONIC (the same in every process of a machine)
since the simulation's origin. docs/network.md states the model and what it leaves out.

The links (links/link.py, links/zmq.py) stamp what they send and read the stamps of replies;
worker/main.py does both for the requests it serves. A process finds its simulation's
`Network` by namespace (`install` / `lookup`). Imports config only.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import time
import zlib
from typing import Callable

from .config import NetworkConfig
from .errors import ProtocolError
from .rundir import write_json

__all__ = ["FILE", "QUIET_STAMP", "Clock", "Network", "install", "lookup", "read", "uninstall", "write"]

FILE = "network.json"  # in a local simulation's run directory: what its workers and attached clients read

# A stamp: send time (simulated s), bytes (REPLY: the receiver counts them; QUIET: not traffic,
# no clock), then the sender's name. It travels as the last frame of every message of a
# simulation whose network mode is not off, and is never counted as traffic.
_STAMP = struct.Struct("<dq")
REPLY = -1
QUIET = -2
QUIET_STAMP = _STAMP.pack(0.0, QUIET)


class Clock:
    """One party's simulated clock, in seconds since the simulation's origin.

    Between events it runs on `source` x `factor`: the client on wall time (its own work between
    calls), a worker on its CPU time x compute_factor. Waiting for a message never advances it
    by the wait: `arrive` moves it to the arrival instead. With `origin` (enforce mode) it is the
    machine's monotonic time since the origin, and `arrive` really sleeps.
    """

    __slots__ = ("base", "mark", "source", "factor", "origin")

    def __init__(self, source: Callable[[], float] = time.perf_counter, factor: float = 1.0,
                 origin: float | None = None) -> None:
        self.source, self.factor, self.origin = source, factor, origin
        self.base = 0.0
        self.mark = source()

    def now(self) -> float:
        if self.origin is not None:
            return time.monotonic() - self.origin
        return self.base + (self.source() - self.mark) * self.factor

    def stamp(self) -> float:
        """A message leaves now: the time it carries."""
        t = self.now()
        self.base, self.mark = t, self.source()
        return t

    def arrive(self, arrival: float) -> float:
        """Wait for a message arriving at `arrival`; returns when this party can start on it."""
        if self.origin is not None:
            delay = arrival - self.now()
            if delay > 0:
                time.sleep(delay)
            return self.now()
        self.base, self.mark = max(self.base, arrival), self.source()
        return self.base

    def extend(self, seconds: float) -> None:
        """Add simulated work (enforce: really spend it)."""
        if self.origin is not None:
            if seconds > 0:
                time.sleep(seconds)
        else:
            self.base += seconds


class _Incoming:
    """The queue of one directed link, kept by its receiver: when the link is next free."""

    __slots__ = ("latency_s", "seconds_per_byte", "jitter_s", "rng", "free_at", "last")

    def __init__(self, network: NetworkConfig, src: str, dst: str) -> None:
        config = network.link(src, dst)
        self.latency_s = (config.latency_ms or 0.0) / 1e3
        self.seconds_per_byte = 0.0 if not config.bandwidth_mbps else 8 / (config.bandwidth_mbps * 1e6)
        self.jitter_s = (config.jitter_ms or 0.0) / 1e3
        # Seeded per link, independent of Python's salted str hash: same program, same times.
        self.rng = random.Random(zlib.crc32(f"{network.seed}:{src}->{dst}".encode()))
        self.free_at = -math.inf
        self.last = -math.inf

    def arrival(self, sent_at: float, nbytes: int) -> float:
        start = max(sent_at, self.free_at)  # a link carries one message at a time
        self.free_at = start + nbytes * self.seconds_per_byte
        arrival = self.free_at + self.latency_s
        if self.jitter_s:
            arrival += self.rng.uniform(0.0, self.jitter_s)
        self.last = arrival = max(arrival, self.last)  # the link keeps order, as the transport does
        return arrival


class Network:
    """The network model as one party (`name`: "me" or a worker) of a simulation sees it."""

    def __init__(self, config: NetworkConfig, name: str = "me", factor: float = 1.0,
                 offline: tuple = (), origin: float = 0.0) -> None:
        self.config = config
        self.name = name
        self.enforce = config.mode == "enforce"
        self.origin = origin
        source = time.perf_counter if name == "me" else time.process_time
        self.clock = Clock(source, factor, origin if self.enforce else None)
        self.factor = factor
        self.offline = offline
        self._name = name.encode()
        self._incoming: dict[str, _Incoming] = {}  # by sender

    def stamp(self, nbytes: int = REPLY, at: float | None = None) -> bytes:
        """The stamp of a message this party sends now (or `at`); `nbytes`: its frames' and
        shared-memory bytes, or REPLY when its receiver counts them."""
        return _STAMP.pack(self.clock.stamp() if at is None else at, nbytes) + self._name

    def arrival(self, stamp: bytes, nbytes: int = 0) -> tuple[str, float | None]:
        """(sender, when the message with `stamp` arrives here); None for a quiet message.
        `nbytes`: its size, as the receiver counted it, for a REPLY stamp."""
        try:
            sent_at, stamped = _STAMP.unpack_from(stamp)
            src = bytes(stamp[_STAMP.size:]).decode()
        except (struct.error, UnicodeDecodeError, TypeError):
            raise ProtocolError(f"a message without a valid network stamp ({len(stamp)} bytes where one was "
                                "expected): both ends must run the simulation's network model") from None
        if not math.isfinite(sent_at):
            raise ProtocolError(f"a network stamp with send time {sent_at!r}")
        if stamped == QUIET:
            return src, None
        link = self._incoming.get(src)
        if link is None:
            link = self._incoming[src] = _Incoming(self.config, src, self.name)
        return src, link.arrival(sent_at, stamped if stamped >= 0 else nbytes)

    def receive(self, stamp: bytes, nbytes: int) -> None:
        """A reply arrived: this party's clock waits for it."""
        arrival = self.arrival(stamp, nbytes)[1]
        if arrival is not None:
            self.clock.arrive(arrival)

    def restart_clock(self) -> None:
        """Time starts now (account mode: after the workers are up; enforce keeps its origin)."""
        self.clock.base, self.clock.mark = 0.0, self.clock.source()

    def is_offline(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.offline)

    def now(self) -> float:
        return self.clock.now()


# -- the networks of this process, by simulation namespace ------------------------------------
_ACTIVE: dict[str, Network] = {}


def install(namespace: str, network: Network) -> Network:
    """Make `network` the model links of simulation `namespace` use in this process (before its
    links are made)."""
    _ACTIVE[namespace] = network
    return network


def uninstall(namespace: str) -> None:
    _ACTIVE.pop(namespace, None)


def lookup(namespace: str) -> Network | None:
    return _ACTIVE.get(namespace)


def write(run_dir: str, config: NetworkConfig, origin: float) -> None:
    """Leave the model in a run directory, for the workers and for clients that attach."""
    write_json(os.path.join(run_dir, FILE), {"network": config.to_dict(), "origin": origin})


def read(run_dir: str) -> tuple[NetworkConfig, float] | None:
    """The model a run directory holds (None: a simulation without one, network off)."""
    try:
        with open(os.path.join(run_dir, FILE)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return NetworkConfig.from_dict(data["network"]), float(data["origin"])
