"""Test support: an in-process worker, and the property-testing kit users import.

Owns:

- `in_process_worker("bob")`: a VirtualWorker handle whose connection runs a
  WorkerCore in this process. Every message is still encoded and decoded
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
at top level (the `test` extra). Everything above the user layer is reached
through public handles, except `WorkerPool.segments()`, which reads the
connections' shared-memory namespaces to prove nothing leaked.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, precondition, rule

from .backends.inprocess import InProcessBackend
from .config import WorkerConfig
from .errors import LocationMismatchError, ObjectNotFoundError, RemoteValueError
from .handles import VirtualWorker
from .hook import TorchHook
from .pipelining import pipeline
from .pointer import PointerTensor
from .simulation import Simulation
from .wire import segments as shm_pool

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


# -- the in-process worker ------------------------------------------------------

_INPROCESS: list = []  # the shared in-process simulation, while one is open


def _in_process_simulation() -> Simulation:
    """The in-process workers open at one time form one simulation: one segment namespace (a
    worker maps only its own simulation's segments, and move() goes between them)."""
    if not _INPROCESS or _INPROCESS[0].closed:
        _INPROCESS[:] = [Simulation(InProcessBackend("inprocess"))]
    return _INPROCESS[0]


def in_process_worker(name: str = "bob") -> VirtualWorker:
    """A fresh worker `name` in this process (backends/inprocess.py: no process, same protocol)."""
    sim = _in_process_simulation()
    sim.stop(name)  # a fresh, empty worker each time
    sim.backend.start(WorkerConfig(name))
    return sim.handle(name)


# -- comparing remote with local -------------------------------------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    # A fresh buffer: a one-element tensor with stride 0 counts as contiguous but cannot be viewed as bytes.
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1))
    return flat.view(torch.uint8)


def assert_same(remote: Any, local: Any, what: str = "result", *, grad: bool = True) -> None:
    """`remote` (a fetched tensor) is exactly `local`: dtype, shape, every bit of every
    element (NaN payloads and -0.0 included), `requires_grad`, and, with `grad`, the
    `.grad` of a leaf (or of a tensor that retains its grad), compared the same way.

    >>> assert_same(torch.tensor([1.0, -0.0]).send(bob).get(), torch.tensor([1.0, -0.0]))
    """
    if local is None:
        assert remote is None, f"{what}: expected None, got {remote!r}"
        return
    assert isinstance(remote, torch.Tensor), f"{what}: expected a tensor, got {type(remote).__name__}: {remote!r}"
    assert remote.dtype == local.dtype, f"{what}: dtype {remote.dtype} != local {local.dtype}"
    assert remote.shape == local.shape, f"{what}: shape {tuple(remote.shape)} != local {tuple(local.shape)}"
    if not torch.equal(_bits(remote), _bits(local)):
        diff = (_bits(remote).view(-1, local.element_size()) != _bits(local).view(-1, local.element_size())).any(1)
        first = int(diff.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {local.numel()} elements differ bitwise, first at flat index {first}: "
            f"remote {remote.detach().reshape(-1)[first].item()!r} vs local {local.detach().reshape(-1)[first].item()!r}\n"
            f"remote: {remote!r}\nlocal:  {local!r}"
        )
    assert remote.requires_grad == local.requires_grad, (
        f"{what}: requires_grad {remote.requires_grad} != local {local.requires_grad}")
    if grad and (local.is_leaf or local.retains_grad):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_same(remote.grad, local.grad, f"{what}.grad", grad=False)


@dataclass
class Outcome:
    """What running something gave: a value, or an exception's type and message.

    The exception object itself is not kept: its traceback would keep the
    frames' pointers alive, and a pointer that stays alive is never freed.
    """

    value: Any = None
    error: type | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        if self.ok:
            return f"Outcome(value={self.value!r})"
        return f"Outcome(error={self.error.__name__}, message={self.message!r})"


