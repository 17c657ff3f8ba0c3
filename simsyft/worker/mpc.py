"""A worker's part in SMPC: splitting its data into shares, dealing Beaver triples, and the two
steps of a Beaver multiplication, with the openings parties send each other.

Owns the handlers of ShareOut, Deal, Triple, Open, Opened, Beaver, Step and Round (worker/core.py's
`_HANDLERS` lists them) and `MpcState`, the openings a party holds between steps. Step runs a
multi-round protocol (comparisons: binary.py, Note [Most significant bit]) one round per
message, in the order of Note [Who talks when].
Opened values are masked (x - a with a uniform), never plaintext, and they stay out of the
store: `bob._objects` shows shares only. Every byte between parties goes on the worker's peer
links (worker/peers.py), so the traffic ledger counts it. Imports the wire, ring and errors;
never the user layer.

Note [Who talks when]
    A worker has one thread: while it waits for a peer's answer it cannot serve that peer. So
    the client runs step 1 (Open) on one party at a time; each party then sends its openings to
    peers that are idle, and no two parties ever wait on each other. The crypto provider only
    sends (Triple).

Note [One-way deals]
    The provider must receive nothing from the parties, not even acknowledgements, so it deals
    with `Link.send_oneway`: a Triple with `reply=False`, answered only by a failure. Nothing then
    orders the deal before the client's next message to the party (they come on different
    sockets), so a party whose Open finds its triple missing takes in deliveries (`core.pump`,
    worker/main.py) until the triple is there, holding any other message for after. The deal left
    the provider before the provider answered the client, so the triple is already in flight: the
    party gives up after 2 s in which nothing arrives (an Open naming a triple nobody dealt, say,
    a forged one), and after the request timeout (30 s when that is 0) in any case.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import torch

from .. import binary, ring
from ..errors import ProtocolError
from ..wire import messages, tensors
from ..wire.messages import Result

__all__ = ["MpcState", "on_beaver", "on_deal", "on_open", "on_opened", "on_round", "on_share_out", "on_step",
           "on_triple"]

_KEPT = 64  # multiplications whose openings a party keeps (one that failed halfway is dropped in time)
_OPS = {"mul": torch.mul, "matmul": torch.matmul}
_PROTOCOLS = {"msb": binary.msb_rounds}  # Step's multi-round protocols


class MpcState:
    """Openings received per multiplication tag: {tag: {party: (eps, delta)}}, bounded."""

    def __init__(self) -> None:
        self.openings: OrderedDict[Any, dict[str, tuple]] = OrderedDict()
        # Step protocols under way: {tag: (generator, next round, how to combine openings)}.
        self.runs: OrderedDict[int, tuple] = OrderedDict()

    def slot(self, tag: Any) -> dict[str, tuple]:
        found = self.openings.get(tag)
        if found is None:
            found = self.openings[tag] = {}
            while len(self.openings) > _KEPT:
                self.openings.popitem(last=False)
        return found


def _meta(t: torch.Tensor) -> tuple:
    return (tensors.dtype_name(t.dtype), tuple(t.shape), False, "cpu" if t.is_cpu else str(t.device))


def _tensor(core: Any, object_id: int, used: dict) -> torch.Tensor:
    value = core._resolve(object_id, used)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"object {object_id} on worker {core.name!r} is a pointer, not a share")
    return value


def _send(core: Any, party: str, make) -> None:
    core.peers.get(party).request(make)


_QUIET_S = 2.0  # Note [One-way deals]: how long a party waits with nothing arriving before it gives up


def _await_deliveries(core: Any, ids: tuple) -> None:
    """Note [One-way deals]: wait until the provider's shares `ids` have arrived."""
    if core.pump is None or all(i in core.store for i in ids):
        return
    limit = core.peers.request_timeout_s or 30.0
    start = quiet_since = time.monotonic()
    while not all(i in core.store for i in ids):
        now = time.monotonic()
        if now - start > limit or now - quiet_since > _QUIET_S:
            missing = [i for i in ids if i not in core.store]
            raise TimeoutError(f"worker {core.name!r} has no crypto provider's triple shares {missing}: none "
                               f"arrived (waited {now - start:.1f} s)")
        if core.pump(0.25):
            quiet_since = time.monotonic()


