"""AdditiveSharingTensor: a secret split into additive shares, one on each party's worker.

Owns the client's view of a shared tensor (one PointerTensor per party, the ring, the crypto
provider), PySyft 0.2's repr, `get` (reconstruct, freeing the shares) and the secure ops:
local ones run on each share through the pointer API (allowlisted ops); `*` and `mm` between
two shared tensors run the Beaver protocol of worker/mpc.py (Note [Who talks when] there);
division by a public integer truncates each share (Note [Truncation]). The client sends
commands and reads Acks: it never sees a share's value until `.get()`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import ring
from ..errors import LocationMismatchError
from ..handles import local_worker
from ..ids import new_id
from ..pointer import PointerTensor
from ..wire import messages

__all__ = ["AdditiveSharingTensor", "Shaped", "check_keywords", "free_dealt", "share_local"]

# Note [Truncation]
#     Dividing a shared x by a public d cannot be done exactly share by share: floor(s0/d) +
#     floor(s1/d) is off by the wrap of s0 + s1 around the ring. With two parties the wrap happens
#     only with probability |x| / 2^63 (ring 2^64; |x| / 2^31 for 2^32), and party 0 taking the
#     floor while party 1 takes the ceiling leaves the result within 1 of x/d (SecureML, as
#     PySyft's share-by-share division). With three parties or more a wrap is likely (1/4 and
#     more), so their shares are first collapsed into two, worker to worker (parties 2.. move a
#     copy of their share to party 0, which adds them), truncated as above, then re-randomised
#     on all parties with fresh shares of zero from the client (PySyft's refresh()). No single
#     party learns anything; the bound is the two-party one.


# PySyft's keywords that change nothing here: no_wrap (there are no wrappers), check_range (always
# checked), field (dtype says it), protocol ("snn", the only one).
_IGNORED = {"no_wrap", "check_range", "field", "protocol"}


def check_keywords(call: str, kwargs: dict) -> None:
    """Refuse what this part does not do, rather than ignore it (a shared tensor with grads, say)."""
    if kwargs.get("requires_grad"):
        raise NotImplementedError(f"{call}(requires_grad=True): autograd runs on fixed precision tensors shared "
                                  "from the client: x.fix_precision().share(..., requires_grad=True)")
    unknown = set(kwargs) - _IGNORED - {"requires_grad"}
    if unknown:
        raise TypeError(f"{call}() got unexpected keyword argument(s) {sorted(unknown)}")


class Shaped:
    """`size()` and `dim()` derived from a `shape` property (the SMPC wrappers each define shape)."""

    shape: torch.Size

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)


def free_dealt(handles: list, ids: list) -> None:
    """Free `ids[i]` on `handles[i]`, quietly: what an interrupted protocol dealt to the live parties."""
    for handle, object_ids in zip(handles, ids):
        try:
            for object_id in object_ids:
                handle.connection.free(object_id)
        except Exception:  # noqa: BLE001 - a dead party's store went with it
            pass


class AdditiveSharingTensor(Shaped):
    """A tensor split into additive shares in the 2^64 (dtype="long") or 2^32 ("int") ring.

    >>> x = torch.tensor([25]).share(bob, alice, crypto_provider=james)
    >>> (x * x + 1).get()
    tensor([626])
    """

    def __init__(self, shares: dict[str, PointerTensor], crypto_provider: Any, dtype: str = "long",
                 protocol: str = "snn") -> None:
        self.child = shares
        self.dtype = dtype
        self.torch_dtype, self.field = ring.RINGS[dtype]
        # PySyft's default crypto provider is the local worker "me" (then the client deals triples).
        self.crypto_provider = local_worker if crypto_provider is None else crypto_provider
        self.protocol = protocol

    # -- what PySyft showed ----------------------------------------------------------------
    def _body(self) -> str:
        out = "[AdditiveSharingTensor]"
        for pointer in self.child.values():
            out += "\n\t-> " + repr(pointer)
        if self.crypto_provider is not None:
            out += f"\n\t*crypto provider: {self.crypto_provider.id}*"
        return out

    def __repr__(self) -> str:
        return "(Wrapper)>" + self._body()

    __str__ = __repr__

    def __bool__(self) -> bool:
        raise ValueError("Additive shared tensors can't be converted boolean values. You should decrypt it first.")

    @property
    def locations(self) -> list:
        return [p.location for p in self.child.values()]

    @property
    def shape(self) -> torch.Size:
        return next(iter(self.child.values())).shape

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return self.shape[0]

    # -- reconstruction --------------------------------------------------------------------
    def get(self) -> torch.Tensor:
        """Fetch every share (freeing it on its worker) and return the value they sum to."""
        return ring.reconstruct([pointer.get() for pointer in self.child.values()])

    # -- helpers ----------------------------------------------------------------------------
    def _like(self, shares: dict) -> "AdditiveSharingTensor":
        return AdditiveSharingTensor(shares, self.crypto_provider, self.dtype, self.protocol)

    def _map(self, fn) -> "AdditiveSharingTensor":
        return self._like({name: fn(p) for name, p in self.child.items()})

    def _check_same(self, other: "AdditiveSharingTensor", op: str) -> None:
        if set(other.child) != set(self.child):
            raise LocationMismatchError(
                f"{op} got tensors shared between {sorted(self.child)} and {sorted(other.child)}; share both "
                "between the same workers")
        if other.dtype != self.dtype:
            raise TypeError(f"{op} got shares in different rings ({self.dtype!r}: 2^{self.field.bit_length() - 1}, "
                            f"{other.dtype!r}: 2^{other.field.bit_length() - 1}); share both with the same dtype")
        mine, theirs = _provider_id(self.crypto_provider), _provider_id(other.crypto_provider)
        if mine != theirs:
            raise ValueError(f"{op} got tensors with different crypto providers ({mine!r} and {theirs!r}); "
                             "share both with the same crypto_provider")

    def _public(self, value: Any, op: str) -> Any:
        """A public operand as the ring sees it: an int, or an integer tensor of the ring's dtype."""
        if isinstance(value, bool) or isinstance(value, int):
            return value
        if isinstance(value, torch.Tensor) and not isinstance(value, PointerTensor):
            if value.is_floating_point() or value.is_complex():
                raise TypeError(f"{op}: an AdditiveSharingTensor and a {value.dtype} tensor; encode it with "
                                "fix_precision() first")
            return value.to(self.torch_dtype)
        if isinstance(value, float):
            raise TypeError(f"{op}: an AdditiveSharingTensor and a float; use fix_precision() on both")
        raise TypeError(f"{op}: unsupported operand {type(value).__name__} for an AdditiveSharingTensor")

    def _on_each(self, value: Any) -> dict:
        """A public tensor sent to each party (the parties compute with it locally)."""
        if isinstance(value, torch.Tensor):
            return {name: value.send(p.location) for name, p in self.child.items()}
        return {name: value for name in self.child}

    # -- local ops -----------------------------------------------------------------------------
    def add(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._check_same(other, "add")
            return self._like({name: p + other.child[name] for name, p in self.child.items()})
        public = self._public(other, "add")
        first = next(iter(self.child))  # a public value is added by one party only
        if isinstance(public, torch.Tensor):
            shape = torch.broadcast_shapes(self.shape, public.shape)
            public = public.send(self.child[first].location)
            return self._like({name: (p + public if name == first else p.expand(shape) + 0)
                               for name, p in self.child.items()})
        # The other parties copy their shares: the result must not share a pointer with self.
        return self._like({name: (p + public if name == first else p.copy()) for name, p in self.child.items()})

    __add__ = __radd__ = add

    def __neg__(self) -> "AdditiveSharingTensor":
        return self._map(lambda p: -p)

    neg = __neg__

    def sub(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._check_same(other, "sub")
            return self._like({name: p - other.child[name] for name, p in self.child.items()})
        return self.add(-self._public(other, "sub"))

    __sub__ = sub

    def __rsub__(self, other: Any) -> "AdditiveSharingTensor":
        return (-self).add(other)

    def mul(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            return _beaver(self, other, "mul")
        return self._public_op(other, "mul", lambda p, v: p * v)

    __mul__ = __rmul__ = mul

    def matmul(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            return _beaver(self, other, "matmul")
        return self._public_op(other, "matmul", lambda p, v: p.matmul(v))

    mm = __matmul__ = matmul

    def _public_op(self, other: Any, op: str, fn) -> "AdditiveSharingTensor":
        public = self._public(other, op)
        values = self._on_each(public)
        result = self._like({name: fn(p, values[name]) for name, p in self.child.items()})
        zero = (public == 0).any() if isinstance(public, torch.Tensor) else public == 0
        # Every share of a zero is zero: add fresh shares of zero so no share gives it away (PySyft).
        return result.refresh() if zero else result

    def refresh(self) -> "AdditiveSharingTensor":
        """The same value under fresh shares (a fresh sharing of zero added)."""
        return self.add(share_local(torch.zeros(self.shape, dtype=self.torch_dtype), self.locations,
                                    self.crypto_provider, self.dtype))

    def sum(self, *args: Any, **kwargs: Any) -> "AdditiveSharingTensor":
        kwargs.setdefault("dtype", self.torch_dtype)  # int32 sums would widen to int64 otherwise
        return self._map(lambda p: p.sum(*args, **kwargs))

    def mean(self, *args: Any, **kwargs: Any) -> "AdditiveSharingTensor":
        """PySyft's: the sum divided by the number of values (Note [Truncation])."""
        total = self.sum(*args, **kwargs)
        dims = args[0] if args else kwargs.get("dim", range(self.dim()))
        dims = (dims,) if isinstance(dims, int) else dims
        count = 1
        for i, size in enumerate(self.shape):
            if i in dims or i - self.dim() in dims:
                count *= size
        return total.div(count)

    def div(self, divisor: Any) -> "AdditiveSharingTensor":
        """Division by a public positive integer (Note [Truncation]): within 1 of x / divisor."""
        if isinstance(divisor, AdditiveSharingTensor):
            raise NotImplementedError("division by a shared tensor needs comparisons (SecureNN), not built yet")
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor <= 0:
            raise TypeError(f"an AdditiveSharingTensor divides by a public positive int, got {divisor!r}")
        return truncate(self, divisor)

    __truediv__ = __floordiv__ = div

    # -- free ops on every share (shape only) -------------------------------------------------------
    def view(self, *shape: Any) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.view(*shape))

    def reshape(self, *shape: Any) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.reshape(*shape))

    def t(self) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.t())

    def transpose(self, dim0: int, dim1: int) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.transpose(dim0, dim1))

    def contiguous(self) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.contiguous())

    def expand(self, *shape: Any) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.expand(*shape))

    def unsqueeze(self, dim: int) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.unsqueeze(dim))

    def squeeze(self, *dim: int) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.squeeze(*dim))

    def __getitem__(self, index: Any) -> "AdditiveSharingTensor":
        if isinstance(index, torch.Tensor) and index.dtype != torch.bool and index.is_floating_point():
            raise TypeError("index an AdditiveSharingTensor with ints, slices or integer tensors")
        return self._map(lambda p: p[index])

    def copy(self) -> "AdditiveSharingTensor":
        return self._map(lambda p: p.copy())

    @classmethod
    def __torch_function__(cls, func: Any, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.cat, torch.stack):
            items = list(args[0])
            first = items[0]
            for other in items[1:]:
                first._check_same(other, func.__name__)
            return first._like({name: func([t.child[name] for t in items], *args[1:], **kwargs)
                                for name in first.child})
        method = _TORCH_FUNCTIONS.get(func)
        if method is None:
            return NotImplemented
        return getattr(args[0], method)(*args[1:], **kwargs)