def outcome(fn: Callable, *args: Any, no_grad: bool = False) -> Outcome:
    """Run `fn(*args)` and return its Outcome; warnings are silenced so that `-W error`
    cannot make the local side raise where a worker process only warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                value = fn(*args)
        except Exception as exc:  # noqa: BLE001 - every exception is a result to compare
            return Outcome(error=type(exc), message=str(exc))
    return Outcome(value)


def assert_same_outcome(remote: Outcome, local: Outcome, what: str = "op") -> None:
    """Both raised the same exception type with the same message (the remote one may add
    " (raised on worker 'bob')"), or neither raised."""
    if local.ok and remote.ok:
        return
    if local.ok:
        raise AssertionError(f"{what}: remote raised {remote.error.__name__}: {remote.message}\n"
                             f"but locally it gave {local.value!r}")
    if remote.ok:
        raise AssertionError(f"{what}: locally raised {local.error.__name__}: {local.message}\n"
                             f"but remotely it gave {remote.value!r}")
    assert remote.error is local.error, (
        f"{what}: remote raised {remote.error.__name__}: {remote.message}\n"
        f"locally {local.error.__name__}: {local.message}")
    assert remote.message.startswith(local.message), (
        f"{what}: same type {local.error.__name__}, different message:\n"
        f"remote: {remote.message}\nlocal:  {local.message}")


def _same_value(remote: Any, local: Any) -> bool:
    if isinstance(local, float) and isinstance(remote, float):
        return math.copysign(1.0, remote) == math.copysign(1.0, local) and (
            remote == local or (math.isnan(remote) and math.isnan(local)))
    return type(remote) is type(local) and remote == local


def _pair_results(remote: Any, local: Any, r_ops: Sequence, l_ops: Sequence, what: str) -> list[tuple]:
    """Match a remote result with the local one, structure by structure.

    Returns the (pointer, tensor) pairs that are new objects. An output that is
    one of the operands locally (in-place ops, `out=`, `t.to(t.dtype)`) must be
    that same operand's pointer remotely, and the other way round.
    """
    if isinstance(local, torch.Tensor):
        assert isinstance(remote, PointerTensor), f"{what}: expected a pointer, got {type(remote).__name__}: {remote!r}"
        local_alias = [i for i, t in enumerate(l_ops) if t is local]
        remote_alias = [i for i, p in enumerate(r_ops) if p is remote]
        assert bool(local_alias) == bool(remote_alias), (
            f"{what}: locally the result {'is' if local_alias else 'is not'} operand {local_alias}, "
            f"remotely it {'is' if remote_alias else 'is not'} {remote_alias}")
        _check_meta(remote, local, what)
        return [] if local_alias else [(remote, local)]
    if local is None:
        if isinstance(remote, PointerTensor):  # PySyft returns a pointer to nothing for None
            assert remote.get() is None, f"{what}: a void pointer's get() must be None"
            return []
        assert remote is None, f"{what}: expected None, got {remote!r}"
        return []
    if isinstance(local, (tuple, list)):
        assert type(remote) is type(local), f"{what}: container {type(remote).__name__} != local {type(local).__name__}"
        assert len(remote) == len(local), f"{what}: {len(remote)} outputs != local {len(local)}"
        pairs = []
        for i, (r, l) in enumerate(zip(remote, local)):
            pairs += _pair_results(r, l, r_ops, l_ops, f"{what}[{i}]")
        return pairs
    assert _same_value(remote, local), f"{what}: value {remote!r} != local {local!r}"
    return []


def _check_meta(pointer: PointerTensor, local: torch.Tensor, what: str) -> None:
    # Cached from the Ack: no round trip.
    assert pointer.shape == local.shape, f"{what}: pointer shape {tuple(pointer.shape)} != local {tuple(local.shape)}"
    assert pointer.dtype == local.dtype, f"{what}: pointer dtype {pointer.dtype} != local {local.dtype}"
    assert pointer.requires_grad == local.requires_grad, (
        f"{what}: pointer requires_grad {pointer.requires_grad} != local {local.requires_grad}")


def _reference(t: torch.Tensor) -> torch.Tensor:
    """The local twin of what `t.send(worker)` leaves on the worker: a contiguous leaf copy
    with the same requires_grad and .grad (data crosses contiguous; see simsyft/wire/tensors.py)."""
    ref = t.detach().clone(memory_format=torch.contiguous_format)
    if t.requires_grad:
        ref.requires_grad_(True)
    if t.is_leaf and t.grad is not None:
        ref.grad = t.grad.detach().clone(memory_format=torch.contiguous_format)
    return ref


# -- strategies: tensors ---------------------------------------------------------------

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
DTYPES = FLOAT_DTYPES + INT_DTYPES + (torch.bool,)

_SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, math.nan, math.inf, -math.inf, 2.0, -3.0, 1e-40, 65504.0, 1e30)
# Above this many elements values come from a seeded generator as random bit patterns
# (every NaN payload, subnormal and infinity can occur), not one hypothesis draw per element.
_BULK_ELEMENTS = 512


def _rarely(draw: Callable) -> bool:
    """True about one time in twenty; shrinks towards False."""
    return draw(st.integers(0, 19)) == 19


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 4) -> st.SearchStrategy[tuple]:
    """Tensor shapes: 0-d (`()`), empty (a 0 side) and small ones; shrinks towards `()`."""
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def _elements(dtype: torch.dtype) -> st.SearchStrategy:
    if dtype is torch.bool:
        return st.booleans()
    if dtype.is_floating_point:
        width = {torch.float16: 16, torch.float64: 64}.get(dtype, 32)  # bfloat16: float32 values, rounded
        return st.one_of(st.integers(-8, 8).map(float), st.sampled_from(_SPECIAL_FLOATS), st.floats(width=width))
    info = torch.iinfo(dtype)
    return st.one_of(st.integers(max(info.min, -8), min(info.max, 8)), st.integers(info.min, info.max))


def _as_strategy(value: Any, default: st.SearchStrategy) -> st.SearchStrategy:
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(value)


@st.composite
def tensors(draw: Callable, dtype: Any = None, shape: Any = None, *, contiguous: bool | None = None,
            requires_grad: bool | None = False, grad: bool | None = None, elements: st.SearchStrategy | None = None,
            max_dims: int = 3, max_side: int = 4) -> torch.Tensor:
    """Tensors of every dtype in DTYPES and every small shape (0-d and empty included).

    - `dtype`, `shape`: a value or a strategy (default: any dtype, `shapes(0, max_dims, 0, max_side)`).
    - Float values include nan, +-inf, -0.0, subnormals and float16's largest finite value;
      integers include their dtype's extremes. Tensors with more than 512 elements are
      filled with random bit patterns from a drawn seed (fast for megabyte tensors).
    - `contiguous=False` gives only non-contiguous layouts (transposed, stepped, expanded
      with a zero stride) or a storage offset; None (default) gives either.
    - `requires_grad=None` draws it (floating dtypes only); `grad=None` then draws
      whether the leaf carries a `.grad` of its own shape and dtype.

    Note: torch's float results can depend on memory layout (a strided reduction adds in
    another order than a contiguous one), and `send()` always transfers contiguous data,
    so compare a remote result with the local op applied to `t.contiguous()`
    (`run_program` does).
    """
    dtype = draw(_as_strategy(dtype, st.sampled_from(DTYPES)))
    shape = tuple(draw(_as_strategy(shape, shapes(0, max_dims, 0, max_side))))
    numel = math.prod(shape)
    if numel > _BULK_ELEMENTS:
        seed = draw(st.integers(0, 2**32 - 1))
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
        t = (raw[:numel] % 2).bool() if dtype is torch.bool else raw.view(dtype)
        t = t.reshape(shape)
    else:
        values = draw(st.lists(elements or _elements(dtype), min_size=numel, max_size=numel))
        t = torch.tensor(values, dtype=dtype).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "strided"])) if contiguous is None else (
        "contiguous" if contiguous else "strided")
    if layout == "strided":
        t = _relayout(draw, t)
    wants_grad = draw(st.booleans()) if requires_grad is None else requires_grad
    if wants_grad and dtype.is_floating_point:
        t = t.detach().requires_grad_(True)  # a leaf, keeping the layout
        has_grad = draw(st.booleans()) if grad is None else grad
        if has_grad:
            t.grad = draw(tensors(dtype, shape, contiguous=None, requires_grad=False))
    return t


def _relayout(draw: Callable, t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous (or offset) tensor holding `t`'s shape."""
    shape = tuple(t.shape)
    ways = ["offset"]
    big = [d for d, n in enumerate(shape) if n > 1]
    if len(big) >= 2:
        ways.append("transpose")
    if shape and shape[0] >= 1:
        ways.append("step")  # also a one-element dim with stride 2: "contiguous" to torch, not dense
    if big:
        ways.append("expand")
    way = draw(st.sampled_from(ways))
    if way == "transpose":
        i, j = draw(st.sampled_from([(i, j) for i in big for j in big if i < j]))
        return t.transpose(i, j).contiguous().transpose(i, j)
    if way == "step":
        base = torch.zeros((2 * shape[0], *shape[1:]), dtype=t.dtype)
        base[::2] = t
        return base[::2]
    if way == "expand":
        d = draw(st.sampled_from(big))
        return t.narrow(d, 0, 1).expand(shape)  # stride 0 along d
    k = draw(st.integers(1, 3))
    flat = torch.zeros(t.numel() + k, dtype=t.dtype)
    flat[k:] = t.reshape(-1)
    return flat[k:].view(shape)