def on_share_out(core: Any, msg: messages.ShareOut, used: dict) -> messages.Message:
    value = _tensor(core, msg.id, used)
    if value.is_floating_point() or value.is_complex():
        raise TypeError("FloatTensor cannot be additively shared, Use fix_precision.")
    if len(msg.parties) != len(msg.ids) or len(set(msg.parties)) != len(msg.parties):
        raise ProtocolError("ShareOut needs one distinct party per share id")
    shares = ring.split(value.detach().to(ring.ring_dtype(msg.ring)), len(msg.parties))
    sent = []
    try:
        for party, share_id, share in zip(msg.parties, msg.ids, shares):
            if party == core.name:
                core.store[share_id] = share
            else:
                _send(core, party, lambda seq, i=share_id, s=share: messages.Store(seq, i, s))
            sent.append((party, share_id))
    except Exception:
        _undo(core, sent)
        raise
    return messages.Value(msg.seq, _meta(shares[0]))


def _undo(core: Any, placed: list) -> None:
    """Free shares already placed when a later party failed: no orphan share stays anywhere."""
    for party, object_id in placed:
        if party == core.name:
            core.store.pop(object_id, None)
        else:
            try:
                core.peers.get(party).free(object_id)
                core.peers.get(party).request(lambda seq: messages.Objects(seq, False))  # flushes the free
            except Exception:  # noqa: BLE001 - that party is gone too, and its store with it
                pass


def on_deal(core: Any, msg: messages.Deal, used: dict) -> messages.Message:
    if core.name in msg.parties:
        raise ValueError(f"worker {core.name!r} is the crypto provider and cannot also hold a share: "
                         "it would learn the other parties' values")
    dtype = ring.ring_dtype(msg.ring)
    if len(msg.ids) != len(msg.parties):
        raise ProtocolError("Deal needs one tuple of ids per party")
    per_party = deal_values(msg.op, msg.shapes, dtype, len(msg.parties))
    placed = []
    try:
        for party, ids, values in zip(msg.parties, msg.ids, per_party):
            if len(ids) != len(values):
                raise ProtocolError(f"Deal of {msg.op!r} gives {len(values)} tensors per party, got {len(ids)} ids")
            core.peers.get(party).send_oneway(
                lambda seq, ids=tuple(ids), v=values: messages.Triple(seq, ids, v, False))
            placed += [(party, object_id) for object_id in ids]
    except Exception:
        _undo(core, placed)
        raise
    return messages.Ack(msg.seq, (Result.NOTHING,))


def deal_values(op_name: str, shapes: tuple, dtype: torch.dtype, n: int) -> list[tuple]:
    """The provider's correlated randomness for `op_name`, one tuple of tensors per party: a Beaver
    triple for "mul"/"matmul", Note [Most significant bit]'s tensors for "msb"."""
    if op_name == "msb" and len(shapes) == 1:
        return binary.deal_msb(tuple(shapes[0]), dtype, n)
    op = _OPS.get(op_name)
    if op is None or len(shapes) != 2:
        raise ProtocolError(f"Deal of an unknown op {op_name!r} or with mismatched shapes")
    a, b = (ring.uniform(tuple(shape), dtype) for shape in shapes)
    parts = [ring.split(t, n) for t in (a, b, op(a, b))]
    return [tuple(part[i] for part in parts) for i in range(n)]


def on_triple(core: Any, msg: messages.Triple, used: dict) -> messages.Message:
    if len(msg.ids) != len(msg.values) or not all(isinstance(v, torch.Tensor) for v in msg.values):
        raise ProtocolError("Triple carries one tensor per id")
    for object_id, value in zip(msg.ids, msg.values):
        core.store[object_id] = value.to(core.device)  # the provider deals on its own device
    return messages.Ack(msg.seq, (Result.NOTHING,))


def on_open(core: Any, msg: messages.Open, used: dict) -> messages.Message:
    _await_deliveries(core, (msg.a, msg.b))
    x, y, a, b = (_tensor(core, i, used) for i in (msg.x, msg.y, msg.a, msg.b))
    if x.dtype != a.dtype or y.dtype != b.dtype or x.shape != a.shape or y.shape != b.shape:
        raise ValueError(f"worker {core.name!r}: the Beaver triple does not match the shares "
                         f"({x.dtype} {tuple(x.shape)} vs {a.dtype} {tuple(a.shape)})")
    opened = (x - a, y - b)
    core.mpc.slot(msg.tag)[core.name] = opened
    for party in msg.parties:
        if party != core.name:  # Note [Who talks when]: each peer is idle while we send
            _send(core, party, lambda seq: messages.Opened(seq, msg.tag, core.name, opened))
    return messages.Ack(msg.seq, (Result.NOTHING,))


