"""MultiPointerTensor: pointers to several workers, used as one (PySyft 0.2's `x.send(bob, alice)`).

Owns `MultiPointerTensor`, `send_many` (what `tensor.send(bob, alice)` does) and
`combine_pointers`. It holds one PointerTensor per worker in `.child` (a dict by worker id,
as PySyft's) and owns no remote object itself: an op runs on each worker through that
worker's PointerTensor, and dropping the multi-pointer drops its pointers, which free their
data. Imports pointer.py and handles.py; never the worker.

Note [One worker after another]
    An op runs on the workers in `.child`'s order, each call synchronous (or pipelined
    inside `sy.pipeline()`, as for any pointer). If it fails on one worker, the error is
    raised and the results of the workers before it are dropped (and freed); an in-place
    op has then changed the data on those workers only, as a loop over the pointers would.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable

import torch

from . import handles
from . import pointer as _pointer
from .errors import LocationMismatchError, RemoteValueError
from .facts import TensorFacts
from .ids import new_id
from .pointer import PointerTensor
from .wire import ops
from .wire.args import walk as args_walk

__all__ = ["MultiPointerTensor", "combine_pointers", "send_many"]

# Answered from each pointer's cached metadata (no round trip); the pointers must agree.
_FACTS = frozenset(name for name in dir(TensorFacts) if not name.startswith("_")) | {"requires_grad"}


class MultiPointerTensor:
    """One PointerTensor per worker, used as one tensor: ops run on every worker.

    >>> x = torch.tensor([1, 2, 3]).send(bob, alice)
    >>> x
    (Wrapper)>[MultiPointerTensor]
    	-> [PointerTensor | me:... -> bob:...]
    	-> [PointerTensor | me:... -> alice:...]
    >>> (x * 2).get()
    [tensor([2, 4, 6]), tensor([2, 4, 6])]
    >>> (x * 2).get(sum_results=True)
    tensor([ 4,  8, 12])
    """

    __slots__ = ("child", "id", "owner", "_wrapped", "__weakref__")

    def __init__(self, children: Iterable[PointerTensor] = (), owner: Any = None, id: int | None = None,
                 wrapped: bool = False) -> None:
        child: dict[str, PointerTensor] = {}
        for pointer in children:
            if type(pointer) is not PointerTensor:
                raise TypeError(f"a MultiPointerTensor holds PointerTensors, got {type(pointer).__name__}; "
                                "build one with tensor.send(bob, alice) or sy.combine_pointers(p1, p2)")
            pointer._check_live()
            name = pointer.location.id
            if name in child:
                # PySyft keyed the pointers by worker id: a second one silently replaced the first.
                raise ValueError(f"two pointers to worker {name!r}: a MultiPointerTensor holds one pointer per "
                                 "worker (its .child is a dict by worker id)")
            child[name] = pointer
        if not child:
            raise ValueError("a MultiPointerTensor needs at least one pointer")
        self.child = child
        self.id = new_id() if id is None else id
        self.owner = owner if owner is not None else next(iter(child.values())).owner
        # PySyft showed the pointers of combine_pointers() as the wrappers they were given.
        self._wrapped = wrapped

    # -- what PySyft showed --------------------------------------------------
    def __repr__(self) -> str:
        out = "(Wrapper)>[MultiPointerTensor]"
        for pointer in self.child.values():
            text = repr(pointer)
            out += "\n\t-> " + (text if self._wrapped else text.removeprefix("(Wrapper)>"))
        return out

    __str__ = __repr__

    @property
    def locations(self) -> list:
        """The worker handles, in `.child`'s order."""
        return [pointer.location for pointer in self.child.values()]

    # -- fetching -------------------------------------------------------------
    def get(self, sum_results: bool = False) -> Any:
        """The tensors, one per worker in `.child`'s order, removed from the workers; with
        `sum_results`, their sum (PySyft's `get(sum_results=True)`)."""
        for pointer in self.child.values():
            pointer._check_live()  # all or nothing: none is fetched if one was already
        results = [pointer.get() for pointer in self.child.values()]
        if not sum_results:
            return results
        if all(result is None for result in results):
            return None  # pointers to nothing (the result of backward())
        return sum(results)  # Python's sum, as PySyft: 0 + t0 + t1 + ...

    def copy(self) -> "MultiPointerTensor":
        """A remote copy on each worker."""
        return MultiPointerTensor([pointer.copy() for pointer in self.child.values()], self.owner)

    def send(self, *workers: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "a MultiPointerTensor cannot be sent on: .get() it first, or send each pointer in its .child")

    def move(self, *workers: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "a MultiPointerTensor cannot be moved: move each pointer in its .child, then sy.combine_pointers them")

    # -- attributes that live remotely ---------------------------------------
    @property
    def requires_grad(self) -> bool:
        return _agree("requires_grad", {name: p.requires_grad for name, p in self.child.items()})

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        for pointer in self.child.values():
            pointer.requires_grad = value

    @property
    def grad(self) -> "MultiPointerTensor | None":
        """The gradient on each worker as a MultiPointerTensor; None if no worker has one (an error if only some do)."""
        return _run(torch.Tensor.grad.__get__, (self,), {})

    @grad.setter
    def grad(self, value: Any) -> None:
        _run(torch.Tensor.grad.__set__, (self, value), {})

    @property
    def data(self) -> "MultiPointerTensor":
        return _run(torch.Tensor.data.__get__, (self,), {})

    @data.setter
    def data(self, value: Any) -> None:
        _run(torch.Tensor.data.__set__, (self, value), {})

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class lacks; underscore names are refused, as on a pointer.
        if name.startswith("_"):
            raise AttributeError(f"'MultiPointerTensor' object has no attribute {name!r}")
        if name == "location":
            raise AttributeError("a MultiPointerTensor points to several workers: see .locations, or .child "
                                 f"(a dict by worker id): {list(self.child)}")
        if name in _FACTS:
            if isinstance(inspect.getattr_static(PointerTensor, name), property):
                return _agree(name, {key: getattr(p, name) for key, p in self.child.items()})
            return lambda *args, **kwargs: _agree(
                name, {key: getattr(p, name)(*args, **kwargs) for key, p in self.child.items()})
        attr = getattr(torch.Tensor, name, None)
        if attr is None:
            raise AttributeError(f"'MultiPointerTensor' object has no attribute {name!r}")
        if hasattr(attr, "__get__") and not callable(attr):  # a property such as T, mT, is_leaf
            getter = getattr(attr, "__get__")
            if not ops.is_allowed(ops.op_name_or_repr(getter)):
                raise AttributeError(f"'MultiPointerTensor' cannot read {name!r} remotely: not in the op allowlist")
            return _run(getter, (self,), {})
        return lambda *args, **kwargs: _run(attr, (self, *args), kwargs)

    def __len__(self) -> int:
        return _agree("len()", {name: len(p) for name, p in self.child.items()})

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Also reached when a single pointer's op gets one (`ptr + mpt`): the argument cannot travel.
        raise TypeError(f"a MultiPointerTensor cannot be pickled, copied or sent: it stands for objects on workers "
                        f"{list(self.child)}; .get() the tensors first, or, in an op with a single pointer, "
                        "combine pointers to every worker (sy.combine_pointers) and put the MultiPointerTensor first")

    # Operators compare remotely, so identity is what hashes.
    __hash__ = object.__hash__

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not all(issubclass(t, (torch.Tensor, PointerTensor, MultiPointerTensor)) for t in types):
            return NotImplemented  # let torch raise its usual TypeError
        return _run(func, args, kwargs or {})


