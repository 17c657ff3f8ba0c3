"""The op grammar: `Op` (one torch call written as code, run the same way on tensors and
on pointers) and `ops()`, a strategy drawing ops by kind for given operands.

Part of simsyft.testing (imported by tests only; imports hypothesis).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from hypothesis import strategies as st

from .strategies import DTYPES, Meta, _rarely, scalars, shapes



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
