"""Torch handed a pointer gives the local result or raises, never another value (issue 12).

Torch's Python functions that take "a tensor or an iterable of tensors" used to take a
pointer for the iterable: `clip_grad_norm_(ptr, 2)` returned tensor(0.) and clipped nothing.
Here every public callable of torch, torch.nn.functional, linalg, fft, special, nn.utils,
nn.init, autograd and testing (torch's overridable list plus each module's own functions),
every Tensor method and property, and the builtins that read a tensor (len, list,
reversed, numpy conversion ...) are called with pointers where tensors go, on tensors drawn
by hypothesis, and with the same tensors locally. The pointer call must raise, or give the
local value (after .get(): dtype, shape, every bit, requires_grad) and leave its operands as
the local call does (values and .grad).

Arguments come from a few templates (`(a,)`, `(a, b)`, `(a, 0)`, `([a, b],)` ...), those
fitting the function's arity. Random functions compare exactly: torch is seeded before each
side, and the in-process worker runs its ops in this process, on the same generator.
"""

from __future__ import annotations

import inspect
import math
import operator
import re
import types
from typing import Any, Callable

import numpy
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from simsyft.pointer import PointerTensor
from simsyft.testing import outcome, tensors

THOROUGH = settings.default.max_examples >= 1000  # the `thorough` profile (tests/property/conftest.py)

MODULES = (torch, torch.nn.functional, torch.linalg, torch.fft, torch.special, torch.functional, torch.nn.utils,
           torch.nn.utils.rnn, torch.nn.init, torch.autograd, torch.testing)

# Not tensor functions: process-wide switches, seeds and introspection of the build. (The C
# bindings of a few switches read any object with __torch_function__ given as a flag as False,
# without an error: set_anomaly_enabled(ptr) turns anomaly mode off. Torch never calls the
# pointer there, so nothing in simsyft can refuse it; they take flags, not tensors.)
NOT_TENSOR_FUNCTIONS = re.compile(
    r"^(set_|use_|get_|is_\w*(enabled|available)|are_|manual_seed$|seed$|initial_seed$|init_num_threads$|autocast_"
    r"|clear_autocast|prepare_multiprocessing|profiler_|import_ir|parse_|merge_type|unify_type|compiled_with)")

# Left out on purpose, with the reason.
EXCLUDED = {
    # A pointer is not a torch.Tensor (see Note [Torch code iterating a pointer] in pointer.py):
    # these answer that truthfully about the object.
    "torch.is_tensor": "type predicate", "torch.typename": "type name",
    "torch.overrides.has_torch_function": "type predicate",
    "torch.overrides.has_torch_function_unary": "type predicate",
    "torch.overrides.has_torch_function_variadic": "type predicate",
    "torch.overrides.handle_torch_function": "torch's dispatch machinery: calls its first argument",
    # Uninitialised memory: no value to compare.
    "torch.nn.functional.multilabel_margin_loss": "returns uninitialised memory for empty input",
    "torch.empty_like": "uninitialised", "torch.fbgemm_pack_gemm_matrix_fp16": "uninitialised padding",
    "torch.Tensor.new_empty": "uninitialised", "torch.Tensor.new_empty_strided": "uninitialised",
    # Take or return functions and modules, not tensors.
    "torch.compile": "takes a function", "torch.vmap": "takes a function", "torch.cond": "takes functions",
    "torch.while_loop": "takes functions", "torch.fork": "takes a function", "torch.wait": "takes a future",
    "torch.classproperty": "a descriptor", "torch.nn.utils.rnn.copy_method_params": "returns a function",
    # Files.
    "torch.save": "writes a file", "torch.load": "reads a file", "torch.from_file": "reads a file",
}

# Divergences found by this test and not yet fixed (outside pointer.py): each one a bug to fix,
# then to delete from here.
KNOWN_BUGS = {
    # torch.dequantize(t) of a float leaf returns t and makes it a non-leaf (grad_fn
    # NotImplemented: torch's quirk, locally too); get() then brings no .grad, as it carries the
    # .grad of leaves only, while locally t.grad is still there.
    "torch.dequantize(a)": "get() drops the .grad of a tensor dequantize made a non-leaf",
    "torch.Tensor.dequantize()": "get() drops the .grad of a tensor dequantize made a non-leaf",
}

FUNCTION_TEMPLATES = (("a",), ("a", "b"), ("a", 0), ("a", -1), ("a", 2.0), ("a", "b", "b"),
                      (["a", "b"],), (["a"], 1.0), ("a", ["b"]))
METHOD_TEMPLATES = ((), ("b",), (0,), (-1,), (2.0,), ("b", "b"))