_TORCH_FUNCTIONS = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.matmul: "matmul",
                    torch.mm: "mm", torch.sum: "sum", torch.mean: "mean", torch.neg: "neg"}


def _provider_id(provider: Any) -> str | None:
    return None if provider is None else provider.id


def share_local(tensor: torch.Tensor, workers: list, crypto_provider: Any = None, dtype: str = "long",
                protocol: str = "snn") -> AdditiveSharingTensor:
    """Split a local integer tensor on the client and send one share to each worker."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError("FloatTensor cannot be additively shared, Use fix_precision.")
    workers = check_parties(workers, crypto_provider)
    secret = tensor.detach().to(ring.ring_dtype(dtype))
    shares = ring.split(secret, len(workers))
    return AdditiveSharingTensor({w.id: s.send(w) for w, s in zip(workers, shares)}, crypto_provider, dtype, protocol)


def check_parties(workers: Any, crypto_provider: Any) -> list:
    if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
        workers = workers[0]
    workers = list(workers)
    if not workers:
        raise ValueError("share() needs at least one worker")
    names = [getattr(w, "id", None) for w in workers]
    if any(getattr(w, "is_local", True) for w in workers):
        raise ValueError(f"share() needs worker handles (VirtualWorker), got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"share() got a worker twice: {names}")
    if crypto_provider is not None and crypto_provider.id in names:
        raise ValueError(f"the crypto provider {crypto_provider.id!r} cannot also hold a share: it would learn "
                         "the other parties' values from the triples it deals")
    sims = {id(getattr(w, "simulation", None)) for w in workers}
    if len(sims) != 1:
        raise LocationMismatchError(f"share() got workers of different simulations: {names}")
    return workers


# -- the Beaver protocol (worker/mpc.py runs the parties' side) ------------------------------------

def _beaver(x: AdditiveSharingTensor, y: AdditiveSharingTensor, op: str) -> AdditiveSharingTensor:
    x._check_same(y, op)
    provider = x.crypto_provider
    if provider is None:
        raise AttributeError("For multiplication a crypto_provider must be passed.")
    names = list(x.child)
    handles = [x.child[n].location for n in names]
    xs, ys = [x.child[n] for n in names], [y.child[n] for n in names]
    tag = new_id()
    ids = [(new_id(), new_id(), new_id()) for _ in names]
    shapes = (tuple(x.shape), tuple(y.shape))
    try:
        _deal(provider, op, shapes, x.dtype, handles, ids, x.torch_dtype)
        for handle, xp, yp, (a, b, _) in zip(handles, xs, ys, ids):  # Note [Who talks when]: one at a time
            xp._check_live()
            yp._check_live()
            handle.connection.request(lambda seq, h=handle, xp=xp, yp=yp, a=a, b=b: messages.Open(
                seq, tag, xp.id_at_location, yp.id_at_location, a, b, tuple(names)))
        shares = {}
        for i, (name, handle, (a, b, c)) in enumerate(zip(names, handles, ids)):
            result = new_id()
            ack = handle.connection.request(
                lambda seq, a=a, b=b, c=c, r=result, first=(i == 0): messages.Beaver(seq, tag, op, a, b, c, r, first))
            shares[name] = PointerTensor(handle, result, handle.owner, ack.result[2:])
    except BaseException:
        free_dealt(handles, ids)  # leave no triple share behind on the live parties
        raise
    return x._like(shares)


def _deal(provider: Any, op: str, shapes: tuple, dtype: str, handles: list, ids: list, torch_dtype: Any) -> None:
    parties = tuple(h.id for h in handles)
    if getattr(provider, "is_local", False):
        # PySyft's default crypto provider is the local worker: then the client deals, and knows the triples.
        a, b = (ring.uniform(shape, torch_dtype) for shape in shapes)
        c = a * b if op == "mul" else a.matmul(b)
        parts = [ring.split(t, len(handles)) for t in (a, b, c)]
        for i, (handle, triple) in enumerate(zip(handles, ids)):
            values = tuple(part[i] for part in parts)
            handle.connection.request(lambda seq, t=tuple(triple), v=values: messages.Triple(seq, t, v))
        return
    provider.connection.request(lambda seq: messages.Deal(seq, op, shapes, dtype, parties, tuple(map(tuple, ids))))


# -- truncation (Note [Truncation]) -----------------------------------------------------------------

def truncate(x: AdditiveSharingTensor, d: int) -> AdditiveSharingTensor:
    names = list(x.child)
    if len(names) == 1:
        return x._map(lambda p: torch.div(p, d, rounding_mode="floor"))
    first, second = x.child[names[0]], x.child[names[1]]
    if len(names) > 2:
        for name in names[2:]:  # worker to worker: party 0 adds the others' shares to its own
            first = first + x.child[name].copy().move(first.location)
    low = torch.div(first, d, rounding_mode="floor")
    high = -torch.div(-second, d, rounding_mode="floor")  # the ceiling
    if len(names) == 2:
        return x._like({names[0]: low, names[1]: high})
    zeros = ring.split(torch.zeros(low.shape, dtype=x.torch_dtype), len(names))
    shares = {}
    for i, name in enumerate(names):
        fresh = zeros[i].send(x.child[name].location)
        shares[name] = low + fresh if i == 0 else high + fresh if i == 1 else fresh
    return x._like(shares)
