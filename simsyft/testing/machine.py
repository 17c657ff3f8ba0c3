"""`PointerMachine`, a hypothesis RuleBasedStateMachine over send / op / get / clone / drop /
backward, optimizer steps, chains and invalid steps, checked against a local model (docs/testing.md shows how to
subclass it).

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, precondition, rule

from ..errors import LocationMismatchError, ObjectNotFoundError, RemoteValueError
from ..handles import VirtualWorker
from ..pointer import PointerTensor
from .compare import _check_meta, _pair_results, _reference, assert_same, assert_same_outcome, outcome
from .grammar import BINARY_KINDS, Op, ops
from .multi import MultiPointerRules
from .programs import _assert_empty, _backward
from .strategies import partners, tensors
from .worlds import WorkerPool, World, worlds



@dataclass
class _Entry:
    pointer: PointerTensor
    local: torch.Tensor
    worker: VirtualWorker


class PointerMachine(MultiPointerRules, RuleBasedStateMachine):
    """Drives real pointers against a model, checking both after every step.

    The model is, for each live pointer, the local tensor it must equal (ops run on it
    with plain torch) and the worker holding it; so each worker must hold exactly the
    objects of its live pointers. Rules: `send`, `op` (one operand: unary, scalar,
    reduction, index, shape, cast, in-place ...), `op2` (two operands on one worker,
    broadcasting, matmul, join), `copy` (`ptr.clone()`), `get`, `drop` (the last
    reference goes: GC frees it), `backward` (on `ptr.sum()`; then every leaf's `.grad`
    must match), `train` (a sent model, optimizer steps with or without momentum, then get,
    move or drop: weights equal plain torch's, nothing left behind), `chain` (a pointer
    sent on: its id kept, an op through it, get / remote_get / drop of the head), and
    invalid steps that must raise the right error and change nothing:
    `mix_workers` (LocationMismatchError), `mix_local` (pointer with a local tensor),
    `use_after_get` (ObjectNotFoundError for `get()` twice and for ops), `value_of`
    (RemoteValueError for `item()`/`tolist()`/`bool()`). Invariants after every step:
    each worker's `_objects` has the model's keys and bitwise-equal values (nothing
    leaked, nothing lost), every live pointer's shape/dtype/requires_grad match.
    Multi-pointers (`x.send(bob, alice)`, `combine`) have their own rules (testing/multi.py).
    `teardown` drops everything and checks that the stores are empty.

    Run it (in-process workers by default, or a pool of processes):

    >>> PointerMachine.run()                                    # in-process
    >>> PointerMachine.run(simsyft_sim, settings(max_examples=20))   # processes

    Subclass it to add rules (see docs/testing.md); `self.apply(op, key, ...)` runs an Op
    on pointers and on the model, compares them and returns the new keys.
    """

    pointers = Bundle("pointers")

    def __init__(self, pool: WorkerPool | None = None) -> None:
        super().__init__()
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else WorkerPool.in_process()
        self.workers: list[VirtualWorker] = []
        self.entries: dict[int, _Entry] = {}
        self.fetched: list[PointerTensor] = []
        self._next_key = 0

    @classmethod
    def run(cls, pool: WorkerPool | None = None, settings: Any = None) -> None:
        """Run the machine as a test over `pool` (default: fresh in-process workers)."""
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(lambda: cls(pool), settings=settings)

    # -- helpers for rules (subclasses use these) ---------------------------------
    def entry(self, key: int) -> _Entry:
        return self.entries[key]

    def add(self, pointer: PointerTensor, local: torch.Tensor, worker: VirtualWorker) -> int:
        """Track a new pointer and its model tensor; returns its key for the bundle."""
        key = self._next_key
        self._next_key += 1
        self.entries[key] = _Entry(pointer, local, worker)
        return key

    def apply(self, op: Op, *keys: int, no_grad: bool = False) -> Any:
        """Run `op` on the pointers `keys` and on their model tensors; check that both did
        the same; track new outputs. Returns `multiple(*new_keys)` for a target bundle."""
        entries = [self.entries[k] for k in keys]
        r_ops = [e.pointer for e in entries]
        l_ops = [e.local for e in entries]
        l_out = outcome(op, *l_ops, no_grad=no_grad)
        r_out = outcome(op, *r_ops, no_grad=no_grad)
        assert_same_outcome(r_out, l_out, repr(op))
        if not l_out.ok:
            return multiple()
        pairs = _pair_results(r_out.value, l_out.value, r_ops, l_ops, repr(op))
        return multiple(*(self.add(ptr, ref, entries[0].worker) for ptr, ref in pairs))

    def keys_on(self, worker: VirtualWorker) -> list[int]:
        return [k for k, e in self.entries.items() if e.worker is worker]

    # -- rules --------------------------------------------------------------------
    @initialize(target=pointers, world=worlds(), tensor=tensors(requires_grad=None, max_side=3))
    def open_world(self, world: World, tensor: torch.Tensor) -> int:
        """Take the world's workers (stores emptied) and send a first tensor, so that the
        rules needing a pointer can run from the first step."""
        self.workers = self.pool.world(world)
        return self.send(tensor, 0)

    @rule(target=pointers, tensor=tensors(requires_grad=None, max_side=3), where=st.integers(0, 3))
    def send(self, tensor: torch.Tensor, where: int) -> int:
        worker = self.workers[where % len(self.workers)]
        pointer = tensor.send(worker)
        local = _reference(tensor)
        _check_meta(pointer, local, "send")
        assert pointer.location is worker
        return self.add(pointer, local, worker)

    @rule(target=pointers, a=pointers, data=st.data())
    def op(self, a: int, data: Any) -> Any:
        op = data.draw(ops(self.entries[a].local), label="op")
        no_grad = data.draw(st.integers(0, 9), label="no_grad") == 9
        return self.apply(op, a, no_grad=no_grad)

    @rule(target=pointers, a=pointers, data=st.data())
    def op2(self, a: int, data: Any) -> Any:
        entry = self.entries[a]
        kind = data.draw(st.sampled_from(BINARY_KINDS), label="kind")
        same = self.keys_on(entry.worker)
        if data.draw(st.booleans(), label="fresh partner"):
            t = data.draw(partners(entry.local, kind), label="partner")
            b = self.add(t.send(entry.worker), _reference(t), entry.worker)
            new = [b]
        else:
            b = data.draw(st.sampled_from(same), label="b")
            new = []
        op = data.draw(ops(entry.local, self.entries[b].local, kinds=[kind]), label="op")
        result = self.apply(op, a, b) if op.arity == 2 else self.apply(op, a)
        return multiple(*new, *result.values)

    @rule(target=pointers, a=pointers)
    def copy(self, a: int) -> Any:
        return self.apply(Op("a.clone()", "copy"), a)

    @rule(a=consumes(pointers))
    def get(self, a: int) -> None:
        entry = self.entries.pop(a)
        assert_same(entry.pointer.get(), entry.local, "get()")
        self.fetched.append(entry.pointer)

    @rule(a=consumes(pointers))
    def drop(self, a: int) -> None:
        del self.entries[a]  # the only reference: the pointer is freed here

    @rule(a=pointers)
    def backward(self, a: int) -> None:
        entry = self.entries[a]
        l_out = outcome(_backward, entry.local)
        r_out = outcome(_backward, entry.pointer)
        assert_same_outcome(r_out, l_out, "ptr.sum().backward()")
        if not r_out.ok:
            return
        assert r_out.value.get() is None, "backward() must return a pointer to nothing"
        for key in self.keys_on(entry.worker):
            e = self.entries[key]
            if e.local.is_leaf and e.local.requires_grad:
                grad = e.pointer.grad
                assert_same(grad.get() if grad is not None else None, e.local.grad, f"leaf {key} .grad")

    @rule(data=st.data(), steps=st.integers(1, 4), momentum=st.sampled_from([0.0, 0.9]),
          end=st.sampled_from(["get", "move", "drop"]))
    def train(self, data: Any, steps: int, momentum: float, end: str) -> None:
        """A model sent to a worker, trained `steps` optimizer steps, then fetched, moved or dropped;
        its weights must equal the same training in plain torch, and nothing may stay behind
        (the invariants check the stores after the rule)."""
        worker = data.draw(st.sampled_from(self.workers), label="worker")
        features = data.draw(st.integers(1, 3), label="features")
        x = torch.randn(4, features)
        y = torch.randn(4, 1)
        local = torch.nn.Linear(features, 1)
        remote = local.copy().send(worker)
        l_opt = torch.optim.SGD(local.parameters(), lr=0.1, momentum=momentum)
        r_opt = torch.optim.SGD(remote.parameters(), lr=0.1, momentum=momentum)
        x_ptr, y_ptr = x.send(worker), y.send(worker)
        for _ in range(steps):
            for model, opt, xs, ys in ((local, l_opt, x, y), (remote, r_opt, x_ptr, y_ptr)):
                opt.zero_grad()
                loss = ((model(xs) - ys) ** 2).sum()
                loss.backward()
                opt.step()
        if end == "move" and len(self.workers) >= 2:
            remote.move(next(w for w in self.workers if w is not worker))
        if end != "drop":
            remote.get()
            for name, value in local.state_dict().items():
                assert torch.allclose(remote.state_dict()[name], value, atol=1e-6), f"trained {name} differs"
        del remote, r_opt, loss, x_ptr, y_ptr

    @precondition(lambda self: len(self.workers) >= 2)
    @rule(tensor=tensors(max_side=3), data=st.data(), end=st.sampled_from(["get", "drop", "remote_get"]))
    def chain(self, tensor: torch.Tensor, data: Any, end: str) -> None:
        """A pointer sent on to a second worker (a chain): it keeps its id there, an op runs
        through it, and fetching or dropping the head leaves both stores as the model says."""
        first, second = data.draw(st.permutations(self.workers), label="workers")[:2]
        inner = tensor.send(first)
        head = inner.send(second)
        assert head.id_at_location == inner.id, "a pointer sent on is stored under its own id"
        twice = head + head
        assert_same(twice.get().get(), _reference(tensor) + _reference(tensor), "op through a chain")
        if end == "get":
            assert_same(head.get().get(), _reference(tensor), "chain get().get()")
        elif end == "remote_get":
            head.remote_get()
            assert_same(head.get(), _reference(tensor), "remote_get() then get()")
        del inner, head, twice  # a dropped head frees the whole chain at once

    @precondition(lambda self: len(self.workers) >= 2)
    @rule(a=pointers, data=st.data())
    def mix_workers(self, a: int, data: Any) -> None:
        entry = self.entries[a]
        others = [k for k, e in self.entries.items() if e.worker is not entry.worker]
        if not others:
            return
        b = self.entries[data.draw(st.sampled_from(others), label="b")]
        op = data.draw(st.sampled_from(["a + b", "torch.add(a, b)", "a.mul_(b)", "torch.cat([a, b])", "a @ b",
                                        "torch.where(a > 0, a, b)", "a[b > 0]"]).map(Op), label="op")
        result = outcome(op, entry.pointer, b.pointer)
        assert result.error is LocationMismatchError, f"{op!r} across workers gave {result!r}"
        assert f"{entry.worker.id!r}" in result.message and f"{b.worker.id!r}" in result.message, result.message

    @rule(a=pointers, tensor=tensors(), data=st.data())
    def mix_local(self, a: int, tensor: torch.Tensor, data: Any) -> None:
        op = data.draw(st.sampled_from(["a + b", "b + a", "torch.add(b, a)", "a.add_(b)", "torch.stack([a, b])",
                                        "a[0] = b"]).map(Op), label="op")
        result = outcome(op, self.entries[a].pointer, tensor)
        assert result.error is LocationMismatchError, f"{op!r} with a local tensor gave {result!r}"

    @precondition(lambda self: bool(self.fetched))
    @rule(data=st.data())
    def use_after_get(self, data: Any) -> None:
        pointer = data.draw(st.sampled_from(self.fetched), label="fetched pointer")
        op = data.draw(st.sampled_from(["a.get()", "a + 1", "a.sum()", "torch.neg(a)", "a.shape", "a.add_(1)"]).map(Op),
                       label="op")
        result = outcome(op, pointer)
        assert result.error is ObjectNotFoundError, f"{op!r} on a fetched pointer gave {result!r}"
        assert "already fetched" in result.message, result.message

    @rule(a=pointers, data=st.data())
    def value_of(self, a: int, data: Any) -> None:
        op = data.draw(st.sampled_from(["a.item()", "a.tolist()", "a.numpy()", "bool(a)", "float(a)", "int(a)"]).map(Op),
                       label="op")
        result = outcome(op, self.entries[a].pointer)
        assert result.error is RemoteValueError, f"{op!r} gave {result!r}"

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def stores_match_model(self) -> None:
        for worker in self.workers:
            objects = worker._objects
            expected = {self.entries[k].pointer.id_at_location: k for k in self.keys_on(worker)}
            if set(objects) - set(expected):
                gc.collect()  # a temporary in a reference cycle is freed only by the collector
                objects = worker._objects
            leaked = set(objects) - set(expected)
            lost = set(expected) - set(objects)
            assert not leaked, f"worker {worker.id!r} holds objects no live pointer owns (leaked): {sorted(leaked)}"
            assert not lost, f"worker {worker.id!r} lost the objects of live pointers {[expected[i] for i in lost]}"
            for object_id, key in expected.items():
                assert_same(objects[object_id], self.entries[key].local, f"{worker.id}._objects[pointer {key}]",
                            grad=False)

    @invariant()
    def pointers_match_model(self) -> None:
        for key, e in self.entries.items():
            _check_meta(e.pointer, e.local, f"pointer {key}")
            assert e.pointer.location is e.worker

    def teardown(self) -> None:
        failing = sys.exc_info()[1] is not None  # teardown also runs after a failed step: do not mask it
        self.multi_entries.clear()
        self.entries.clear()
        self.fetched.clear()
        try:
            if not failing:
                for worker in self.workers:
                    _assert_empty(worker, "after every pointer was dropped")
                leftover = self.pool.segments()
                assert not leftover, f"shared-memory segments left behind: {leftover}"
        finally:
            self.pool.reset()
            if self._owns_pool:
                self.pool.close()