def scalars(dtype: torch.dtype | None = None) -> st.SearchStrategy:
    """Python numbers for `tensor op scalar`: small ints, int64 extremes and beyond (which
    torch refuses), floats with nan/inf/-0.0, and bools. `dtype` biases towards its kind."""
    ints = st.one_of(st.integers(-4, 4), st.sampled_from([2**31, -2**63, 2**63 - 1, 2**64]))
    floats = st.one_of(st.sampled_from([0.5, -1.5, 2.0, -0.0, math.nan, math.inf, -math.inf, 1e-3, 3.25]),
                       st.floats(width=32))
    if dtype is not None and dtype.is_floating_point:
        return st.one_of(floats, ints, st.booleans())
    return st.one_of(ints, floats, st.booleans())


@dataclass(frozen=True)
class Meta:
    """What an op's parameters depend on: shape, dtype, requires_grad (of a tensor or pointer)."""

    shape: tuple
    dtype: torch.dtype
    requires_grad: bool = False

    @classmethod
    def of(cls, x: Any) -> "Meta":
        if isinstance(x, Meta):
            return x
        return cls(tuple(x.shape), x.dtype, bool(x.requires_grad))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point


def _broadcast_shape(draw: Callable, shape: tuple) -> tuple:
    """A shape that broadcasts with `shape` (size-1 sides, fewer or more leading dims)."""
    out = list(shape[draw(st.integers(0, len(shape))):])
    out = [draw(st.sampled_from([n, 1])) if n != 1 else draw(st.sampled_from([1, 2, 3])) for n in out]
    if len(out) < 3 and draw(st.booleans()):
        out.insert(0, draw(st.integers(1, 2)))
    return tuple(out)


def _matmul_shape(draw: Callable, shape: tuple) -> tuple:
    """A right operand for `a @ b` when `a` has `shape`."""
    if not shape:
        return draw(shapes(0, 2, 1, 3))  # matmul refuses 0-d operands: the error is the point
    k, m = shape[-1], draw(st.integers(0, 3))
    options = [(k,), (k, m)]
    if len(shape) == 1:
        options.append((2, k, m))
    else:
        batch = shape[:-2]
        options += [(*batch, k, m), (1, *batch, k, m)] if batch else [(2, k, m)]
    return draw(st.sampled_from(options))


@st.composite
def partners(draw: Callable, a: Any, kind: str = "binary") -> torch.Tensor:
    """A second operand for `a` that fits `kind`: "binary"/"compare"/"inplace" (broadcastable,
    usually the same dtype), "matmul" (matmul-compatible), "join" (same shape, for cat/stack).
    About one time in twenty the shape is arbitrary, so mismatches are tested too."""
    m = Meta.of(a)
    if _rarely(draw):
        shape = draw(shapes())
    elif kind == "matmul":
        shape = _matmul_shape(draw, m.shape)
    elif kind == "join":
        shape = m.shape
    else:
        shape = _broadcast_shape(draw, m.shape)
    dtype = m.dtype if draw(st.integers(0, 3)) < 3 else draw(st.sampled_from(DTYPES))
    return draw(tensors(dtype, shape, requires_grad=None if m.floating and dtype.is_floating_point else False,
                        grad=False))


# -- ops ------------------------------------------------------------------------------

_NAMESPACE: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "nan": math.nan, "inf": math.inf}


def _names(code: Any) -> set[str]:
    found = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            found |= _names(const)
    return found


