"""Remote equals local: generated programs run on pointers give exactly what torch gives.

Values bitwise (NaN positions and payloads, -0.0), dtype, shape, requires_grad, the same
exception type and message when local raises, the same aliasing (in-place ops return the
operand), the same gradients after backward(). Most examples run on in-process workers
(the same protocol, no processes); a share runs on real worker processes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simsyft.testing import (
    FLOAT_DTYPES,
    KINDS,
    Apply,
    Backward,
    Op,
    Program,
    Send,
    assert_same,
    assert_same_outcome,
    ops,
    outcome,
    partners,
    programs,
    run_program,
    tensors,
)

THOROUGH = settings.default.max_examples >= 1000  # the `thorough` profile (tests/property/conftest.py)


def examples(ci: int, thorough: int) -> int:
    return thorough if THOROUGH else ci


@settings(max_examples=examples(1_000, 10_000))
@given(program=programs())
def test_programs_inprocess(simsyft_inprocess, counts, program):
    counts["programs (in-process)"] += 1
    counts["steps (in-process)"] += run_program(program, simsyft_inprocess.world(program.workers))


@settings(max_examples=examples(300, 1_000))
@given(program=programs(max_steps=6))
def test_programs_processes(simsyft_sim, counts, program):
    counts["programs (processes)"] += 1
    counts["steps (processes)"] += run_program(program, simsyft_sim.world(program.workers))


@settings(max_examples=examples(300, 2_000))
@given(program=programs())
def test_programs_pipelined_inprocess(simsyft_inprocess, counts, program):
    """Inside sy.pipeline() results carry predicted metadata; it must still be torch's."""
    counts["pipelined programs (in-process)"] += 1
    run_program(program, simsyft_inprocess.world(program.workers), pipelined=True)


@settings(max_examples=examples(100, 500))
@given(program=programs(max_steps=6))
def test_programs_pipelined_processes(simsyft_sim, counts, program):
    counts["pipelined programs (processes)"] += 1
    run_program(program, simsyft_sim.world(program.workers), pipelined=True)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=examples(50, 300))
@given(data=st.data())
def test_every_kind_of_op(simsyft_inprocess, counts, kind, data):
    """Each op kind on its own, so every family is covered in every run."""
    (bob,) = simsyft_inprocess.world(1)
    a = data.draw(tensors(requires_grad=None), label="a")
    steps = [Send(a, 0)]
    if kind in ("binary", "matmul", "join"):
        b = data.draw(partners(a, kind), label="b")
        steps.append(Send(b, 0))
        op = data.draw(ops(a, b, kinds=[kind]), label="op")
    else:
        op = data.draw(ops(a, kinds=[kind]), label="op")
    steps.append(Apply(op, (0, 1) if op.arity == 2 else (0,)))
    counts["single-op programs (in-process)"] += 1
    run_program(Program(1, tuple(steps)), [bob])


GRAD_KINDS = ["unary", "scalar", "reduction", "index", "shape", "matmul", "join", "binary"]


@settings(max_examples=examples(300, 2_000))
@given(data=st.data())
def test_gradients_equal_local(simsyft_inprocess, counts, data):
    """A chain of differentiable ops on a leaf, then backward(): the leaf's grad (fetched
    with the leaf) is bitwise the local one."""
    (bob,) = simsyft_inprocess.world(1)
    x = data.draw(tensors(st.sampled_from(FLOAT_DTYPES), requires_grad=True, grad=None), label="x")
    steps = [Send(x, 0)]
    local = x.detach().contiguous().requires_grad_()
    last = 0
    for _ in range(data.draw(st.integers(1, 4), label="ops")):
        kind = data.draw(st.sampled_from(GRAD_KINDS), label="kind")
        if kind in ("binary", "matmul", "join"):
            partner = data.draw(partners(local, kind), label="partner")
            steps.append(Send(partner, 0))
            op = data.draw(ops(local, partner, kinds=[kind]), label="op")
            operands = (last, len(steps) - 1) if op.arity == 2 else (last,)
            args = (local, partner.detach().contiguous().requires_grad_(partner.requires_grad))[:len(operands)]
        else:
            op = data.draw(ops(local, kinds=[kind]), label="op")
            operands, args = (last,), (local,)
        steps.append(Apply(op, operands))
        result = outcome(op, *args)
        if not result.ok or not isinstance(result.value, torch.Tensor) or result.value is local:
            break
        local = result.value
        last = _register_count(steps) - 1
    steps.append(Backward(last))
    counts["gradient programs (in-process)"] += 1
    run_program(Program(1, tuple(steps)), [bob])