def on_opened(core: Any, msg: messages.Opened, used: dict) -> messages.Message:
    if len(msg.values) != 2 or not all(isinstance(v, torch.Tensor) for v in msg.values):
        raise ProtocolError("Opened carries two tensors (eps, delta)")
    core.mpc.slot(msg.tag)[msg.sender] = tuple(msg.values)
    return messages.Ack(msg.seq, (Result.NOTHING,))


def on_beaver(core: Any, msg: messages.Beaver, used: dict) -> messages.Message:
    op = _OPS.get(msg.op)
    if op is None:
        raise ProtocolError(f"Beaver of an unknown op {msg.op!r}")
    opened = core.mpc.openings.pop(msg.tag, None)
    if not opened:
        raise ValueError(f"worker {core.name!r} has no openings for multiplication {msg.tag}: step 1 did not run")
    a, b, c = (_tensor(core, i, used) for i in (msg.a, msg.b, msg.c))
    eps, delta = (ring.reconstruct([values[k] for values in opened.values()]) for k in (0, 1))
    z = c + op(eps, b) + op(a, delta)
    if msg.first:
        z += op(eps, delta)
    for object_id in (msg.a, msg.b, msg.c):
        core.store.pop(object_id, None)
    core.store[msg.result_id] = z
    return messages.Ack(msg.seq, (Result.NEW, msg.result_id, *_meta(z)))


def on_step(core: Any, msg: messages.Step, used: dict) -> messages.Message:
    """One round of a Step protocol (Note [Who talks when]: the client steps one party at a time,
    so when a party's round k starts, every peer has sent it round k-1)."""
    run = core.mpc.runs.pop(msg.tag, None)
    if run is None:
        protocol = _PROTOCOLS.get(msg.op)
        if protocol is None or len(msg.inputs) != 1:
            raise ProtocolError(f"Step of an unknown protocol {msg.op!r}")
        _await_deliveries(core, msg.deal)
        x = _tensor(core, msg.inputs[0], used)
        deal = tuple(_tensor(core, i, used) for i in msg.deal)
        if deal[0].dtype != x.dtype or deal[0].shape != x.shape:
            raise ValueError(f"worker {core.name!r}: the dealt tensors do not match the share "
                             f"({x.dtype} {tuple(x.shape)} vs {deal[0].dtype} {tuple(deal[0].shape)})")
        for object_id in msg.deal:  # held by the generator from now on
            core.store.pop(object_id, None)
        generator, round_no, opened = protocol(msg.parties[0] == core.name, x, deal), 0, None
    else:
        generator, round_no, mode = run
        received = core.mpc.openings.pop((msg.tag, round_no - 1), {})
        missing = [p for p in msg.parties if p not in received]
        if missing:
            generator.close()
            raise ProtocolError(f"worker {core.name!r}: round {round_no - 1} of {msg.tag} lacks {missing}'s values")
        combine = ring.reconstruct if mode == "add" else _xor_all
        opened = tuple(combine([received[p][k] for p in msg.parties]) for k in range(len(received[core.name])))
    try:
        mode, values = generator.send(opened)
    except StopIteration as done:
        core.store[msg.result_id] = done.value
        return messages.Ack(msg.seq, (Result.NEW, msg.result_id, *_meta(done.value)))
    core.mpc.slot((msg.tag, round_no))[core.name] = values
    for party in msg.parties:
        if party != core.name:
            _send(core, party, lambda seq: messages.Round(seq, msg.tag, core.name, round_no, values))
    core.mpc.runs[msg.tag] = (generator, round_no + 1, mode)
    while len(core.mpc.runs) > _KEPT:  # one abandoned halfway is dropped in time
        core.mpc.runs.popitem(last=False)
    return messages.Ack(msg.seq, (Result.NOTHING,))


def on_round(core: Any, msg: messages.Round, used: dict) -> messages.Message:
    if not all(isinstance(v, torch.Tensor) for v in msg.values):
        raise ProtocolError("Round carries tensors")
    core.mpc.slot((msg.tag, msg.round))[msg.sender] = tuple(msg.values)
    return messages.Ack(msg.seq, (Result.NOTHING,))


def _xor_all(values: list) -> torch.Tensor:
    total = values[0].clone()
    for value in values[1:]:
        total ^= value
    return total