class Op:
    """One torch call written as Python code over operands `a` (and `b`); it runs the same
    way on tensors and on pointers, and its repr is the code.

    >>> op = Op("torch.add(a, b, alpha=2)")
    >>> op(torch.ones(2), torch.ones(2))
    tensor([3., 3.])
    >>> op(x_ptr, y_ptr).get()                     # the same call, run on the worker
    tensor([3., 3.])

    A statement (`a += b`, `a[0] = 1.5`) returns `a` afterwards. `env` adds names the code
    may use (your own functions). `kind` says which family of KINDS it came from.
    """

    __slots__ = ("code", "kind", "arity", "_compiled", "_statement", "_env")

    def __init__(self, code: str, kind: str = "custom", env: Mapping[str, Any] | None = None) -> None:
        self.code = code
        self.kind = kind
        try:
            self._compiled = compile(code, f"<op {code}>", "eval")
            self._statement = False
        except SyntaxError:
            self._compiled = compile(code, f"<op {code}>", "exec")
            self._statement = True
        self.arity = 2 if "b" in _names(self._compiled) else 1
        self._env = {**_NAMESPACE, **(env or {})}

    def __call__(self, a: Any, b: Any = None) -> Any:
        scope = {"a": a, "b": b}
        if self._statement:
            exec(self._compiled, self._env, scope)
            return scope["a"]
        return eval(self._compiled, self._env, scope)

    def __repr__(self) -> str:
        return f"Op({self.code!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and other.code == self.code

    def __hash__(self) -> int:
        return hash(("Op", self.code))


def _lit(value: Any) -> str:
    """`value` as Python source for an Op (nan and inf are names in the Op namespace)."""
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "(-inf)"
        return f"({value!r})" if math.copysign(1.0, value) < 0 else repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return f"({value!r})"
    if isinstance(value, tuple):
        inner = ", ".join(_lit(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _dim(draw: Callable, m: Meta, *, extra: int = 0) -> int:
    """A dim of `m` (0-d tensors accept 0 and -1); out of range about one time in twenty."""
    n = max(m.ndim, 1) + extra
    if _rarely(draw):
        return draw(st.sampled_from([n, -n - 1]))
    return draw(st.integers(-n, n - 1))


def _dims(draw: Callable, m: Meta) -> tuple:
    n = max(m.ndim, 1)
    return tuple(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=n, unique_by=lambda d: d % n)))


def _pick(draw: Callable, options: Sequence) -> Any:
    return draw(st.sampled_from(list(options)))


def _index(draw: Callable, m: Meta) -> str:
    """A basic or advanced index into `m`, as source: `0`, `1:, ::2`, `None, ..., -1`, `[0, -1]`."""
    parts = []
    dims = list(m.shape)
    count = draw(st.integers(1, max(len(dims), 1))) + (1 if _rarely(draw) else 0)
    for i in range(count):
        n = dims[i] if i < len(dims) else 1
        inside = st.integers(-max(n, 1), max(n - 1, 0))
        kind = draw(st.sampled_from(["int", "slice", "full", "none", "ellipsis", "list", "bool"]))
        if kind == "int":
            parts.append(str(draw(st.integers(-n - 1, n) if _rarely(draw) else inside)))
        elif kind == "slice":
            start = draw(st.one_of(st.none(), st.integers(-n - 1, n + 1)))
            stop = draw(st.one_of(st.none(), st.integers(-n - 1, n + 1)))
            step = draw(st.sampled_from([0, -1])) if _rarely(draw) else draw(st.one_of(st.none(), st.integers(1, 3)))
            text = f"{'' if start is None else start}:{'' if stop is None else stop}"
            parts.append(text + (f":{step}" if step is not None else ""))
        elif kind == "full":
            parts.append(":")
        elif kind == "none":
            parts.append("None")
        elif kind == "ellipsis":
            parts.append("...")
        elif kind == "list":
            parts.append(repr(draw(st.lists(inside, min_size=1, max_size=3))))
        else:
            parts.append(repr(draw(st.booleans())))
    return ", ".join(parts)


_UNARY_NAMES = (
    "neg", "abs", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "sin", "cos", "tan", "asin",
    "atan", "sinh", "tanh", "sigmoid", "floor", "ceil", "round", "trunc", "frac", "sign", "sgn", "reciprocal",
    "square", "erf", "erfc", "relu", "positive", "logical_not", "bitwise_not", "isnan", "isinf", "isfinite",
    "isposinf", "signbit", "nan_to_num", "deg2rad", "lgamma", "digamma", "logit", "sinc", "i0", "conj", "fix",
)
_UNARY_OPERATORS = {"neg": "-a", "abs": "abs(a)", "bitwise_not": "~a", "positive": "+a"}
_BINARY_OPERATORS = {
    "add": "+", "sub": "-", "mul": "*", "div": "/", "floor_divide": "//", "remainder": "%", "pow": "**",
    "bitwise_and": "&", "bitwise_or": "|", "bitwise_xor": "^", "bitwise_left_shift": "<<", "bitwise_right_shift": ">>",
}
_BINARY_NAMES = tuple(_BINARY_OPERATORS) + (
    "fmod", "atan2", "maximum", "minimum", "fmax", "fmin", "hypot", "copysign", "logical_and", "logical_or",
    "logical_xor", "xlogy", "true_divide", "nextafter", "heaviside", "ldexp",
)
_COMPARE_OPERATORS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _has(name: str, where: Any = torch.Tensor) -> bool:
    return hasattr(where, name)


def _unary(draw: Callable, a: Meta, b: Meta | None) -> str:
    name = _pick(draw, _UNARY_NAMES)
    forms = []
    if _has(name, torch):
        forms.append(f"torch.{name}(a)")
    if _has(name):
        forms.append(f"a.{name}()")
    if name in _UNARY_OPERATORS:
        forms.append(_UNARY_OPERATORS[name])
    if _has(name + "_"):
        forms.append(f"a.{name}_()")
    return _pick(draw, forms)