def _register_count(steps) -> int:
    """Registers so far, by running the steps locally (as run_program numbers them)."""
    program = Program(1, tuple(steps))
    regs = []
    for step in program.steps:
        if isinstance(step, Send):
            regs.append(step.tensor.detach().contiguous().requires_grad_(step.tensor.requires_grad))
        else:
            value = outcome(step.op, *[regs[k] for k in step.operands]).value
            regs += _new_tensors(value, [regs[k] for k in step.operands])
    return len(regs)


def _new_tensors(value, operands):
    if isinstance(value, torch.Tensor):
        return [] if any(value is o for o in operands) else [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _new_tensors(v, operands)]
    return []


# -- the comparison helpers themselves must be able to fail -----------------------------

def test_assert_same_is_bitwise():
    assert_same(torch.tensor([float("nan"), -0.0]), torch.tensor([float("nan"), -0.0]))
    for remote, local in [
        (torch.tensor([0.0]), torch.tensor([-0.0])),                       # sign of zero
        (torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64)),   # dtype
        (torch.tensor([1.0]), torch.tensor([[1.0]])),                      # shape
        (torch.tensor([1.0]), torch.tensor([1.0], requires_grad=True)),    # requires_grad
        (torch.tensor([1.0 + 2**-23]), torch.tensor([1.0])),               # one ulp
    ]:
        with pytest.raises(AssertionError):
            assert_same(remote, local)
    nan_payload = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    with pytest.raises(AssertionError, match="differ bitwise"):
        assert_same(nan_payload, torch.tensor([float("nan")]))
    leaf = torch.tensor([1.0], requires_grad=True)
    leaf.grad = torch.tensor([2.0])
    other = torch.tensor([1.0], requires_grad=True)
    other.grad = torch.tensor([3.0])
    with pytest.raises(AssertionError, match="grad"):
        assert_same(other, leaf)


def test_assert_same_outcome_compares_type_and_message():
    ok = outcome(lambda: 1)
    boom = outcome(lambda: torch.ones(2) + torch.ones(3))
    assert_same_outcome(boom, boom)
    with pytest.raises(AssertionError):
        assert_same_outcome(ok, boom)
    with pytest.raises(AssertionError):
        assert_same_outcome(boom, ok)
    with pytest.raises(AssertionError, match="different message"):
        assert_same_outcome(outcome(lambda: torch.ones(2) + torch.ones(4)), boom)
    with pytest.raises(AssertionError):
        assert_same_outcome(outcome(lambda: [][1]), outcome(lambda: {}[1]))


def test_op_runs_code_on_tensors_and_reports_aliasing(simsyft_inprocess):
    (bob,) = simsyft_inprocess.world(1)
    assert Op("a + b").arity == 2 and Op("a.sum(dim=0)").arity == 1 and Op("a += 1").arity == 1
    t = torch.ones(2)
    assert Op("a.add_(1)")(t) is t and Op("a += 1")(t) is t
    p = torch.ones(2).send(bob)
    assert Op("a.add_(1)")(p) is p
    del p
    run_program(Program(1, (Send(torch.ones(2), 0), Apply(Op("a.mul_(3)"), (0,)), Apply(Op("a[0] = 7"), (0,)))), [bob])