# Builtins and numpy reading a tensor (through the dunders a pointer has or lacks).
BUILTINS = {
    "builtins.len": len, "builtins.list": list, "builtins.tuple": tuple, "builtins.reversed": reversed,
    "builtins.bool": bool, "builtins.float": float, "builtins.int": int, "builtins.complex": complex,
    "builtins.sum": sum, "builtins.abs": abs, "operator.index": operator.index, "operator.contains": operator.contains,
    "builtins.format": lambda t: format(t, ".3f"), "numpy.asarray": numpy.asarray, "numpy.array": numpy.array,
}


def _public_functions() -> dict[str, Callable]:
    """name -> callable: torch's overridable functions (not Tensor methods) and each module's own."""
    found: dict[Any, str] = {}
    for func in torch.overrides.get_testing_overrides():
        name = torch.overrides.resolve_name(func)
        if name and not name.startswith("torch.Tensor."):
            found.setdefault(func, name)
    for module in MODULES:
        for attr in dir(module):
            obj = getattr(module, attr)
            if attr.startswith("_") or isinstance(obj, (type, types.ModuleType)) or not callable(obj):
                continue
            if not (getattr(obj, "__module__", None) or "torch").startswith("torch"):
                continue  # typing helpers and the like, imported into torch's namespaces
            found.setdefault(obj, f"{module.__name__}.{attr}")
    out = {}
    for func, name in found.items():
        short = name.rsplit(".", 1)[1]
        qualified = f"torch.overrides.{short}" if short.endswith("_torch_function") or "_torch_function_" in short \
            else name
        if qualified in EXCLUDED or name in EXCLUDED or NOT_TENSOR_FUNCTIONS.match(short):
            continue
        out[name] = func
    return dict(sorted(out.items()))


def _tensor_methods() -> list[str]:
    hooked = {name for name, value in vars(torch.Tensor).items()
              if getattr(value, "__module__", "").startswith("simsyft")}  # send, tag ...: simsyft's own
    return [name for name in dir(torch.Tensor)
            if not name.startswith("_") and name not in hooked and f"torch.Tensor.{name}" not in EXCLUDED]


FUNCTIONS = _public_functions()
METHODS = _tensor_methods()
_OVERRIDES = torch.overrides.get_testing_overrides()


def _arity(func: Callable) -> tuple[int, float]:
    """How many positional arguments `func` takes (min, max); unknown: any."""
    try:
        params = inspect.signature(_OVERRIDES.get(func, func)).parameters.values()
    except (TypeError, ValueError):
        return 0, math.inf
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    return required, math.inf if varargs else len(positional)


def _fill(template: Any, env: dict) -> Any:
    if isinstance(template, (tuple, list)):
        return type(template)(_fill(item, env) for item in template)
    return env[template] if isinstance(template, str) else template


def _copy(t: torch.Tensor) -> torch.Tensor:
    """What send() leaves on the worker, as a local twin: a contiguous leaf with the same grad."""
    out = t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(t.requires_grad)
    if t.grad is not None:
        out.grad = t.grad.detach().clone(memory_format=torch.contiguous_format)
    return out


def _seeded(func: Callable, *args: Any) -> Any:
    torch.default_generator.manual_seed(0)  # the CPU generator only: torch.manual_seed costs ~1 ms
    return func(*args)


def _fetch(value: Any, fetched: dict) -> Any:
    """`value` with every pointer replaced by its .get() (each pointer fetched once)."""
    if isinstance(value, PointerTensor):
        if id(value) not in fetched:
            fetched[id(value)] = (value, value.get())  # keeps the pointer alive: its id stays unique
        return fetched[id(value)][1]
    if isinstance(value, (tuple, list)):
        items = [_fetch(v, fetched) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple (PackedSequence)
            return type(value)(*items)
        return type(value)(items)
    return value


def _tensor_differs(remote: Any, local: torch.Tensor, what: str) -> str | None:
    """Same dtype, shape, requires_grad and values. Floats may differ in the last bits: MKL's
    LAPACK is not bitwise reproducible from call to call (lstsq), which is not what this checks."""
    if not isinstance(remote, torch.Tensor):
        return f"{what}: {type(remote).__name__} {remote!r:.80} where locally a tensor"
    if (remote.dtype, remote.shape, remote.requires_grad) != (local.dtype, local.shape, local.requires_grad):
        return (f"{what}: {remote.dtype} {tuple(remote.shape)} requires_grad={remote.requires_grad} != local "
                f"{local.dtype} {tuple(local.shape)} requires_grad={local.requires_grad}")
    if local.layout != torch.strided or remote.layout != torch.strided:
        return None if remote.layout == local.layout else f"{what}: layout {remote.layout} != {local.layout}"
    r, l = (torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1)) for t in (remote, local))
    if torch.equal(r.view(torch.uint8), l.view(torch.uint8)):  # bitwise, any dtype (complex32 too)
        return None
    if l.is_complex() and l.dtype.itemsize == 4:
        r, l = r.to(torch.complex64), l.to(torch.complex64)
    if (l.is_floating_point() or l.is_complex()) and torch.allclose(r, l, rtol=1e-5, atol=1e-6, equal_nan=True):
        return None
    return f"{what}: values differ: {r[:6].tolist()} vs local {l[:6].tolist()}"