def _unary_params(draw: Callable, a: Meta, b: Meta | None) -> str:
    d = _dim(draw, a)
    x, y = draw(scalars(a.dtype)), draw(scalars(a.dtype))
    k = draw(st.integers(-2, 3))
    slope = draw(st.sampled_from([0.01, 0.2, -1.0]))
    return _pick(draw, [
        f"torch.clamp(a, min={_lit(x)}, max={_lit(y)})", f"a.clamp(min={_lit(x)})", f"a.clamp_(max={_lit(y)})",
        f"torch.round(a, decimals={k})", f"torch.nan_to_num(a, nan={_lit(x)}, posinf={_lit(y)})",
        f"F.softmax(a, dim={d})", f"F.log_softmax(a, {d})", "F.gelu(a)", "F.gelu(a, approximate='tanh')",
        "F.silu(a)", "F.softplus(a, beta=2)", f"F.leaky_relu(a, {slope})", "F.elu(a)", "F.hardtanh(a)",
        "F.relu6(a)", f"F.normalize(a, dim={d})", f"torch.cumsum(a, dim={d})", f"a.cumprod({d})",
        f"torch.logcumsumexp(a, {d})", f"torch.cummax(a, {d})", f"a.cummin(dim={d})", f"torch.diff(a, dim={d})",
        f"a.pow({_lit(x)})", f"torch.pow({_lit(x)}, a)", f"torch.lerp(a, a.flip(0), {_lit(y)})"
        if a.ndim else f"torch.lerp(a, a, {_lit(y)})", f"torch.where(a > 0, a, {_lit(x)})",
        f"a.masked_fill(a != a, {_lit(x)})", f"torch.addcmul(a, a, a, value={_lit(x)})",
    ])


def _safe_rounding(a: Meta, b_dtype: torch.dtype | None, scalar: Any) -> list[str]:
    # torch kills the process with SIGFPE on INT_MIN / -1 with rounding_mode='trunc' for
    # int32/int64 (a torch bug, not a divergence), so trunc division is drawn only when
    # the result is floating.
    floating = a.floating or (b_dtype is not None and b_dtype.is_floating_point) or isinstance(scalar, float)
    return ["floor", "trunc"] if floating else ["floor"]


def _binary(draw: Callable, a: Meta, b: Meta | None, names: Sequence[str] = _BINARY_NAMES,
            operators: Mapping[str, str] = _BINARY_OPERATORS, inplace_only: bool = False) -> str:
    name = _pick(draw, names)
    symbol = operators.get(name)
    augmented = symbol if operators is _BINARY_OPERATORS else None  # `a == b` has no `a === b`
    if b is None:
        s = draw(scalars(a.dtype))
        other = _lit(s)
        forms = [f"a {symbol} {other}", f"{other} {symbol} a"] if symbol else []
        forms += [f"torch.{name}(a, {other})", f"a.{name}({other})"] if _has(name, torch) else [f"a.{name}({other})"]
        inplace = [f"a.{name}_({other})"] + ([f"a {augmented}= {other}"] if augmented else [])
        if name == "pow":
            forms.append(f"torch.pow({other}, a)")
        if name in ("add", "sub"):
            forms.append(f"torch.{name}(a, {other}, alpha={draw(st.integers(-2, 3))})")
        if name == "div":
            mode = _pick(draw, _safe_rounding(a, None, s))
            forms.append(f"torch.div(a, {other}, rounding_mode={mode!r})")
            inplace.append(f"a.div_({other}, rounding_mode={mode!r})")
    else:
        forms = [f"a {symbol} b", f"b {symbol} a"] if symbol else []
        forms += [f"torch.{name}(a, b)", f"a.{name}(b)"]
        inplace = [f"a.{name}_(b)", f"torch.{name}(a, b, out=a)"] + ([f"a {augmented}= b"] if augmented else [])
        if name in ("add", "sub"):
            alpha = draw(st.sampled_from([2, -1, 0.5]))
            forms.append(f"torch.{name}(a, b, alpha={_lit(alpha)})")
            inplace.append(f"a.{name}_(b, alpha={_lit(alpha)})")
        if name == "div":
            mode = _pick(draw, _safe_rounding(a, b.dtype, None))
            forms.append(f"torch.div(a, b, rounding_mode={mode!r})")
            inplace.append(f"a.div_(b, rounding_mode={mode!r})")
    inplace = [f for f in inplace if "_(" not in f or _has(name + "_")]
    return _pick(draw, inplace if inplace_only and inplace else forms + inplace)


def _compare(draw: Callable, a: Meta, b: Meta | None) -> str:
    if b is not None and _rarely(draw):
        return _pick(draw, ["torch.isclose(a, b)", "torch.isclose(a, b, equal_nan=True)", "torch.eq(a, b)"])
    return _binary(draw, a, b, tuple(_COMPARE_OPERATORS), _COMPARE_OPERATORS)


def _inplace(draw: Callable, a: Meta, b: Meta | None) -> str:
    if b is not None:
        return _pick(draw, [_binary(draw, a, b, inplace_only=True), "a.copy_(b)", "a.masked_fill_(a > 0, 1)"
                            if a.ndim else "a.copy_(b)", f"a[{_index(draw, a)}] = b"])
    x = draw(scalars(a.dtype))
    name = _pick(draw, [n for n in _UNARY_NAMES if _has(n + "_")])
    return _pick(draw, [
        _binary(draw, a, None, inplace_only=True), f"a.{name}_()", f"a[{_index(draw, a)}] = {_lit(x)}",
        f"a.fill_({_lit(x)})", "a.zero_()", f"a.clamp_(min={_lit(x)})", f"a.masked_fill_(a < 0, {_lit(x)})",
        f"a.unsqueeze_({_dim(draw, a, extra=1)})", "a.squeeze_()", "a.t_()",
        f"a.transpose_({_dim(draw, a)}, {_dim(draw, a)})", "a.detach_()", "a.requires_grad_()",
    ])


