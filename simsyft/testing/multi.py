"""`MultiPointerRules`, PointerMachine's rules for multi-pointers: send to several workers,
`combine`, ops (one and two operands) compared worker by worker with the local model,
`get()` / `get(sum_results=True)`, drop, and mixes that must raise.

Each multi-pointer's pointers are tracked as ordinary entries of the machine's model (so
the store and metadata invariants cover them) but never enter the `pointers` bundle: only
the multi-pointer reaches them. Part of simsyft.testing (imported by tests only; imports
hypothesis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, consumes, invariant, multiple, precondition, rule

from ..errors import LocationMismatchError, ObjectNotFoundError
from ..multipointer import MultiPointerTensor, combine_pointers
from .compare import _check_meta, _pair_results, _reference, assert_same, assert_same_outcome, outcome
from .grammar import BINARY_KINDS, Op, ops
from .programs import _backward
from .strategies import partners, tensors


@dataclass
class _Multi:
    pointer: MultiPointerTensor
    keys: dict[str, int]  # worker id -> key of that worker's pointer in the machine's entries


def _two_or_more_workers(machine: Any) -> bool:
    return len(machine.workers) >= 2


class MultiPointerRules:
    """Mixed into PointerMachine. Rules: `send_multi` (`t.send(bob, alice)` or a list),
    `combine` (two pointers to different workers, `p1.combine(p2)` or `sy.combine_pointers`;
    two to one worker must raise), `op_multi` / `op2_multi` (an op on multi-pointers equals
    the op run on each worker's local tensor, in `.child`'s order, stopping at the first
    error as the remote side does; workers that disagree on a Python value must raise),
    `backward_multi` (`mpt.sum().backward()`, then every leaf's `.grad` on those workers),
    `get_multi` (the list, or the sum), `drop_multi`, and `mix_multi` (with a local tensor,
    a single pointer, or a multi-pointer on other workers: LocationMismatchError)."""

    pointers = Bundle("pointers")
    multis = Bundle("multis")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_entries: dict[int, _Multi] = {}
        self._next_multi = 0

    def add_multi(self, multi: MultiPointerTensor, keys: dict[str, int]) -> int:
        key = self._next_multi
        self._next_multi += 1
        self.multi_entries[key] = _Multi(multi, keys)
        return key

    # -- rules --------------------------------------------------------------------
    @precondition(_two_or_more_workers)
    @rule(target=multis, tensor=tensors(requires_grad=None, max_side=3), data=st.data())
    def send_multi(self, tensor: torch.Tensor, data: Any) -> int:
        chosen = data.draw(st.lists(st.sampled_from(self.workers), min_size=2, max_size=len(self.workers),
                                    unique_by=lambda w: w.id), label="workers")
        multi = tensor.send(chosen) if data.draw(st.booleans(), label="as a list") else tensor.send(*chosen)
        assert type(multi) is MultiPointerTensor, f"send to several workers gave {type(multi).__name__}"
        assert list(multi.child) == [w.id for w in chosen], f"{list(multi.child)} != {[w.id for w in chosen]}"
        keys = {}
        for worker in chosen:
            pointer, local = multi.child[worker.id], _reference(tensor)
            _check_meta(pointer, local, f"send to several: {worker.id}")
            assert pointer.location is worker
            keys[worker.id] = self.add(pointer, local, worker)
        return self.add_multi(multi, keys)

    @precondition(_two_or_more_workers)
    @rule(target=multis, a=consumes(pointers), b=consumes(pointers), method=st.booleans())
    def combine(self, a: int, b: int, method: bool) -> Any:
        ea, eb = self.entries[a], self.entries[b]
        pa, pb = ea.pointer, eb.pointer
        call = (lambda: pa.combine(pb)) if method else (lambda: combine_pointers(pb, pa))
        result = outcome(call)
        if ea.worker is eb.worker:
            # Both stay tracked (the store invariant still sees them); no rule reaches them again.
            assert result.error is ValueError and "two pointers to worker" in result.message, repr(result)
            return multiple()
        assert result.ok, repr(result)
        multi = result.value
        assert list(multi.child) == [eb.worker.id, ea.worker.id], "p1.combine(p2) puts p2 first, as PySyft"
        assert multi.child[ea.worker.id] is ea.pointer and multi.child[eb.worker.id] is eb.pointer
        return self.add_multi(multi, {eb.worker.id: b, ea.worker.id: a})

    @rule(target=multis, m=multis, data=st.data())
    def op_multi(self, m: int, data: Any) -> Any:
        first = self.entries[next(iter(self.multi_entries[m].keys.values()))].local
        return self.apply_multi(data.draw(ops(first), label="op"), m)

    @rule(target=multis, m=multis, data=st.data())
    def op2_multi(self, m: int, data: Any) -> Any:
        multi = self.multi_entries[m]
        first = self.entries[next(iter(multi.keys.values()))].local
        kind = data.draw(st.sampled_from(BINARY_KINDS), label="kind")
        t = data.draw(partners(first, kind), label="partner")
        workers = data.draw(st.permutations([self.entries[k].worker for k in multi.keys.values()]),
                            label="partner's order")  # pointers pair by worker, whatever the order
        partner = t.send(*workers)
        b = self.add_multi(partner, {w.id: self.add(partner.child[w.id], _reference(t), w) for w in workers})
        op = data.draw(ops(first, t, kinds=[kind]), label="op")
        result = self.apply_multi(op, m, b) if op.arity == 2 else self.apply_multi(op, m)
        return multiple(b, *result.values)

    @rule(m=consumes(multis), sum_results=st.booleans())
    def get_multi(self, m: int, sum_results: bool) -> None:
        multi = self.multi_entries.pop(m)
        entries = [self.entries.pop(k) for k in multi.keys.values()]
        if sum_results:
            l_out = outcome(lambda: sum(e.local for e in entries))
            r_out = outcome(lambda: multi.pointer.get(sum_results=True))
            assert_same_outcome(r_out, l_out, "get(sum_results=True)")
            if l_out.ok:
                assert_same(r_out.value, l_out.value, "get(sum_results=True)", grad=False)
        else:
            values = multi.pointer.get()
            assert type(values) is list and len(values) == len(entries)
            for value, e in zip(values, entries):
                assert_same(value, e.local, f"get()[{e.worker.id}]")
        self.fetched.extend(e.pointer for e in entries)
        for op in ("a.get()", "a + 1"):
            again = outcome(Op(op), multi.pointer)
            assert again.error is ObjectNotFoundError and "already fetched" in again.message, f"{op}: {again!r}"

    @rule(m=multis)
    def backward_multi(self, m: int) -> None:
        multi = self.multi_entries[m]
        l_out = None
        for name, key in multi.keys.items():  # worker by worker, stopping where the remote side stops
            l_out = outcome(_backward, self.entries[key].local)
            if not l_out.ok:
                break
        r_out = outcome(_backward, multi.pointer)
        assert_same_outcome(r_out, l_out, "mpt.sum().backward()")
        if not r_out.ok:
            return
        assert r_out.value.get() == [None] * len(multi.keys), "backward() must return pointers to nothing"
        workers = {self.entries[key].worker for key in multi.keys.values()}
        for key, e in self.entries.items():
            if e.worker in workers and e.local.is_leaf and e.local.requires_grad:
                grad = e.pointer.grad
                assert_same(grad.get() if grad is not None else None, e.local.grad, f"leaf {key} .grad")

    @rule(m=consumes(multis))
    def drop_multi(self, m: int) -> None:
        for key in self.multi_entries.pop(m).keys.values():
            del self.entries[key]  # with the multi-pointer, the last references: freed here

    @rule(m=multis, data=st.data())
    def mix_multi(self, m: int, data: Any) -> None:
        multi = self.multi_entries[m].pointer
        first = self.entries[next(iter(self.multi_entries[m].keys.values()))]
        other = data.draw(st.sampled_from(["local", "pointer", "multi"]), label="other")
        codes = ["a + b", "torch.add(a, b)", "a.mul_(b)", "torch.cat([a, b])", "torch.where(a > 0, a, b)"]
        if other == "local":
            b = first.local.detach().clone()
            codes += ["b + a", "torch.add(b, a)"]
        elif other == "pointer":
            b = first.pointer.copy()  # a single pointer to one of the workers
            codes += ["torch.add(b, a)"]
        else:
            b = combine_pointers(first.pointer.copy())  # a multi-pointer on one worker only
            codes += ["b + a"]
        op = data.draw(st.sampled_from(codes).map(Op), label="op")
        result = outcome(op, multi, b)
        assert result.error is LocationMismatchError, f"{op!r} with a {other} gave {result!r}"

    # -- the check ----------------------------------------------------------------
    def apply_multi(self, op: Op, *mkeys: int) -> Any:
        """Run `op` on multi-pointers `mkeys` and, worker by worker in the first one's order, on
        the model; check both did the same; track the new outputs. Returns `multiple(...)`."""
        multis = [self.multi_entries[k] for k in mkeys]
        names = list(multis[0].pointer.child)
        local: dict[str, Any] = {}
        failed = None
        for name in names:
            result = outcome(op, *(self.entries[mm.keys[name]].local for mm in multis))
            if not result.ok:
                failed = result  # the remote side stops at this worker too
                break
            local[name] = result.value
        remote = outcome(op, *(mm.pointer for mm in multis))
        if failed is not None:
            assert_same_outcome(remote, failed, repr(op))
            return multiple()
        if _disagree(list(local.values())):
            assert remote.error is ValueError and "differs between the workers" in remote.message, (
                f"{op!r}: the workers gave different values {local!r}, remote gave {remote!r}")
            return multiple()
        assert remote.ok, f"{op!r}: locally it gave {local!r}, remotely {remote!r}"
        made: dict[int, torch.Tensor] = {}
        for name in names:
            r_ops = [mm.pointer.child[name] for mm in multis]
            l_ops = [self.entries[mm.keys[name]].local for mm in multis]
            pairs = _pair_results(_on(remote.value, name), local[name], r_ops, l_ops, f"{op!r} on {name}")
            made.update((id(pointer), ref) for pointer, ref in pairs)
        new = []
        for out in _multis_in(remote.value):
            if any(out is mm.pointer for mm in multis):
                continue  # in place: the same multi-pointer, already tracked
            found = [id(p) in made for p in out.child.values()]
            if not any(found):
                continue  # pointers to nothing (a None result)
            assert all(found), f"{op!r}: a result mixes new pointers with operands' pointers"
            keys = {name: self.add(p, made[id(p)], p.location) for name, p in out.child.items()}
            new.append(self.add_multi(out, keys))
        return multiple(*new)

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def multis_hold_their_pointers(self) -> None:
        for key, multi in self.multi_entries.items():
            assert list(multi.pointer.child) == list(multi.keys), f"multi {key}: workers changed"
            for name, k in multi.keys.items():
                assert multi.pointer.child[name] is self.entries[k].pointer, f"multi {key}: pointer to {name} changed"


def _on(value: Any, name: str) -> Any:
    """What worker `name` gave, inside a gathered result."""
    if isinstance(value, MultiPointerTensor):
        return value.child[name]
    if isinstance(value, (tuple, list)):
        return type(value)([_on(v, name) for v in value])
    return value


def _multis_in(value: Any) -> list[MultiPointerTensor]:
    if isinstance(value, MultiPointerTensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [m for v in value for m in _multis_in(v)]
    return []


def _disagree(values: list) -> bool:
    """Whether the workers' local results cannot be gathered into one (multipointer._gather)."""
    first = values[0]
    if all(isinstance(v, torch.Tensor) for v in values):
        return False
    if isinstance(first, (tuple, list)) and all(type(v) is type(first) and len(v) == len(first) for v in values):
        return any(_disagree([v[i] for v in values]) for i in range(len(first)))
    for v in values:
        if isinstance(v, torch.Tensor) or type(v) is not type(first):
            return True
        both_nan = isinstance(v, float) and math.isnan(v) and math.isnan(first)
        if not (both_nan or v == first):
            return True
    return False