def _differs(remote: Any, local: Any, what: str, grad: bool = False) -> str | None:
    """Why `remote` (fetched) is not `local`, or None. With `grad`, tensors' .grad too."""
    if isinstance(local, torch.Tensor):
        why = _tensor_differs(remote, local, what)
        if why is None and grad:
            why = _differs(remote.grad, local.grad, f"{what}.grad")
        return why
    if local is None:
        return None if remote is None else f"{what}: {remote!r:.80} where locally None"
    if isinstance(local, (tuple, list)):
        if type(remote) is not type(local) or len(remote) != len(local):
            return f"{what}: {type(remote).__name__} of {len(remote) if hasattr(remote, '__len__') else '?'} " \
                   f"!= local {type(local).__name__} of {len(local)}"
        for i, (r, l) in enumerate(zip(remote, local)):
            why = _differs(r, l, f"{what}[{i}]", grad)
            if why:
                return why
        return None
    if type(remote) is not type(local):
        return f"{what}: {type(remote).__name__} {remote!r:.80} != local {type(local).__name__} {local!r:.80}"
    if isinstance(local, float) and math.isnan(local) and math.isnan(remote):
        return None
    if isinstance(local, numpy.ndarray):
        return None if numpy.array_equal(remote, local, equal_nan=local.dtype.kind in "fc") else f"{what}: arrays"
    return None if remote == local else f"{what}: {remote!r:.80} != local {local!r:.80}"


class Checker:
    """Calls with pointers to `a` and `b` on `worker` against the same calls on local copies.

    Pointers are sent once and reused while calls on them raise (a refused call leaves its
    operands as they were); a call that returns is compared, and its operands fetched.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, worker: Any) -> None:
        self.a, self.b, self.worker = a, b, worker
        self.pointers: dict[str, PointerTensor] = {}

    def pointer(self, name: str) -> PointerTensor:
        if name not in self.pointers:
            self.pointers[name] = _copy(getattr(self, name)).send(self.worker)
        return self.pointers[name]

    def check(self, call: Callable, template: tuple) -> str | None:
        """Why `call(*template)` with pointers differs from the local call, or None (equal, or it raised)."""
        used = sorted({leaf for leaf in _leaves(template) if isinstance(leaf, str)})
        remote = outcome(_seeded, call, *_fill(template, {name: self.pointer(name) for name in used}))
        if not remote.ok:
            return None  # an error is always an allowed answer
        operands = {name: self.pointers.pop(name) for name in used}
        local_operands = {name: _copy(getattr(self, name)) for name in used}
        local = outcome(_seeded, call, *_fill(template, local_operands))
        fetched: dict = {}
        got = outcome(_fetch, remote.value, fetched)
        if not got.ok:
            return None  # .get() refused (e.g. a sparse result): an error, not a value
        if not local.ok:
            return f"locally raised {local.error.__name__}: {local.message[:100]}; with pointers gave {got.value!r:.100}"
        why = _differs(got.value, local.value, "result")
        for name in used:
            operand = outcome(_fetch, operands[name], fetched)
            why = why or (operand.ok and _differs(operand.value, local_operands[name], f"operand {name} after", True)) or None
        return why

    def reset(self) -> None:
        self.pointers.clear()
        self.worker.clear_objects()


def _leaves(template: Any) -> list:
    if isinstance(template, (tuple, list)):
        return [leaf for item in template for leaf in _leaves(item)]
    return [template]


# Small finite values: torch itself kills the process on some extremes (SIGFPE in lcm of
# INT64_MIN, MKL segfaults in eigvals of NaN), and the in-process worker shares this process;
# integers are also read as sizes (bincount, new_zeros). Numerics are test_remote_equals_local's.
_ELEMENTS = {torch.int64: st.integers(-8, 8), torch.bool: st.booleans(),
             torch.float32: st.one_of(st.integers(-8, 8).map(float), st.floats(-10, 10, width=32))}


@st.composite
def operands(draw: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """`a` and `b` of one dtype and shape; a float `a` is mostly a leaf that requires grad and
    has a .grad (what nn.utils and autograd functions read)."""
    dtype = draw(st.sampled_from((torch.float32, torch.float64, torch.int64, torch.bool)))
    shape = draw(st.sampled_from(((3, 3), (2, 3), (4,), (), (2, 1, 2), (0, 2))))
    elements = _ELEMENTS.get(dtype, _ELEMENTS[torch.float32])
    leaf = dtype.is_floating_point and draw(st.integers(0, 3)) > 0
    a = draw(tensors(dtype=dtype, shape=shape, requires_grad=leaf, grad=False, elements=elements))
    if leaf:
        a.grad = draw(tensors(dtype=dtype, shape=shape, elements=elements))
    b = draw(tensors(dtype=dtype, shape=shape, elements=elements))
    return a, b


def _leaf_with_grad() -> tuple[torch.Tensor, torch.Tensor]:
    """Issue 12's case: clip_grad_norm_(ptr, 2) on a parameter-like leaf with a .grad."""
    a = torch.tensor([[3.0, -4.0, 0.5], [1.0, 2.0, -2.0], [0.0, 8.0, 1.5]], requires_grad=True)
    a.grad = torch.tensor([[6.0, 1.0, -3.0], [0.25, -9.0, 2.0], [4.0, 4.0, -1.0]])
    return a, torch.tensor([[1.0, 0.5, -2.0], [3.0, -1.0, 0.0], [2.5, 1.0, 7.0]])