def _reduction(draw: Callable, a: Meta, b: Meta | None) -> str:
    d = _dim(draw, a)
    dims = _dims(draw, a)
    keep = draw(st.booleans())
    k = draw(st.integers(0, max(a.shape[d] if a.ndim and -a.ndim <= d < a.ndim else 1, 1)))
    multi = _pick(draw, ["sum", "mean", "nansum", "nanmean", "amax", "amin", "logsumexp", "std", "var",
                         "count_nonzero", "all", "any"])
    single = _pick(draw, ["prod", "max", "min", "argmax", "argmin", "median", "nanmedian", "cumsum", "norm",
                          "aminmax", "var_mean", "std_mean", "unique"])
    where = _pick(draw, ["torch", "method"])

    def call(n: str, args: str) -> str:
        if where == "method" and _has(n):
            return f"a.{n}({args})"
        return f"torch.{n}(a{', ' if args else ''}{args})"

    return _pick(draw, [
        call(multi, "") if multi != "logsumexp" else call(multi, f"{d}"),
        call(multi, f"dim={_lit(dims)}" + (", keepdim=True" if keep and multi != "count_nonzero" else "")),
        call(multi, f"{d}") if multi not in ("all", "any") or a.ndim else call(multi, ""),
        call(single, "") if single not in ("cumsum",) else call(single, f"{d}"),
        call(single, f"dim={d}" + (", keepdim=True" if keep and single not in ("cumsum", "unique") else ""))
        if single != "unique" else "torch.unique(a, return_counts=True)",
        call("sum", f"dtype={_pick(draw, DTYPES)}"), call("std", f"{d}, correction={draw(st.integers(0, 2))}"),
        call("norm", "p=" + _pick(draw, ["1", "2", "'fro'", "inf"])),
        f"torch.sort(a, dim={d}, descending={draw(st.booleans())})", "a.sort(stable=True)", f"a.argsort({d})",
        f"torch.topk(a, {k}, dim={d})", f"a.kthvalue({max(k, 1)}, {d})", "a.max()", "a.min()", "a.sum()",
    ])


def _matmul(draw: Callable, a: Meta, b: Meta | None) -> str:
    if b is None:  # a with itself
        return _pick(draw, ["a @ a.mT" if a.ndim >= 2 else "a @ a", "torch.matmul(a, a.t())" if a.ndim == 2
                            else "torch.matmul(a, a)", "a.matmul(a.transpose(-1, -2))" if a.ndim >= 2 else "a.dot(a)",
                            "torch.outer(a, a)" if a.ndim == 1 else "torch.inner(a, a)"])
    return _pick(draw, ["a @ b", "torch.matmul(a, b)", "a.matmul(b)", "torch.mm(a, b)", "torch.mv(a, b)",
                        "torch.dot(a, b)", "torch.outer(a, b)", "torch.inner(a, b)", "torch.bmm(a, b)", "a @= b",
                        "torch.einsum('...ij,...jk->...ik', a, b)", "torch.tensordot(a, b, dims=1)"])


def _index_op(draw: Callable, a: Meta, b: Meta | None) -> str:
    idx = _index(draw, a)
    d = _dim(draw, a)
    n = a.shape[d] if a.ndim and -a.ndim <= d < a.ndim else 1
    start = draw(st.integers(0, max(n - 1, 0)))
    return _pick(draw, [
        f"a[{idx}]", "a[a > 0]", "a[a != a]", f"a.select({d}, {start})", f"a.narrow({d}, {start}, {max(n - start, 0)})",
        f"torch.narrow(a, {d}, {start}, {min(1, max(n - start, 0))})", f"a[{idx}].clone()",
    ])


def _shape(draw: Callable, a: Meta, b: Meta | None) -> str:
    i, j = _dim(draw, a), _dim(draw, a)
    u = _dim(draw, a, extra=1)
    perm = draw(st.permutations(range(a.ndim))) if a.ndim else []
    flipped = tuple(reversed(a.shape))
    expand = tuple(2 if n == 1 else n for n in a.shape)
    reps = tuple(draw(st.lists(st.integers(1, 2), min_size=a.ndim, max_size=a.ndim + 1))) or (2,)
    k = draw(st.integers(1, 3))
    return _pick(draw, [
        "a.view(-1)", f"a.reshape({_lit(flipped)})", f"a.view({_lit(flipped)})", "a.flatten()", "torch.flatten(a, 1)",
        "a.t()", "a.T", "a.mT", f"a.transpose({i}, {j})", f"torch.transpose(a, {i}, {j})", f"a.permute({_lit(tuple(perm))})",
        f"a.unsqueeze({u})", "a.squeeze()", f"a.squeeze({i})", f"torch.flip(a, {_lit(_dims(draw, a))})",
        f"torch.roll(a, {draw(st.integers(-3, 3))}, {i})", f"a.expand({_lit(expand)})", f"a.repeat({_lit(reps)})",
        "a.contiguous()", "a.clone()", f"torch.chunk(a, {k}, {i})", f"a.split({k}, {i})", f"a.unbind({i})",
        f"torch.tril(a, {draw(st.integers(-1, 1))})", "a.triu()", "a.diagonal()", f"torch.movedim(a, {i}, {j})",
        f"a.swapaxes({i}, {j})", "torch.atleast_2d(a)", f"a.unfold({i}, {k}, {draw(st.integers(1, 2))})",
        "torch.cat([a, a])", f"torch.stack([a, a], {u})", "a.view_as(a)", "a.expand_as(a)",
    ])