def _forwarder(method: Callable) -> Callable:
    def forward(self: MultiPointerTensor, *args: Any) -> Any:
        return _run(method, (self, *args), {})
    forward.__name__ = method.__name__
    return forward


def _needs_value(name: str) -> Callable:
    def refuse(self: MultiPointerTensor, *args: Any) -> Any:
        raise RemoteValueError(f"{name}() needs the tensors' values, which live on workers {list(self.child)}: "
                               f"call .get() first")
    return refuse


for _dunder in ops.OPERATOR_DUNDERS:
    _method = getattr(torch.Tensor, _dunder, None)
    if _method is not None:
        setattr(MultiPointerTensor, _dunder, _forwarder(_method))
for _dunder in ("__bool__", "__float__", "__int__", "__index__", "__complex__"):
    setattr(MultiPointerTensor, _dunder, _needs_value(_dunder))
for _dunder in ("item", "tolist", "numpy"):
    setattr(MultiPointerTensor, _dunder, _needs_value(_dunder))
del _dunder, _method


# -- building ------------------------------------------------------------------

def send_many(tensor: torch.Tensor, workers: Iterable[Any], **kwargs: Any) -> MultiPointerTensor:
    """`tensor.send(bob, alice)`: a copy of `tensor` on each worker, as one MultiPointerTensor."""
    workers = list(workers)
    if not workers:
        raise TypeError("send() needs a worker: tensor.send(bob), or tensor.send(bob, alice) for several")
    names = [getattr(worker, "id", None) for worker in workers]
    repeated = sorted({name for name in names if names.count(name) > 1}, key=str)
    if repeated:
        raise ValueError(f"send() got worker {repeated[0]!r} twice: a MultiPointerTensor holds one pointer per worker")
    # If one send fails, the copies already made are freed with their pointers.
    return MultiPointerTensor([handles.send(tensor, worker, **kwargs) for worker in workers])