def _report(bad: list[str]) -> str:
    return f"{len(bad)} call(s) gave a different value with pointers than locally:\n" + "\n".join(bad[:40])


def _check_functions(names: list[str], a: torch.Tensor, b: torch.Tensor, worker: Any) -> list[str]:
    checker, bad = Checker(a, b, worker), []
    for name in names:
        func = FUNCTIONS[name]
        lo, hi = _arity(func)
        for template in FUNCTION_TEMPLATES:
            if lo <= len(template) <= hi:
                why = checker.check(func, template)
                if why and f"{name}{_show(template)}" not in KNOWN_BUGS:
                    bad.append(f"{name}{_show(template)}: {why}")
        checker.reset()
    return bad


def _show(template: tuple) -> str:
    return "(" + ", ".join(map(str, template)).replace("'", "") + ")"


def _method(name: str) -> Callable:
    return lambda t, *args: getattr(t, name)(*args)


@settings(max_examples=30 if THOROUGH else 2)
@given(pair=operands())
@example(pair=_leaf_with_grad())
def test_torch_functions(simsyft_inprocess, pair):
    (bob,) = simsyft_inprocess.world(1)
    bad = _check_functions(list(FUNCTIONS), *pair, bob)
    assert not bad, _report(bad)


@settings(max_examples=30 if THOROUGH else 2)
@given(pair=operands())
@example(pair=_leaf_with_grad())
def test_tensor_methods_and_properties(simsyft_inprocess, pair):
    (bob,) = simsyft_inprocess.world(1)
    a, b = pair
    checker, bad = Checker(a, b, bob), []
    for name in METHODS:
        attr = outcome(getattr, a, name)
        if not attr.ok or not callable(attr.value):  # a property: read it
            why = checker.check(lambda t: getattr(t, name), ("a",))
            bad += [f"torch.Tensor.{name}: {why}"] if why else []
            continue
        for template in METHOD_TEMPLATES:
            why = checker.check(_method(name), ("a", *template))
            if why and f"torch.Tensor.{name}{_show(template)}" not in KNOWN_BUGS:
                bad.append(f"torch.Tensor.{name}{_show(template)}: {why}")
        checker.reset()
    assert not bad, _report(bad)


@settings(max_examples=30 if THOROUGH else 10)
@given(pair=operands())
@example(pair=_leaf_with_grad())
def test_builtins_reading_a_tensor(simsyft_inprocess, pair):
    (bob,) = simsyft_inprocess.world(1)
    checker, bad = Checker(*pair, bob), []
    for name, func in BUILTINS.items():
        for template in (("a",), ("a", "b")) if name == "operator.contains" else (("a",),):
            why = checker.check(func, template)
            if why:
                bad.append(f"{name}{_show(template)}: {why}")
    assert not bad, _report(bad)


def test_the_enumeration_covers_the_reported_class():
    """The enumeration reaches the functions issue 12 named, and enough of torch to mean it."""
    for name in ("torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_value_",
                 "torch.nn.utils.convert_parameters.parameters_to_vector", "torch.autograd.grad",
                 "torch.add", "torch.nn.functional.relu", "torch.linalg.vector_norm", "torch.fft.fft",
                 "torch.special.expit", "torch.nn.init.uniform_"):
        assert any(n == name or n.endswith("." + name.rsplit(".", 1)[1]) and FUNCTIONS[n] is _resolve(name)
                   for n in FUNCTIONS), name
    assert len(FUNCTIONS) > 900 and len(METHODS) > 500


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)
