"""AutogradTensor: reverse-mode autograd over fixed-precision shared tensors (PySyft 0.2's
`share(..., requires_grad=True)`, tutorial Part 12).

Owns the graph (each result remembers its parents and how to map its gradient onto them) and
`backward`. torch's own autograd cannot run here: the values are integer shares on other
processes. Every gradient is itself a fixed-precision shared tensor, computed with the same
secure ops as the forward pass, so nobody sees a gradient until someone calls `.get()` on it.
Covers what Part 12 and small CNN training use: + - * @ (matmul, mm, F.linear), ** 2, sum,
mean over all values, t, view/reshape, neg and relu.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import compare
from .additive import AdditiveSharingTensor, Shaped
from .fixed import FixedPrecisionTensor

__all__ = ["AutogradTensor", "resolve"]


def resolve(value: Any) -> Any:
    """A model's parameter stands for its shared value (smpc/nn.py's SharedParameter)."""
    return getattr(value, "_smpc_value", value) if isinstance(value, torch.nn.Parameter) else value


class AutogradTensor(Shaped):
    """A FixedPrecisionTensor (shared or not) that records the ops made with it, for backward().

    >>> w = torch.tensor([[0.5]]).fix_prec().share(bob, alice, crypto_provider=james, requires_grad=True)
    >>> loss = (w * w).sum(); loss.backward()
    >>> w.grad.get().float_prec()
    tensor([[1.]])
    """

    def __init__(self, child: Any, requires_grad: bool = True,
                 grad_fn: tuple[tuple, Callable] | None = None) -> None:
        self.child = child
        self.requires_grad = requires_grad
        self.grad_fn = grad_fn  # (parents, backward: gradient -> one gradient per parent)
        self.grad: AutogradTensor | None = None

    def __repr__(self) -> str:
        return "(Wrapper)>AutogradTensor>" + repr(self.child).removeprefix("(Wrapper)>")

    __str__ = __repr__

    def __bool__(self) -> bool:
        raise ValueError("Additive shared tensors can't be converted boolean values. You should decrypt it first.")

    @property
    def shape(self) -> torch.Size:
        return self.child.shape

    def get(self) -> Any:
        """The FixedPrecisionTensor, reconstructed (PySyft: `loss.get().float_precision()`)."""
        return self.child.get()

    def float_precision(self) -> Any:
        return self.child.float_precision()

    float_prec = float_precision

    def detach(self) -> "AutogradTensor":
        return AutogradTensor(self.child, requires_grad=False)

    # -- the graph ------------------------------------------------------------------------------
    def _op(self, child: Any, parents: tuple, backward: Callable) -> "AutogradTensor":
        tracked = tuple(p for p in parents if isinstance(p, AutogradTensor))
        if not any(p.requires_grad for p in tracked):
            return AutogradTensor(child, requires_grad=False)
        return AutogradTensor(child, True, (parents, backward))

    def backward(self, grad: Any = None) -> None:
        """Accumulate d self / d leaf into every leaf's `.grad` (a scalar self seeds with 1)."""
        if grad is None:
            if self.shape.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            grad = _public_like(self.child, torch.ones(self.shape))
        else:
            grad = _child(grad)
        order = _topological(self)
        grads = {id(self): grad}
        for node in order:
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.grad_fn is None:  # a leaf: accumulate, as torch does
                node.grad = AutogradTensor(g if node.grad is None else _accumulate(node.grad.child, g),
                                           requires_grad=False)
                continue
            parents, backward = node.grad_fn
            for parent, pg in zip(parents, backward(g)):
                if isinstance(parent, AutogradTensor) and parent.requires_grad and pg is not None:
                    grads[id(parent)] = pg if id(parent) not in grads else _accumulate(grads[id(parent)], pg)

    # -- ops ------------------------------------------------------------------------------------
    def add(self, other: Any) -> "AutogradTensor":
        o = resolve(other)
        a_shape, b_shape = self.shape, _shape(o)
        return self._op(self.child + _child(o), (self, o),
                        lambda g: (_unbroadcast(g, a_shape), _unbroadcast(g, b_shape)))

    __add__ = __radd__ = add

    def sub(self, other: Any) -> "AutogradTensor":
        o = resolve(other)
        a_shape, b_shape = self.shape, _shape(o)
        return self._op(self.child - _child(o), (self, o),
                        lambda g: (_unbroadcast(g, a_shape), _unbroadcast(-g, b_shape)))

    __sub__ = sub

    def __rsub__(self, other: Any) -> "AutogradTensor":
        return (-self).add(other)

    def __neg__(self) -> "AutogradTensor":
        return self._op(-self.child, (self,), lambda g: (-g,))

    neg = __neg__

    def mul(self, other: Any) -> "AutogradTensor":
        o = resolve(other)
        a, b = self.child, _child(o)
        a_shape, b_shape = self.shape, _shape(o)
        return self._op(_times(a, b), (self, o),
                        lambda g: (_unbroadcast(_times(g, b), a_shape),
                                   _unbroadcast(_times(g, a), b_shape) if isinstance(o, AutogradTensor) else None))

    __mul__ = __rmul__ = mul

    def __pow__(self, power: Any) -> "AutogradTensor":
        if power != 2:
            raise NotImplementedError(f"** {power!r} on a shared tensor: only ** 2 (x * x) is built")
        return self.mul(self)

    pow = __pow__

    def matmul(self, other: Any) -> "AutogradTensor":
        o = resolve(other)
        a, b = self.child, _child(o)
        return self._op(a.matmul(b), (self, o),
                        lambda g: (g.matmul(b.t()), a.t().matmul(g) if isinstance(o, AutogradTensor) else None))

    mm = __matmul__ = matmul

    def t(self) -> "AutogradTensor":
        return self._op(self.child.t(), (self,), lambda g: (g.t(),))

    def view(self, *shape: Any) -> "AutogradTensor":
        before = self.shape
        return self._op(self.child.view(*shape), (self,), lambda g: (g.reshape(*before),))

    reshape = view

    def sum(self, *args: Any, **kwargs: Any) -> "AutogradTensor":
        if args or kwargs:
            raise NotImplementedError("sum(dim) on an AutogradTensor: only the sum of all values is built")
        shape = self.shape
        return self._op(self.child.sum(), (self,), lambda g: (_expand(g, shape),))

    def mean(self) -> "AutogradTensor":
        count = self.shape.numel()
        return self.sum() / count

    def __truediv__(self, divisor: Any) -> "AutogradTensor":
        if isinstance(divisor, (AutogradTensor, FixedPrecisionTensor, AdditiveSharingTensor)):
            raise NotImplementedError("division by a shared tensor is not built")
        return self._op(self.child / divisor, (self,), lambda g: (g / divisor,))

    def relu(self, inplace: bool = False) -> "AutogradTensor":
        """One comparison; its 0/1 mask serves the forward pass and the gradient."""
        fixed = self.child
        if not isinstance(fixed, FixedPrecisionTensor) or not isinstance(fixed.child, AdditiveSharingTensor):
            return self._op(fixed.relu(), (self,), lambda g: (_times(g, (fixed.child > 0).long()),))
        mask = 1 - compare.msb(fixed.child)
        return self._op(fixed._like(fixed.child * mask), (self,), lambda g: (_masked(g, mask),))

    def linear(self, weight: Any, bias: Any = None) -> "AutogradTensor":
        out = self.matmul(resolve(weight).t())
        return out if bias is None else out + resolve(bias)

    @classmethod
    def __torch_function__(cls, func: Any, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        method = _TORCH_FUNCTIONS.get(func)
        if method is None:
            return NotImplemented
        first = resolve(args[0])
        if not isinstance(first, AutogradTensor):
            raise TypeError(f"{func.__name__}: mixing shared tensors with and without requires_grad is not built")
        return getattr(first, method)(*args[1:], **kwargs)


_TORCH_FUNCTIONS = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.matmul: "matmul", torch.mm: "mm",
                    torch.sum: "sum", torch.neg: "neg", torch.relu: "relu", torch.nn.functional.relu: "relu",
                    torch.nn.functional.linear: "linear", torch.t: "t"}