def _cast(draw: Callable, a: Meta, b: Meta | None) -> str:
    dtype = _pick(draw, DTYPES)
    return _pick(draw, [
        f"a.to({dtype})", f"a.to({dtype}, copy=True)", f"a.to(dtype={dtype})", f"a.type({dtype})", "a.float()",
        "a.double()", "a.half()", "a.bfloat16()", "a.int()", "a.long()", "a.short()", "a.char()", "a.byte()",
        "a.bool()", "a.to('cpu')", "a.to(a.dtype)",
    ])


def _autograd(draw: Callable, a: Meta, b: Meta | None) -> str:
    return _pick(draw, ["a.detach()", "a.requires_grad_()", "a.requires_grad_(False)", "a.retain_grad()", "a.data",
                        "a.clone().requires_grad_()", "a.detach().requires_grad_()", "a.is_leaf"])


def _value(draw: Callable, a: Meta, b: Meta | None) -> str:
    d = _dim(draw, a)
    if b is not None:
        return _pick(draw, ["torch.equal(a, b)", "torch.allclose(a, b)", "torch.allclose(a, b, equal_nan=True)"])
    return _pick(draw, [
        "a.shape", "a.dtype", "a.dim()", "a.size()", f"a.size({d})", "a.numel()", "a.element_size()",
        "a.is_floating_point()", "len(a)", "a.ndim", "a.requires_grad", "a.is_contiguous()", "a.type()",
        "torch.is_nonzero(a)", "torch.equal(a, a)", "a.nelement()",
    ])


def _join(draw: Callable, a: Meta, b: Meta | None) -> str:
    if b is None:
        return _shape(draw, a, None)
    d = _dim(draw, a)
    return _pick(draw, [
        f"torch.cat([a, b], dim={d})", "torch.cat((a, b))", f"torch.stack([a, b], {_dim(draw, a, extra=1)})",
        "torch.hstack([a, b])", "torch.vstack((a, b))", "torch.broadcast_tensors(a, b)", "torch.where(a > b, a, b)",
        "torch.lerp(a, b, 0.25)", "torch.addcmul(a, a, b)", "torch.addcdiv(a, b, b, value=2)", "F.mse_loss(a, b)",
        "F.l1_loss(a, b, reduction='sum')", "torch.atan2(a, b)",
    ])


# kind -> (uses b, draws code); see ops().
_TEMPLATES: dict[str, tuple[bool, Callable]] = {
    "unary": (False, lambda draw, a, b: _pick(draw, [_unary(draw, a, b), _unary_params(draw, a, b)])),
    "scalar": (False, lambda draw, a, b: _binary(draw, a, None)),
    "binary": (True, _binary),
    "compare": (True, _compare),
    "reduction": (False, _reduction),
    "matmul": (True, _matmul),
    "index": (False, _index_op),
    "inplace": (True, _inplace),
    "shape": (False, _shape),
    "cast": (False, _cast),
    "join": (True, _join),
    "autograd": (False, _autograd),
    "value": (True, _value),
}
KINDS = tuple(_TEMPLATES)
UNARY_KINDS = ("unary", "scalar", "compare", "reduction", "matmul", "index", "inplace", "shape", "cast", "autograd",
               "value")
BINARY_KINDS = ("binary", "compare", "matmul", "inplace", "join", "value")


@st.composite
def ops(draw: Callable, a: Any = None, b: Any = None, *, kinds: Iterable[str] | None = None) -> Op:
    """Ops over operand `a` (and `b`): tensors, pointers or Metas. Parameters (dims,
    indices, shapes, scalars) are drawn to fit their shapes, and about one time in twenty
    to fall just outside, so errors are compared too.

    Kinds (KINDS): unary (elementwise math and activations, with params), scalar
    (`a + 2`, `2 - a`, `torch.add(a, 2)`, `a.add_(2)`...), binary (tensor with tensor,
    broadcasting: operator, reflected, function, method, in-place, `out=a`), compare,
    reduction (with dims, keepdim, dtype; multi-output ones like `max(dim=0)`, `sort`),
    matmul, index (basic, advanced, boolean-mask, `select`/`narrow`), inplace (in-place
    forms of all of these, `a[i] = x`, shape-changing `unsqueeze_`/`t_`), shape
    (views, `reshape`, `permute`, `expand`, `unfold`, `chunk`/`split`/`unbind`), cast
    (`.to(dtype)`, `.int()`...), join (`cat`, `stack`, `where`, losses), autograd
    (`detach`, `requires_grad_`, `retain_grad`), value (ops whose answer is a Python value:
    `torch.equal`, `a.is_contiguous()`, `a.shape`...). Default: every kind that uses the
    operands given. With no operand at all, `a` is a random small Meta.

    What is left out, and why:
    - ops that read the random number generator (`rand_like`, `dropout`, `bernoulli`,
      `multinomial`) or uninitialised memory (`empty_like`, `resize_`, `new_empty`):
      a worker's generator and memory are its own, so no remote result can equal a local one;
    - `torch.div(..., rounding_mode='trunc')` with an integer result: torch 2.x kills the
      process with SIGFPE for INT_MIN / -1 (int32/int64), locally and on a worker alike;
    - ops outside simsyft's allowlist (`stride()`, `storage_offset()`, `tolist()`, `item()`):
      they raise OpNotAllowedError / RemoteValueError by design (PointerMachine checks the latter).
    Deterministic here: every op on the CPU, for the same input layout and thread count.
    Float reductions depend on layout (see tensors()) and, above torch's grain size of 32768
    elements, on the thread count; the sizes drawn stay far below it.
    """
    kinds = tuple(kinds) if kinds is not None else (BINARY_KINDS if b is not None else UNARY_KINDS)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown op kinds {sorted(unknown)}; choose from {KINDS}")
    ma = Meta.of(a) if a is not None else draw(st.builds(Meta, shapes(), st.sampled_from(DTYPES)))
    mb = Meta.of(b) if b is not None else None
    kind = draw(st.sampled_from(kinds))
    code = _TEMPLATES[kind][1](draw, ma, mb)
    op = Op(code, kind)
    if mb is None and op.arity == 2:  # a two-operand form drawn without `b`: fall back to scalars
        op = Op(_binary(draw, ma, None), kind)
    return op


