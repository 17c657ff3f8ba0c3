"""The traffic ledger's report: bytes and messages per directed link, and what a block measured.

Owns `LinkTraffic` (one directed link: messages, bytes in frames, bytes through shared
memory or CUDA IPC), `Traffic` (every link of a simulation, keyed `(src, dst)` with "me"
for the client) and `Measurement` (what `sy.measure()` yields). Plain data: the counting
itself happens in links/link.py (`LinkStats`), and simulation.py gathers it from the client's
links and the workers' own reports. Imports nothing of simsyft.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["LinkTraffic", "Measurement", "Traffic"]


class LinkTraffic:
    """Traffic on one directed link. `bytes` is everything a real network would carry: the
    frames plus the tensor bytes that crossed through shared memory (`shm_bytes`)."""

    __slots__ = ("messages", "frame_bytes", "shm_bytes")

    def __init__(self, messages: int = 0, frame_bytes: int = 0, shm_bytes: int = 0) -> None:
        self.messages = messages
        self.frame_bytes = frame_bytes
        self.shm_bytes = shm_bytes

    @property
    def bytes(self) -> int:
        return self.frame_bytes + self.shm_bytes

    def add(self, messages: int, frame_bytes: int, shm_bytes: int) -> None:
        self.messages += messages
        self.frame_bytes += frame_bytes
        self.shm_bytes += shm_bytes

    def to_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "bytes": self.bytes, "frame_bytes": self.frame_bytes,
                "shm_bytes": self.shm_bytes}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkTraffic) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"<LinkTraffic messages={self.messages} bytes={self.bytes} shm_bytes={self.shm_bytes}>"


class Traffic:
    """Traffic per directed link, `(src, dst)` -> `LinkTraffic`; "me" is the client.

    >>> t = sy.traffic()
    >>> t.links[("me", "bob")].bytes, t.total_bytes
    (1048921, 1049305)
    """

    def __init__(self, links: dict[tuple[str, str], LinkTraffic] | None = None) -> None:
        self.links: dict[tuple[str, str], LinkTraffic] = dict(links or {})

    def add(self, src: str, dst: str, messages: int, frame_bytes: int, shm_bytes: int) -> None:
        """Count traffic on link src -> dst (a link with nothing on it is not listed)."""
        if not messages and not frame_bytes and not shm_bytes:
            return
        stats = self.links.get((src, dst))
        if stats is None:
            stats = self.links[(src, dst)] = LinkTraffic()
        stats.add(messages, frame_bytes, shm_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(stats.bytes for stats in self.links.values())

    @property
    def total_messages(self) -> int:
        return sum(stats.messages for stats in self.links.values())

    def sent_by(self, party: str) -> int:
        """Bytes `party` sent on all its links."""
        return sum(stats.bytes for (src, _), stats in self.links.items() if src == party)

    def received_by(self, party: str) -> int:
        """Bytes `party` received on all its links."""
        return sum(stats.bytes for (_, dst), stats in self.links.items() if dst == party)

    def __sub__(self, earlier: "Traffic") -> "Traffic":
        """The traffic between two snapshots (a link whose counters went back, after a worker
        restarted, counts from zero)."""
        delta = Traffic()
        for key, stats in self.links.items():
            before = earlier.links.get(key)
            if before is None or before.messages > stats.messages:
                before = LinkTraffic()
            delta.add(*key, stats.messages - before.messages, stats.frame_bytes - before.frame_bytes,
                      stats.shm_bytes - before.shm_bytes)
        return delta

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"links": [{"src", "dst", "messages", "bytes", "frame_bytes", "shm_bytes"}, ...],
        "total_bytes": ..., "total_messages": ...}."""
        return {
            "links": [{"src": src, "dst": dst, **stats.to_dict()} for (src, dst), stats in self._sorted()],
            "total_bytes": self.total_bytes,
            "total_messages": self.total_messages,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Traffic":
        traffic = cls()
        for row in data.get("links", ()):
            traffic.add(row["src"], row["dst"], row["messages"], row["frame_bytes"], row["shm_bytes"])
        return traffic

    def merge(self, others: Iterable["Traffic"]) -> "Traffic":
        """This ledger plus others (e.g. the client links of processes that have detached)."""
        merged = Traffic()
        for traffic in (self, *others):
            for (src, dst), stats in traffic.links.items():
                merged.add(src, dst, stats.messages, stats.frame_bytes, stats.shm_bytes)
        return merged

    def _sorted(self) -> list:
        # The client's links first, then worker to worker, each by name.
        return sorted(self.links.items(), key=lambda item: (item[0][0] != "me", item[0][1] != "me", item[0]))

    def __str__(self) -> str:
        headers = ("link", "messages", "bytes", "of which shm")
        rows = [(f"{src} -> {dst}", str(stats.messages), format_bytes(stats.bytes), format_bytes(stats.shm_bytes))
                for (src, dst), stats in self._sorted()]
        rows.append(("total", str(self.total_messages), format_bytes(self.total_bytes),
                     format_bytes(sum(s.shm_bytes for s in self.links.values()))))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Traffic {len(self.links)} links, {self.total_messages} messages, {self.total_bytes} bytes>"


class Measurement:
    """What `sy.measure()` yields; filled in when the block ends.

    - `traffic`: the `Traffic` of the block (every link);
    - `simulated_s`: simulated seconds the block took, as the client's clock saw it (equal to
      `wall_s` when `[network] mode = "off"`: the links are then as fast as the machine);
    - `wall_s`: real seconds.
    """

    def __init__(self) -> None:
        self.traffic: Traffic | None = None
        self.simulated_s: float | None = None
        self.wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"traffic": None if self.traffic is None else self.traffic.to_dict(),
                "simulated_s": self.simulated_s, "wall_s": self.wall_s}

    def __repr__(self) -> str:
        if self.wall_s is None:
            return "<Measurement (running)>"
        return (f"<Measurement simulated_s={self.simulated_s:.6g} wall_s={self.wall_s:.6g} "
                f"bytes={self.traffic.total_bytes if self.traffic else 0}>")


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
