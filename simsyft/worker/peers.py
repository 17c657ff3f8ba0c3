"""How a worker reaches the other workers of its simulation: one link per peer.

Owns `Peers` (the cache of a worker's links to its peers, and the loopback to
itself) and `ZmqPeers` (workers as local processes: ipc endpoints in the run
directory). A backend gives each worker the `Peers` that fits where its workers
run; the worker only asks `peers.get(name)` for a `Link` (pointer chains,
`move`, remote_get). Imports links and errors; never the user layer.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import SimsyftError
from ..links.link import Link
from ..rundir import pid_alive, read_pids

__all__ = ["Loopback", "Peers", "ZmqPeers"]


class Loopback(Link):
    """A worker's link to itself, for chains that stay on one worker.

    A socket to ourselves would deadlock our single thread, so the request is handled
    re-entrantly, still through the wire format.
    """

    def __init__(self, core: Any) -> None:
        super().__init__(core.name, core.namespace, source=core.name)
        self.core = core
        self._replies: list = []

    def _send(self, frames: list) -> None:
        reply = self.core.handle([bytes(f) for f in frames])
        if reply is not None:
            self._replies.append([bytes(f) for f in reply])

    def _recv(self) -> list:
        return self._replies.pop(0)


class Peers:
    """A worker's links to the other workers, made on first use and kept.

    The base reaches only the worker itself; subclasses (one per backend) reach the others.
    """

    def __init__(self, request_timeout_s: float = 0.0) -> None:
        self.request_timeout_s = request_timeout_s  # the simulation's, as the client's links
        self.core: Any = None
        self._links: dict[str, Link] = {}
        self._retired: dict[str, list[list[int]]] = {}  # traffic of links closed and replaced, by peer

    def bind(self, core: Any) -> None:
        """Attach to the worker these links start from (WorkerCore does this)."""
        self.core = core

    def get(self, name: str) -> Link:
        """The link from this worker to worker `name`."""
        link = self._links.get(name)
        if link is not None and link.closed_reason is None:
            return link
        if link is not None:
            self._retired[name] = _add(self._retired.get(name), _counts(link))
        link = Loopback(self.core) if name == self.core.name else self._connect(name)
        self._links[name] = link
        return link

    def _connect(self, name: str) -> Link:
        raise SimsyftError(f"worker {self.core.name!r} cannot reach worker {name!r}: its workers do not "
                           "share a simulation that links them")

    def traffic(self) -> dict[str, list[list[int]]]:
        """This worker's traffic with each peer, as it counted it on its own links:
        {peer: [[messages, frame bytes, shm bytes] sent, [...] received]}. The loopback to
        itself is no network link and is left out. The client merges these into its ledger
        (simsyft/simulation.py)."""
        report = {name: list(counts) for name, counts in self._retired.items()}
        for name, link in self._links.items():
            if not isinstance(link, Loopback):
                report[name] = _add(report.get(name), _counts(link))
        return report

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


def _counts(link: Link) -> list[list[int]]:
    sent, received = link.sent, link.received
    return [[sent.messages, sent.bytes, sent.shm_bytes], [received.messages, received.bytes, received.shm_bytes]]


def _add(a: list | None, b: list) -> list:
    return b if a is None else [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]


class ZmqPeers(Peers):
    """Peers that are local worker processes: a ZeroMQ link to `<run_dir>/<name>.sock`."""

    def __init__(self, run_dir: str, request_timeout_s: float = 0.0) -> None:
        super().__init__(request_timeout_s)
        self.run_dir = run_dir

    def _connect(self, name: str) -> Link:
        from ..links.zmq import ZmqLink  # pyzmq only where a chain needs it

        pid = read_pids(self.run_dir).get(name)
        if pid is None:
            raise SimsyftError(f"worker {self.core.name!r} cannot reach worker {name!r}: no such worker in "
                               "this simulation")
        me = self.core.name
        return ZmqLink(
            name, f"ipc://{os.path.join(self.run_dir, name)}.sock", self.core.namespace,
            exit_status=lambda: None if pid_alive(pid) else -1,
            describe_exit=lambda: f"worker {name!r} (pid {pid}), reached through worker {me!r}, has exited",
            timeout_s=self.request_timeout_s, pid=pid, source=me,
        )
