"""Test support: an in-process worker, and the property-testing kit users import.

A package, one concern per module (imports flow down this list):

- `inprocess`: in-process workers;
- `compare`: remote against local;
- `strategies`: tensors, scalars, shapes;
- `grammar`: `Op` and `ops()`;
- `worlds`: `World`, `worlds()`, `WorkerPool`;
- `programs`: `programs()`, `run_program`;
- `multi`: PointerMachine's multi-pointer rules;
- `machine`: `PointerMachine`.

What it offers:

- `in_process_worker("bob")`: a VirtualWorker handle on a worker of the
  in-process backend (backends/inprocess.py). Every message is still encoded and decoded
  (tensors still cross as descriptors and segments), but no process or socket
  exists, so pointer semantics can be tested in microseconds per op.
- hypothesis strategies: `tensors()`, `scalars()`, `partners()`, `ops()`,
  `worlds()`, `programs()`;
- `Op`, one torch call written as code (`Op("torch.add(a, b, alpha=2)")`) that
  runs the same way on tensors and on pointers;
- `WorkerPool`, a fixed set of workers (in-process, or a simulation's
  processes) reused across examples, with stores emptied for each one;
- `PointerMachine`, a hypothesis `RuleBasedStateMachine` over send / op / get /
  clone / drop / backward and invalid steps, checked against a local model;
- comparisons: `assert_same` (bitwise), `outcome`, `assert_same_outcome`,
  `run_program`.

docs/testing.md shows how to use them and how to subclass PointerMachine.
Imported by tests only; nothing in simsyft imports it. It imports hypothesis
at top level (the `test` extra). Workers are reached only through public handles
and the in-process backend; `WorkerPool.segments()` reads the simulations'
shared-memory namespaces to prove nothing leaked.
"""

from __future__ import annotations

from .inprocess import in_process_worker
from .compare import Outcome, assert_same, assert_same_outcome, outcome
from .strategies import DTYPES, FLOAT_DTYPES, INT_DTYPES, Meta, partners, scalars, shapes, tensors
from .grammar import BINARY_KINDS, KINDS, Op, UNARY_KINDS, ops
from .worlds import WORKER_NAMES, WorkerPool, World, worlds
from .programs import Apply, Backward, Get, Program, Send, programs, run_program
from .machine import PointerMachine

__all__ = [
    "BINARY_KINDS",
    "DTYPES",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "KINDS",
    "UNARY_KINDS",
    "WORKER_NAMES",
    "Apply",
    "Backward",
    "Get",
    "Meta",
    "Op",
    "Outcome",
    "PointerMachine",
    "Program",
    "Send",
    "World",
    "WorkerPool",
    "assert_same",
    "assert_same_outcome",
    "in_process_worker",
    "ops",
    "outcome",
    "partners",
    "programs",
    "run_program",
    "scalars",
    "shapes",
    "tensors",
    "worlds",
]
