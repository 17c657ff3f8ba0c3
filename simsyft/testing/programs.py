"""Programs: sequences of send / op / backward / get steps (`programs()`), run on pointers and
checked against the same steps on local tensors (`run_program`).

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from hypothesis import strategies as st

from ..handles import VirtualWorker
from ..pipelining import pipeline
from ..pointer import PointerTensor
from .compare import Outcome, _check_meta, _pair_results, _reference, assert_same, assert_same_outcome, outcome
from .grammar import BINARY_KINDS, KINDS, Op, UNARY_KINDS, ops
from .strategies import DTYPES, _rarely, partners, tensors



@dataclass(frozen=True)
class Send:
    """`r<n> = tensor.send(workers[worker])`."""

    tensor: torch.Tensor
    worker: int

    def __repr__(self) -> str:
        t = self.tensor
        layout = "" if t.is_contiguous() and t.storage_offset() == 0 else f", strides={t.stride()}, offset={t.storage_offset()}"
        grad = f", grad={t.grad!r}" if t.is_leaf and t.grad is not None else ""
        return f"Send({t!r}{layout}{grad}, worker={self.worker})"


@dataclass(frozen=True)
class Apply:
    """Run `op` on registers `operands`; tensor outputs that are new objects become registers."""

    op: Op
    operands: tuple
    no_grad: bool = False

    def __repr__(self) -> str:
        names = ", ".join(f"r{i}" for i in self.operands)
        return f"Apply({self.op!r}, ({names}){', no_grad=True' if self.no_grad else ''})"


@dataclass(frozen=True)
class Backward:
    """`r<n>.sum().backward()` (a scalar is summed to itself)."""

    operand: int

    def __repr__(self) -> str:
        return f"Backward(r{self.operand})"


@dataclass(frozen=True)
class Get:
    """`r<n>.get()`, compared with the local tensor; the register is spent afterwards."""

    operand: int

    def __repr__(self) -> str:
        return f"Get(r{self.operand})"


@dataclass(frozen=True)
class Program:
    """A generated sequence of steps over `workers` workers (see programs())."""

    workers: int
    steps: tuple = field(default=())

    def __repr__(self) -> str:
        lines = "".join(f"\n    {step!r}," for step in self.steps)
        return f"Program(workers={self.workers}, steps=[{lines}\n])"


def _backward(x: Any) -> Any:
    return x.sum().backward()


def _outputs(value: Any, operands: Sequence) -> list:
    """New tensor objects in a result (operands and non-tensors left out), in order."""
    if isinstance(value, torch.Tensor):
        return [] if any(value is o for o in operands) else [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v, operands)]
    return []


@st.composite
def programs(draw: Callable, *, max_steps: int = 8, max_workers: int = 4, dtypes: Sequence = DTYPES,
             kinds: Iterable[str] | None = None) -> Program:
    """Programs: tensors sent to 1-4 workers, then ops on them (one- and two-operand, with
    fresh partners or existing registers on the same worker, sometimes under no_grad),
    `backward()` and `get()`. Generation runs each step on local tensors to know the shapes
    the next steps can use; `run_program` runs the program on pointers and compares."""
    n_workers = draw(st.integers(1, max_workers))
    kinds = tuple(kinds) if kinds is not None else KINDS
    one = [k for k in kinds if k in UNARY_KINDS] or list(kinds)
    two = [k for k in kinds if k in BINARY_KINDS]
    regs: list = []  # local tensor, or None once fetched
    where: list[int] = []
    steps: list = []

    def send(t: torch.Tensor, worker: int) -> int:
        steps.append(Send(t, worker))
        regs.append(_reference(t))
        where.append(worker)
        return len(regs) - 1

    def tensor_strategy() -> st.SearchStrategy:
        return tensors(st.sampled_from(tuple(dtypes)), requires_grad=None)

    send(draw(tensor_strategy()), draw(st.integers(0, n_workers - 1)))
    for _ in range(draw(st.integers(0, max_steps))):
        live = [i for i, r in enumerate(regs) if r is not None]
        step = draw(st.sampled_from(["op", "op2", "send", "backward", "get"])) if live else "send"
        if step == "send":
            send(draw(tensor_strategy()), draw(st.integers(0, n_workers - 1)))
            continue
        i = draw(st.sampled_from(live))
        if step in ("backward", "get"):
            steps.append(Backward(i) if step == "backward" else Get(i))
            if step == "backward":
                outcome(_backward, regs[i])
            else:
                regs[i] = None
            continue
        a = regs[i]
        if step == "op2" and two:
            kind = draw(st.sampled_from(two))
            same = [j for j in live if where[j] == where[i]]
            if draw(st.booleans()):
                j = draw(st.sampled_from(same))
            else:
                j = send(draw(partners(a, kind)), where[i])
            op = draw(ops(a, regs[j], kinds=[kind]))
            operands = (i, j) if op.arity == 2 else (i,)
        else:
            op = draw(ops(a, kinds=one))
            operands = (i,)
        no_grad = _rarely(draw)
        steps.append(Apply(op, operands, no_grad))
        local = [regs[k] for k in operands]
        result = outcome(op, *local, no_grad=no_grad)
        if result.ok:
            for out in _outputs(result.value, local):
                regs.append(out)
                where.append(where[i])
    return Program(n_workers, tuple(steps))


def run_program(program: Program, workers: Sequence[VirtualWorker], *, pipelined: bool = False) -> int:
    """Run `program` on pointers to `workers` and on local tensors, checking after every step
    that both did the same thing (same exception, same outputs, aliasing, shapes, dtypes),
    then fetch every live register and compare it bitwise (values, NaN positions, dtype,
    shape, requires_grad, leaf gradients). Finally every store must be empty again: nothing
    was leaked. Returns the number of steps run.

    `pipelined=True` runs the remote side inside `sy.pipeline()`: each result's metadata is
    then the client's prediction and must still equal torch's. An op that fails on the worker
    may report its failure later (Note [Errors in pipelined mode]); so at the first step that
    raises locally while the pipelined op returned, the run stops, and the same exception must
    come out when the pipeline synchronises.
    """
    assert len(workers) >= program.workers, f"the program needs {program.workers} workers, got {len(workers)}"
    local: list = []
    remote: list = []
    deferred: tuple | None = None  # (what, local Outcome) of a failure the pipeline has yet to report
    at_sync: Outcome | None = None
    try:
        with pipeline() if pipelined else contextlib.nullcontext():
            for n, step in enumerate(program.steps):
                what = f"step {n} {step!r}"
                if isinstance(step, Send):
                    ptr = step.tensor.send(workers[step.worker])
                    ref = _reference(step.tensor)
                    _check_meta(ptr, ref, what)
                    local.append(ref)
                    remote.append(ptr)
                elif isinstance(step, Apply):
                    l_ops = [local[k] for k in step.operands]
                    r_ops = [remote[k] for k in step.operands]
                    l_out = outcome(step.op, *l_ops, no_grad=step.no_grad)
                    r_out = outcome(step.op, *r_ops, no_grad=step.no_grad)
                    if pipelined and r_out.ok and not l_out.ok:
                        deferred = (what, l_out)
                        break
                    assert_same_outcome(r_out, l_out, what)
                    if l_out.ok:
                        for ptr, ref in _pair_results(r_out.value, l_out.value, r_ops, l_ops, what):
                            local.append(ref)
                            remote.append(ptr)
                    del l_ops, r_ops, l_out, r_out
                elif isinstance(step, Backward):
                    l_out = outcome(_backward, local[step.operand])
                    r_out = outcome(_backward, remote[step.operand])
                    assert_same_outcome(r_out, l_out, what)
                    if r_out.ok:
                        assert isinstance(r_out.value, PointerTensor) and r_out.value.get() is None, (
                            f"{what}: backward() must return a pointer to nothing")
                elif isinstance(step, Get):
                    assert_same(remote[step.operand].get(), local[step.operand], what)
                    local[step.operand] = remote[step.operand] = None
    except Exception as exc:  # noqa: BLE001 - only the pipeline's synchronisation on exit raises here
        if not pipelined or isinstance(exc, AssertionError):
            raise
        at_sync = Outcome(error=type(exc), message=str(exc))
    if pipelined and (deferred is not None or at_sync is not None):
        remote.clear()
        for worker in workers:  # collect what other workers still have to report
            outcome(worker.connection.sync)
        assert deferred is not None, f"the pipeline raised {at_sync!r} when it synchronised, but torch raised nothing"
        what, l_out = deferred
        assert at_sync is not None, (
            f"{what}: locally raised {l_out.error.__name__}: {l_out.message}, but the pipelined op never raised")
        assert_same_outcome(at_sync, l_out, f"{what} (raised when the pipeline synchronised)")
        return len(program.steps)
    for n, (ptr, ref) in enumerate(zip(remote, local)):
        if ptr is not None:
            assert_same(ptr.get(), ref, f"register r{n} at the end")
    del remote
    for worker in workers:
        _assert_empty(worker, "after every register was fetched")
    return len(program.steps)


def _assert_empty(worker: VirtualWorker, when: str) -> None:
    left = worker._objects
    if left:
        gc.collect()  # a pointer in a reference cycle is freed only by the collector
        left = worker._objects
    assert not left, f"worker {worker.id!r} still holds {len(left)} objects {when}: {left!r}"