def combine_pointers(*pointers: PointerTensor) -> MultiPointerTensor:
    """One MultiPointerTensor over pointers to different workers (PySyft's `sy.combine_pointers`).

    >>> x = sy.combine_pointers(torch.tensor([1]).send(bob), torch.tensor([2]).send(alice))
    >>> x.get(sum_results=True)
    tensor([3])
    """
    if len(pointers) == 1 and isinstance(pointers[0], (list, tuple)):
        pointers = tuple(pointers[0])
    for pointer in pointers:
        if isinstance(pointer, MultiPointerTensor):
            raise TypeError("combine_pointers() takes PointerTensors, got a MultiPointerTensor: pass the pointers "
                            "of its .child instead (*mpt.child.values())")
    return MultiPointerTensor(pointers, wrapped=True)


# Note [Combining pointers]: PointerTensor.combine is PySyft's `p1.combine(p2)`; this module
# builds on pointer.py, so it gives pointer.py the function when imported (simsyft/__init__ imports it).
PointerTensor._combine = staticmethod(combine_pointers)
_pointer._MANY_PLACES = (MultiPointerTensor,)


# -- one op on every worker -------------------------------------------------------

def _run(func: Callable, args: tuple, kwargs: dict) -> Any:
    """Run `func` once per worker, each multi-pointer in the arguments replaced by its pointer
    to that worker, and gather the results by worker (Note [One worker after another])."""
    op = ops.op_name_or_repr(func)
    multis: list[MultiPointerTensor] = []
    strays: list[Any] = []

    def take(multi: MultiPointerTensor) -> MultiPointerTensor:
        multis.append(multi)
        return multi

    def leaf(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            strays.append(value)
        return value

    def single(pointer: PointerTensor) -> PointerTensor:
        strays.append(pointer)
        return pointer

    args_walk((args, kwargs), {MultiPointerTensor: take, PointerTensor: single}, leaf)
    names = list(multis[0].child)
    for other in multis[1:]:
        if set(other.child) != set(names):
            raise LocationMismatchError(
                f"{op} got MultiPointerTensors on {names} and on {list(other.child)}: they pair their pointers by "
                "worker, so both need the same workers")
    if strays:
        stray = strays[0]
        if type(stray) is PointerTensor:
            where = f"a pointer to {stray.location.id!r}"
            hint = "give it one pointer per worker (sy.combine_pointers) or .get() it"
        else:
            where = "a local tensor on 'me'"
            hint = f"send it to each of them first (t.send({', '.join(names)}))"
        raise LocationMismatchError(f"{op} got a MultiPointerTensor on {names} and {where}; {hint}")
    results = {}
    for name in names:
        pick = {MultiPointerTensor: lambda multi: multi.child[name]}
        w_args, w_kwargs = args_walk((args, kwargs), pick)
        results[name] = PointerTensor.__torch_function__(func, (PointerTensor,), w_args, w_kwargs)
    return _gather(results, multis, op)


def _gather(results: dict[str, Any], inputs: list[MultiPointerTensor], op: str) -> Any:
    """The per-worker results as one: pointers -> a MultiPointerTensor (an input's own pointers,
    as an in-place op returns them -> that input), containers element by element, values that
    every worker agrees on -> the value."""
    first = next(iter(results.values()))
    if all(type(r) is PointerTensor for r in results.values()):
        for multi in inputs:
            if all(multi.child[name] is r for name, r in results.items()):
                return multi
        return MultiPointerTensor(results.values())
    if isinstance(first, (tuple, list)) and all(type(r) is type(first) and len(r) == len(first)
                                                 for r in results.values()):
        items = [_gather({name: r[i] for name, r in results.items()}, inputs, op) for i in range(len(first))]
        return type(first)(items)  # tuple, list, or a torch.return_types.* (which takes one sequence)
    return _agree(op, results)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _agree(what: str, values: dict[str, Any]) -> Any:
    """The one value every worker gave; a clear error where they differ (never one worker's answer)."""
    first = next(iter(values.values()))
    if all(_same(first, value) for value in values.values()):
        return first
    shown = ", ".join(f"{name}: {value!r}" for name, value in values.items())
    raise ValueError(f"{what} differs between the workers of this MultiPointerTensor ({shown}); "
                     "ask each pointer in its .child")
