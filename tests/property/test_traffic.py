"""The traffic ledger is exact: for random programs, its totals equal what the two ends of each
link actually put through and took from the transport, counted there, independently.

In-process workers (backends/inprocess.py): every message is still encoded and every tensor
over INLINE_MAX still crosses through a segment, and every transport, the client's and the
workers' own links to each other, is in this process where the test can count it.
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simsyft.backends.inprocess import InProcessBackend, InProcessLink
from simsyft.config import WorkerConfig
from simsyft.simulation import Simulation
from simsyft.wire import tensors

WORKERS = ("bob", "alice")
SMALL, BIG = 4, (tensors.INLINE_MAX // 4) + 256  # float32 elements: a frame, a segment

step = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(WORKERS), st.sampled_from([SMALL, BIG])),
    st.tuples(st.just("op"), st.integers(0, 7)),
    st.tuples(st.just("get"), st.integers(0, 7)),
    st.tuples(st.just("move"), st.integers(0, 7)),
    st.tuples(st.just("del"), st.integers(0, 7)),
)


@pytest.fixture
def counted(monkeypatch):
    """Count every frame at the in-process transport, per directed link."""
    wire = collections.Counter()

    send, recv = InProcessLink._send, InProcessLink._recv

    def counting_send(self, frames):
        wire[(self.source, self.name, "messages")] += 1
        wire[(self.source, self.name, "bytes")] += sum(len(f) for f in frames)
        send(self, frames)

    def counting_recv(self):
        frames = recv(self)
        wire[(self.name, self.source, "messages")] += 1
        wire[(self.name, self.source, "bytes")] += sum(len(f) for f in frames)
        return frames

    monkeypatch.setattr(InProcessLink, "_send", counting_send)
    monkeypatch.setattr(InProcessLink, "_recv", counting_recv)
    return wire


@settings(max_examples=30, deadline=None)
@given(program=st.lists(step, min_size=1, max_size=12))
def test_ledger_equals_the_transport(hook, counted, program):
    counted.clear()
    sim = Simulation(InProcessBackend("prop-traffic"))
    try:
        for name in WORKERS:
            sim.backend.start(WorkerConfig(name))
        shm = collections.Counter()  # tensor bytes over segments, from the program alone
        live: list = []  # (pointer, worker name, nbytes)
        for action, *arg in program:
            if action == "send":
                worker, numel = arg
                live.append((torch.ones(numel).send(sim[worker]), worker, numel * 4))
                if numel == BIG:
                    shm[("me", worker)] += numel * 4
                continue
            if not live:
                continue
            index = arg[0] % len(live)
            ptr, where, nbytes = live[index]
            if action == "op":
                live.append((ptr + 1, where, nbytes))
            elif action == "get":
                live.pop(index)
                ptr.get()
                if nbytes > tensors.INLINE_MAX:
                    shm[(where, "me")] += nbytes
            elif action == "move":
                other = next(w for w in WORKERS if w != where)
                live[index] = (ptr.move(sim[other]), other, nbytes)
                if nbytes > tensors.INLINE_MAX:
                    shm[(where, other)] += nbytes
            else:
                live.pop(index)
                del ptr
        for name in WORKERS:
            sim[name].object_count()  # sends the frees of dropped pointers: the ledger's Infos carry none
        wire = collections.Counter(counted)
        ledger = sim.traffic()
        for (src, dst), stats in ledger.links.items():
            assert stats.messages == wire[(src, dst, "messages")], (src, dst)
            assert stats.frame_bytes == wire[(src, dst, "bytes")], (src, dst)
            assert stats.shm_bytes == shm[(src, dst)], (src, dst)
            assert stats.bytes == stats.frame_bytes + stats.shm_bytes
        links_on_the_wire = {(src, dst) for src, dst, _ in wire if wire[(src, dst, "messages")]}
        assert set(ledger.links) == links_on_the_wire
        assert ledger.total_bytes == sum(v for k, v in wire.items() if k[2] == "bytes") + sum(shm.values())
    finally:
        sim.shutdown()