def _topological(root: AutogradTensor) -> list:
    """The nodes of root's graph, each before its parents (reverse post-order, no recursion)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if node.grad_fn is not None:
            for parent in node.grad_fn[0]:
                if isinstance(parent, AutogradTensor) and parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))
    return order[::-1]


def _accumulate(a: FixedPrecisionTensor, b: FixedPrecisionTensor) -> FixedPrecisionTensor:
    """a + b with a shared operand on the left (a local tensor cannot add a shared one)."""
    return b + a if isinstance(b.child, AdditiveSharingTensor) else a + b


def _child(value: Any) -> Any:
    return value.child if isinstance(value, AutogradTensor) else value


def _shape(value: Any) -> tuple:
    if isinstance(value, (int, float)):
        return ()
    return tuple(value.shape)


def _public_like(fixed: FixedPrecisionTensor, value: torch.Tensor) -> FixedPrecisionTensor:
    """A public value as an unshared FixedPrecisionTensor of `fixed`'s encoding."""
    return value.fix_precision(base=fixed.base, precision_fractional=fixed.precision_fractional)


def _times(a: Any, b: Any) -> Any:
    """a * b where either may be public: a FixedPrecisionTensor on the left does the encoding."""
    if not isinstance(a, FixedPrecisionTensor) and isinstance(b, FixedPrecisionTensor):
        return b.mul(a)
    return a.mul(b) if isinstance(a, FixedPrecisionTensor) else a * b


def _masked(g: FixedPrecisionTensor, mask: AdditiveSharingTensor) -> FixedPrecisionTensor:
    """g * mask for a 0/1 shared mask: no truncation (the mask carries no scale)."""
    child = g.child
    return g._like(child * mask if isinstance(child, AdditiveSharingTensor) else mask * child)


def _expand(g: Any, shape: tuple) -> Any:
    child = g.child
    return g._like(child.expand(*shape))


def _unbroadcast(g: Any, shape: tuple) -> Any:
    """Sum a gradient over the dims broadcasting added, back to the operand's `shape`."""
    if g is None or not shape and tuple(g.shape) == ():
        return g
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, size in enumerate(shape):
        if size == 1 and g.shape[i] != 1:
            g = g._like(g.child.sum(i).unsqueeze(i))
    return g


FixedPrecisionTensor._autograd = staticmethod(AutogradTensor)  # share(..., requires_grad=True)