# -- worlds and pools ------------------------------------------------------------------

WORKER_NAMES = ("bob", "alice", "carol", "dave")


@dataclass(frozen=True)
class World:
    """Which workers an example uses (by name); `WorkerPool.world(w)` gives their handles."""

    names: tuple

    def __len__(self) -> int:
        return len(self.names)


def worlds(min_size: int = 1, max_size: int = 4, names: Sequence[str] = WORKER_NAMES) -> st.SearchStrategy[World]:
    """1 to 4 workers, drawn from `names` (shrinks towards just "bob")."""
    return st.lists(st.sampled_from(tuple(names)), min_size=min_size, max_size=min(max_size, len(names)),
                    unique=True).map(lambda ns: World(tuple(ns)))


class WorkerPool:
    """A fixed set of workers reused across hypothesis examples.

    Starting processes costs seconds and an example milliseconds, so a property run keeps
    one pool for the session and asks `world()` for empty workers at each example.

    >>> pool = WorkerPool.in_process()          # or the simsyft_sim fixture (processes)
    >>> bob, alice = pool.world(World(("bob", "alice")))
    """

    def __init__(self, handles: Mapping[str, VirtualWorker] | Sequence[VirtualWorker], *,
                 close: Callable[[], None] | None = None, simulation: Any = None, backend: str = "process") -> None:
        if not isinstance(handles, Mapping):
            handles = {h.id: h for h in handles}
        if not handles:
            raise ValueError("a WorkerPool needs at least one worker")
        self.handles: dict[str, VirtualWorker] = dict(handles)
        self.simulation = simulation
        self.backend = backend
        self._close = close
        TorchHook(torch)  # idempotent: pointers need Tensor.send

    @classmethod
    def in_process(cls, names: Sequence[str] = WORKER_NAMES) -> "WorkerPool":
        """In-process workers (no processes): the fast backend for the bulk of examples."""
        handles = {name: in_process_worker(name) for name in names}
        return cls(handles, close=lambda: [h.shutdown() for h in handles.values()], backend="inprocess")

    @classmethod
    def from_simulation(cls, simulation: Any) -> "WorkerPool":
        """The workers of a running `sy.launch(...)` Simulation; `close()` shuts it down."""
        return cls(simulation.workers, close=simulation.shutdown, simulation=simulation, backend="process")

    @property
    def names(self) -> tuple:
        return tuple(self.handles)

    @property
    def workers(self) -> list[VirtualWorker]:
        return list(self.handles.values())

    def __getitem__(self, name: str) -> VirtualWorker:
        return self.handles[name]

    def __len__(self) -> int:
        return len(self.handles)

    def world(self, world: World | int | None = None) -> list[VirtualWorker]:
        """Handles for `world` (a World, or a count: the first n workers), each with an empty store."""
        if world is None:
            chosen = self.workers
        elif isinstance(world, int):
            chosen = self.workers[:world]
        elif all(name in self.handles for name in world.names):
            chosen = [self.handles[name] for name in world.names]
        else:  # a world drawn with other names: use as many of ours, in order
            chosen = self.workers[:len(world.names)]
        for handle in chosen:
            handle.clear_objects()
        return chosen

    def reset(self) -> None:
        """Empty every worker's store (pointers still held elsewhere then find nothing)."""
        for handle in self.workers:
            handle.clear_objects()

    def segments(self) -> list[str]:
        """Shared-memory segments lost in flight: marked in use, yet no tensor of this process
        uses them. Should be none once the workers' stores are empty. Segments are pooled and
        reused (simsyft/wire/segments.py), so their names alone say nothing; a worker process's own
        segments are its business, checked by the leak checks at shutdown."""
        spaces = {h.simulation.namespace for h in self.workers}
        return [name for space in spaces for name in shm_pool.lost(space)]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __repr__(self) -> str:
        return f"<WorkerPool {self.backend} {', '.join(self.handles)}>"


# -- programs ---------------------------------------------------------------------------

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


# -- the state machine -------------------------------------------------------------

@dataclass
class _Entry:
    pointer: PointerTensor
    local: torch.Tensor
    worker: VirtualWorker


class PointerMachine(RuleBasedStateMachine):
    """Drives real pointers against a model, checking both after every step.

    The model is, for each live pointer, the local tensor it must equal (ops run on it
    with plain torch) and the worker holding it; so each worker must hold exactly the
    objects of its live pointers. Rules: `send`, `op` (one operand: unary, scalar,
    reduction, index, shape, cast, in-place ...), `op2` (two operands on one worker,
    broadcasting, matmul, join), `copy` (`ptr.clone()`), `get`, `drop` (the last
    reference goes: GC frees it), `backward` (on `ptr.sum()`; then every leaf's `.grad`
    must match), and invalid steps that must raise the right error and change nothing:
    `mix_workers` (LocationMismatchError), `mix_local` (pointer with a local tensor),
    `use_after_get` (ObjectNotFoundError for `get()` twice and for ops), `value_of`
    (RemoteValueError for `item()`/`tolist()`/`bool()`). Invariants after every step:
    each worker's `_objects` has the model's keys and bitwise-equal values (nothing
    leaked, nothing lost), every live pointer's shape/dtype/requires_grad match.
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
