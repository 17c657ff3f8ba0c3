"""PointerTensor: a local stand-in for a tensor that lives on a worker.

Owns the pointer class: `__torch_function__` (so `torch.add(x_ptr, y_ptr)`
reaches us), the operator dunders, forwarding of `torch.Tensor` methods,
repr, `get`, and free-on-del. Talks to a worker only through the handle's
`connection` (connection.py's interface), so it runs unchanged over ZeroMQ or
the in-process test connection. Never imports worker.py.

Speed is guarded by bench/ (row "small sync op").
"""

from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import torch

from . import origins
from .errors import LocationMismatchError, ObjectNotFoundError, RemoteValueError
from .facts import TensorFacts
from .gradients import check_can_require_grad
from .ids import new_id
from .pipelining import PIPELINE
from .wire import messages, ops, tensors
from .wire.args import walk as args_walk
from .errors import NotATensorError
from .wire.messages import Result

NEW, SAME, VALUE, NOTHING, SEQUENCE = Result.NEW, Result.SAME, Result.VALUE, Result.NOTHING, Result.SEQUENCE

__all__ = ["FETCHED", "LIVE", "OBSERVER", "VOID", "PointerTensor", "call_on", "from_remote_ref"]

# Pointer states. Only a LIVE pointer owns (and so frees) its remote object.
LIVE, FETCHED, VOID, OBSERVER = 0, 1, 2, 3

# Live pointers by the id they point to, so an op that changes *other* objects' metadata (an
# in-place op through a view makes the base require grad) can refresh their pointers too.
# A plain dict of weakrefs, emptied by __del__: a WeakValueDictionary cost ~2 us per new pointer.
_BY_REMOTE_ID: dict[int, "weakref.ref[PointerTensor]"] = {}


# Methods whose answer is a Python value computed from the data: refuse locally, with a hint
# (RemoteValueError, also a RuntimeError as in PySyft).
_NEEDS_VALUE = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__"}
# Exports of the data to another array: numpy and torch's constructors try these first. Without
# them they read a pointer as a sequence (it has len() and [i]): np.asarray(ptr) built an object
# array of row pointers and torch.tensor(ptr) of an empty pointer gave tensor([]), shape (0,).
_EXPORTS = {"__array__", "__dlpack__", "__dlpack_device__"}


class PointerTensor(TensorFacts):
    """Points at object `id_at_location` on worker `location`.

    >>> x_ptr = torch.tensor([1, 2, 3]).send(bob)
    >>> (x_ptr + x_ptr).get()
    tensor([2, 4, 6])
    """

    __slots__ = ("id", "id_at_location", "location", "owner", "tags", "description", "_shape", "_dtype",
                 "_requires_grad", "_device", "_state", "__weakref__")

    def __init__(self, location: Any, id_at_location: int, owner: Any, meta: tuple | None = None,
                 state: int = 0, id: int | None = None) -> None:
        self.id = new_id() if id is None else id
        self.id_at_location = id_at_location
        self.location = location
        self.owner = owner
        self._state = state
        self.tags = None
        self.description = None
        if meta is not None:
            self._set_meta(meta)
            if state == LIVE:
                _BY_REMOTE_ID[id_at_location] = weakref.ref(self)
        else:
            self._dtype = self._shape = self._device = None
            self._requires_grad = False

    def _set_meta(self, meta: tuple) -> None:
        dtype, shape, requires_grad, device = meta
        self._dtype = tensors.dtype_from_name(dtype)
        self._shape = torch.Size(shape)
        self._requires_grad = requires_grad
        self._device = device

    # -- what PySyft showed --------------------------------------------------
    def __repr__(self) -> str:
        out = f"(Wrapper)>[PointerTensor | {self.owner.id}:{self.id} -> {self.location.id}:{self.id_at_location}]"
        # PySyft showed tags, shape and description under a tagged pointer (search results).
        if self.tags:
            out += "\n\tTags: " + "".join(f"{tag} " for tag in sorted(self.tags))
            if self._shape is not None:
                out += f"\n\tShape: {self._shape}"
        if self.description is not None:
            out += "\n\tDescription: " + str(self.description).split("\n")[0] + "..."
        return out

    __str__ = __repr__

    # -- attributes that live remotely ---------------------------------------
    @property
    def requires_grad(self) -> bool:
        self._check_live()
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        _call_remote(torch.Tensor.requires_grad.__set__, (self, value), {})
        self._requires_grad = bool(value)

    @property
    def grad(self) -> PointerTensor | None:
        return _call_remote(torch.Tensor.grad.__get__, (self,), {})

    @grad.setter
    def grad(self, value: Any) -> None:
        _call_remote(torch.Tensor.grad.__set__, (self, value), {})

    @property
    def data(self) -> PointerTensor:
        return _call_remote(torch.Tensor.data.__get__, (self,), {})

    @data.setter
    def data(self, value: Any) -> None:
        _call_remote(torch.Tensor.data.__set__, (self, value), {})

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class lacks. Underscore names are refused, or
        # numpy's __array__ or copy's __deepcopy__ would silently become remote calls.
        if name.startswith("_"):
            raise AttributeError(f"'PointerTensor' object has no attribute {name!r}")
        if name in _NEEDS_VALUE:
            return _needs_value(self, name)
        attr = getattr(torch.Tensor, name, None)
        if attr is None:
            raise AttributeError(f"'PointerTensor' object has no attribute {name!r}")
        if hasattr(attr, "__get__") and not callable(attr):  # a property such as T, mT, is_leaf
            getter = getattr(attr, "__get__")
            if not ops.is_allowed(ops.op_name_or_repr(getter)):
                raise AttributeError(f"'PointerTensor' cannot read {name!r} remotely: not in the op allowlist")
            return _call_remote(getter, (self,), {})
        return _MethodForwarder(attr, self)

    # -- fetching -------------------------------------------------------------
    def get(self) -> Any:
        """Bring the tensor home and remove it from the worker (PySyft's `.get()`)."""
        self._check_live()
        if self._state == VOID:
            self._state = FETCHED
            return None
        # If this process cannot take the reply, the worker keeps the object and this raises: retry.
        value = self.location.connection.fetch(self.id_at_location)
        self._state = FETCHED
        if type(value) is messages.RemoteRef:
            # A pointer to a pointer: we get the inner pointer, and with it the duty to free the data.
            return from_remote_ref(value, self.location, self.owner, LIVE)
        return value

    def send(self, worker: Any) -> "PointerTensor":
        """Send this *pointer* to `worker`: returns a pointer to a pointer (PySyft's chains).

        Ops on the result run where the data is, through `worker`; `get()` on it
        returns the inner pointer. Only the newest pointer frees the data, so this
        one stops owning it.
        """
        self._check_live()
        if getattr(worker, "is_local", False):
            return self
        if getattr(worker, "simulation", None) is None or worker.simulation is not getattr(self.location, "simulation", None):
            raise LocationMismatchError(
                f"cannot send a pointer to {self.location.id!r} to {worker.id!r}: workers of one simulation only")
        meta = (tensors.dtype_name(self._dtype), tuple(self._shape), self._requires_grad, self._device)
        # As in PySyft, the worker keeps the pointer under this pointer's own id: `alice:A -> bob:B`
        # for `me:A -> bob:B`. A pointer already sent on gets a fresh id, so no two copies share one.
        new = self.id if self._state == LIVE else new_id()
        ack = worker.connection.request(
            lambda seq: messages.StorePointer(seq, new, self.location.id, self.id_at_location, meta))
        if self._state == LIVE:
            self._state = OBSERVER
        worker.holds_pointers = True
        return PointerTensor(worker, new, worker.owner, ack.result[2:])

    def remote_send(self, worker: Any) -> "PointerTensor":
        """The worker holding the data sends it straight to `worker` and keeps a pointer to it; returns self.

        This pointer still points at the first worker, which now holds a pointer (a chain):
        `x.send(bob).remote_send(alice)` leaves the data on alice under bob's id for it.
        """
        self._check_live()
        if getattr(worker, "is_local", False) or worker is self.location:
            raise ValueError(f"remote_send() needs another worker of the simulation, got {worker.id!r}")
        if getattr(worker, "simulation", None) is not getattr(self.location, "simulation", None):
            raise LocationMismatchError(
                f"cannot remote_send pointer {self.id} from {self.location.id!r} to {worker.id!r}: they belong to "
                "different simulations")
        worker.connection.check_alive()
        self.location.connection.request(
            lambda seq: messages.Transfer(seq, self.id_at_location, worker.id, self.id_at_location, True))
        self.location.holds_pointers = True
        return self

    def remote_get(self) -> "PointerTensor":
        """On a pointer to a pointer: bring the data to the middle worker (worker to worker); returns self."""
        self._check_live()
        ack = self.location.connection.request(lambda seq: messages.RemoteGet(seq, self.id_at_location))
        self._set_meta(ack.result[2:])
        return self

    def move(self, worker: Any, requires_grad: bool = False) -> "PointerTensor":
        """Move the data to `worker`, worker to worker; returns this pointer.

        The worker holding the data sends it on its own link to `worker` (a frame, or a
        shared-memory segment): the bytes never pass through the client. If the
        destination is dead, the crash error is raised and the data stays where it was.
        With `requires_grad` (PySyft's), the copy requires grad and a backward pass that reaches
        it continues on the worker the data came from, which keeps the tensor for that.
        """
        self._check_live()
        if worker is self.location:
            return self
        if getattr(worker, "is_local", False):
            if requires_grad:
                raise ValueError("move(me, requires_grad=True): the data comes home with .get(); there is no "
                                 "remote copy left to send gradients back")
            return self.get()
        if getattr(worker, "simulation", None) is not getattr(self.location, "simulation", None):
            raise LocationMismatchError(
                f"cannot move pointer {self.id} from {self.location.id!r} to {worker.id!r}: they belong to different "
                "simulations, which never map each other's shared memory; use .get() and .send()")
        worker.connection.check_alive()  # a destination known dead fails here, before anything moves
        if requires_grad:
            check_can_require_grad(torch.empty(0, dtype=self._dtype))  # torch's error, before anything moves
        new = new_id()
        ack = self.location.connection.request(
            lambda seq: messages.Transfer(seq, self.id_at_location, worker.id, new, False, requires_grad))
        if requires_grad:
            origins.mark_holder(worker)  # a backward pass there now starts a collection
        self.location, self.id_at_location = worker, new
        self._set_meta(ack.result[2:])
        return self

    def copy(self) -> "PointerTensor":
        """A remote copy on the same worker (`copy().get()` leaves this one in place)."""
        return _call_remote(torch.Tensor.clone, (self,), {})

    def combine(self, *pointers: "PointerTensor") -> Any:
        """PySyft's `p1.combine(p2, ...)`: a MultiPointerTensor of `pointers`, then this one (PySyft's order).

        multipointer.py builds on this module, so it installs `_combine` when imported (Note [Combining pointers]).
        """
        return PointerTensor._combine(*pointers, self)
    # -- SMPC (smpc/ installs these: it builds on this module) ------------------
    def fix_precision(self, base: int = 10, precision_fractional: int = 3, **kwargs: Any) -> Any:
        """Encode the data in fixed precision on its worker (PySyft's `ptr.fix_precision()`)."""
        return PointerTensor._smpc_fix_precision(self, base, precision_fractional, kwargs)

    fix_prec = fix_precision

    def share(self, *workers: Any, crypto_provider: Any = None, dtype: str = "long", **kwargs: Any) -> Any:
        """Split the data into additive shares on its worker, sent from there to `workers`; a pointer
        to the shared tensor (`.get()` brings its share pointers here)."""
        return PointerTensor._smpc_share(self, workers, crypto_provider, dtype, kwargs)

    # -- garbage collection switches (PySyft's) --------------------------------
    @property
    def garbage_collection(self) -> bool:
        """Whether dropping this pointer frees the remote object (`x.send(bob, garbage_collect_data=False)`
        makes one that does not). Settable: False leaves the object on the worker when the pointer
        goes (it stays in `bob._objects`); True makes this pointer the one that frees it."""
        return self._state == LIVE

    @garbage_collection.setter
    def garbage_collection(self, flag: bool) -> None:
        self._check_live()
        if self._state == VOID:
            if flag:
                raise ValueError(f"pointer {self.id} points at nothing (the result of an op that returns None); "
                                 "there is no remote object to free")
            return
        if flag and self._state != LIVE:
            self._state = LIVE
            if self._shape is not None:  # as a LIVE pointer made with its metadata
                _BY_REMOTE_ID.setdefault(self.id_at_location, weakref.ref(self))
        elif not flag and self._state == LIVE:
            self._state = OBSERVER

    gc = garbage_collection  # PySyft's alias

    @property
    def disable_gc(self) -> "PointerTensor":
        """This pointer, which no longer frees the remote object when dropped (PySyft's)."""
        self.garbage_collection = False
        return self

    def _check_live(self) -> None:
        if self._state == FETCHED:
            raise ObjectNotFoundError(
                f"pointer {self.id} -> {self.location.id}:{self.id_at_location} was already fetched with "
                f".get(); the object is no longer on worker {self.location.id!r}"
            )

    # -- lifetime -------------------------------------------------------------
    def __del__(self) -> None:
        entry = _BY_REMOTE_ID.get(self.id_at_location)
        if entry is not None:
            target = entry()  # identity only: == on a pointer is a remote op
            if target is self or target is None:
                del _BY_REMOTE_ID[self.id_at_location]
        if self._state != LIVE:
            return
        try:
            if self.location.holds_pointers:
                # It may be the head of a chain: its worker frees what it points to now, as PySyft did,
                # not when we next talk to it.
                self.location.connection.free_now(self.id_at_location)
                return
            self.location.connection.free(self.id_at_location)
        except Exception:  # noqa: BLE001 - during interpreter teardown or after shutdown a lost free is harmless
            pass

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a PointerTensor cannot be pickled or copied: it owns an object on worker "
            f"{self.location.id!r}; .get() the tensor first"
        )

    def __copy__(self) -> Any:
        self.__reduce_ex__(None)

    def __deepcopy__(self, memo: Any) -> Any:
        self.__reduce_ex__(None)

    # Operators compare remotely, so identity is what hashes.
    __hash__ = object.__hash__

    def __iter__(self) -> Any:
        """Rows as pointers, from one remote `unbind(0)` (torch's own `Tensor.__iter__`).

        Refused when torch's own code iterates: Note [Torch code iterating a pointer].
        """
        entry = _torch_caller(sys._getframe(1))
        if entry is not None:
            raise NotATensorError(
                f"{entry} iterated a pointer to a tensor on worker {self.location.id!r} as an iterable of tensors. "
                "A PointerTensor is not a torch.Tensor, so torch code that takes 'a tensor or an iterable of "
                "tensors' would treat its rows as separate tensors and could return a wrong result. Run it where "
                "the data is (.get() the tensor first), or write it with torch ops on the pointer: they run on "
                f"{self.location.id!r}")
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")  # torch's message
        return iter(_call_remote(torch.Tensor.unbind, (self, 0), {}))

    def __reversed__(self) -> "PointerTensor":
        # torch's Tensor.__reversed__ is flip(0) (a tensor, not an iterator); without this,
        # reversed() would fall back to __len__/__getitem__ and give an iterator of rows.
        return self if not self.shape else _call_remote(torch.Tensor.flip, (self, 0), {})

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not all(issubclass(t, (torch.Tensor, PointerTensor)) for t in types):
            return NotImplemented  # let torch raise its usual TypeError
        return _call_remote(func, args, kwargs or {})


# Note [Torch code iterating a pointer]
# A PointerTensor is not a torch.Tensor (making isinstance() say so, e.g. with a `__class__`
# property, would let torch's C bindings read a pointer as a tensor's memory). Most of torch
# reaches `__torch_function__` anyway, but Python functions that accept "a tensor or an
# iterable of tensors" branch on isinstance(x, torch.Tensor), take a pointer for the iterable,
# and iterate it: `clip_grad_norm_(ptr, 2)` saw rows whose .grad is None, clipped nothing and
# returned tensor(0.). Iteration is the one step all of them share, so `__iter__` refuses
# when its caller is torch's own code, naming the function; user code (`for row in ptr`)
# iterates rows as torch does. tests/property/test_torch_functions.py holds every torch
# function to "the local result or an error".

def _torch_caller(frame: Any) -> str | None:
    """The torch function whose code is iterating (None when the caller is not torch).

    Names the outermost public function of the run of torch frames above the iteration
    (clip_grad_norm_ rather than its `_no_grad_wrapper` or a private helper).
    """
    run = []
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "torch" and not module.startswith("torch."):
            break
        run.append((module, frame.f_code))
        frame = frame.f_back
    if not run:
        return None
    public = [(m, c) for m, c in run if "._" not in m and not c.co_name.startswith(("_", "<"))]
    module, code = (public or run)[-1]
    return f"{module}.{code.co_qualname}"


def from_remote_ref(ref: Any, holder: Any, owner: Any, state: int) -> PointerTensor:
    """A PointerTensor for a pointer a worker held (`holder` reaches the worker it points to)."""
    location = holder.peer(ref.location)
    # The pointer keeps the id it had where it was held (PySyft: `pointer_to_x_ptr.get()` is `me:A -> bob:B`).
    return PointerTensor(location, ref.id_at_location, owner, ref.meta, state=state, id=ref.id)


class _MethodForwarder:
    """`ptr.sum` as a callable that runs torch.Tensor.sum on the worker."""

    __slots__ = ("method", "pointer")

    def __init__(self, method: Callable, pointer: PointerTensor) -> None:
        self.method = method
        self.pointer = pointer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call_remote(self.method, (self.pointer, *args), kwargs)

    def __repr__(self) -> str:
        return f"<remote method {ops.op_name_or_repr(self.method)} of {self.pointer!r}>"


def _needs_value(pointer: PointerTensor, name: str) -> Callable:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        pointer._check_live()
        if name in _EXPORTS:
            raise RemoteValueError(
                f"converting a pointer to a local array or tensor (np.asarray(ptr), torch.tensor(ptr): {name}) "
                f"needs the tensor's value, which lives on worker {pointer.location.id!r}: call .get() first")
        raise RemoteValueError(
            f"{name}() needs the tensor's value, which lives on worker {pointer.location.id!r}: "
            f"call .get() first (e.g. ptr.get().{name}())"
        )
    return refuse


def _forwarder(method: Callable) -> Callable:
    def forward(self: PointerTensor, *args: Any) -> Any:
        return _call_remote(method, (self, *args), {})
    forward.__name__ = method.__name__
    return forward


for _dunder in ops.OPERATOR_DUNDERS:
    _method = getattr(torch.Tensor, _dunder, None)
    if _method is not None:
        setattr(PointerTensor, _dunder, _forwarder(_method))
for _dunder in sorted(n for n in _NEEDS_VALUE | _EXPORTS if n.startswith("__")):
    setattr(PointerTensor, _dunder, lambda self, *args, _n=_dunder, **kwargs: _needs_value(self, _n)())
del _dunder, _method


# -- the remote call ----------------------------------------------------------

_SCALARS = frozenset({int, float, bool, type(None)})
_BACKWARD = "torch.Tensor.backward"  # the one allowlisted op that runs a backward pass


# Types standing for objects on several workers (multipointer.py adds MultiPointerTensor: it
# builds on this module, so it registers itself when imported).
_MANY_PLACES: tuple[type, ...] = ()


class _Collector:
    """Walks op arguments: pointers -> Ref, checking that everything is in one place."""

    __slots__ = ("location", "pointers", "local", "op")

    def __init__(self, op: str) -> None:
        self.op = op
        self.location = None
        self.pointers: dict[int, PointerTensor] = {}
        self.local: torch.Tensor | None = None

    def walk_flat(self, args: tuple) -> tuple | None:
        """`walk(args)` when they are pointers and scalars only (x + y, x * 2), else None.

        The common case, without building a generator per level.
        """
        wire = []
        for value in args:
            kind = type(value)
            if kind is PointerTensor:
                wire.append(self.take(value))
            elif kind in _SCALARS:
                wire.append(value)
            else:
                return None  # walk() starts over; what it saw so far it sees again, the same way
        return tuple(wire)

    def take(self, pointer: "PointerTensor") -> messages.Ref:
        """A pointer among the arguments: it must be live and where the others are."""
        pointer._check_live()
        if self.location is None:
            self.location = pointer.location
        elif pointer.location is not self.location:
            raise LocationMismatchError(
                f"{self.op} got pointers to {self.location.id!r} and {pointer.location.id!r}; "
                "move one of them first (or .get() both)"
            )
        self.pointers[pointer.id_at_location] = pointer
        return messages.Ref(pointer.id_at_location)

    def leaf(self, value: Any) -> Any:
        if isinstance(value, _MANY_PLACES):
            # A multi-pointer among a pointer's arguments (`ptr + mpt`): refused as `mpt + ptr` is.
            raise LocationMismatchError(
                f"{self.op} got a MultiPointerTensor on {list(value.child)} and a pointer to "
                f"{self.location.id if self.location is not None else 'a worker'!r}; give it one pointer per worker "
                "(sy.combine_pointers) or .get() it")
        if isinstance(value, torch.Tensor):
            remote = value.__dict__.get("_simsyft_pointer")  # a sent module's parameter (models.py)
            if remote is not None:
                return self.take(remote)
            self.local = value
        return value

    def walk(self, value: Any) -> Any:
        return args_walk(value, {PointerTensor: self.take}, self.leaf)


def call_on(worker: Any, func: Callable, args: tuple, kwargs: dict) -> Any:
    """Run `func(*args, **kwargs)` on `worker`, also when no argument is a pointer (a factory)."""
    return _call_remote(func, args, kwargs, worker)


def _call_remote(func: Callable, args: tuple, kwargs: dict, at: Any = None) -> Any:
    op = ops.op_name_or_repr(func)
    walker = _Collector(op)
    wire_args = None if kwargs else walker.walk_flat(args)
    flat = wire_args is not None
    if not flat:
        wire_args = walker.walk(args)
    wire_kwargs = walker.walk(kwargs) if kwargs else kwargs
    location, pointers = walker.location, walker.pointers
    if at is not None:
        if location is not None and location is not at:
            raise LocationMismatchError(f"{op} on {at.id!r} got a pointer to {location.id!r}; move it there first")
        location = at
    if walker.local is not None:
        raise LocationMismatchError(
            f"{op} got a pointer to {location.id!r} and a local tensor on 'me'; "
            f"send the tensor to {location.id!r} first, or .get() the pointer"
        )
    result_id = new_id()
    grad_enabled = torch.is_grad_enabled()
    if PIPELINE.depth and pointers and not (op == _BACKWARD and (location.holds_origins or location.holds_pointers)):
        predicted = PIPELINE.predict(func, args, kwargs, flat)
        if predicted is not None and predicted[0] == SAME and predicted[2][2] and not predicted[1]._requires_grad:
            predicted = None  # it may make its base or views require grad: ask synchronously
        if predicted is not None:
            PIPELINE.post(location.connection, lambda seq, free: messages.Command(
                seq, op, wire_args, wire_kwargs, result_id, grad_enabled, free, False))
            kind, pointer, meta = predicted
            if kind == SAME:
                pointer._set_meta(meta)
                return pointer
            return PointerTensor(location, result_id, location.owner, meta)
    reply = location.connection.request(
        lambda seq, free: messages.Command(seq, op, wire_args, wire_kwargs, result_id, grad_enabled, free),
        carries_free=True,
    )
    if op == _BACKWARD and (location.holds_origins or location.holds_pointers):
        origins.collect(location)  # gradients back to where tracked copies came from
    return _materialize(reply.result, location, pointers, op)


def _refresh_aliases(pointer: PointerTensor) -> None:
    """After an in-place op made `pointer` require grad, refresh the pointers to its base and views.

    Autograd makes the whole view family require grad (x[0:1].add_(w) makes x require grad);
    asked only then, so ordinary ops pay nothing.
    """
    found = pointer.location.connection.request(lambda seq: messages.Aliases(seq, pointer.id_at_location)).value
    for object_id, meta in found:
        entry = _BY_REMOTE_ID.get(object_id)
        alias = entry() if entry is not None else None
        if alias is not None and alias._state == LIVE and alias.location is pointer.location \
                and alias.id_at_location == object_id:
            alias._set_meta(meta)


def _materialize(desc: tuple, location: Any, pointers: dict[int, PointerTensor], op: str) -> Any:
    kind = desc[0]
    if kind == NEW:
        return PointerTensor(location, desc[1], location.owner, desc[2:])
    if kind == SAME:
        pointer = pointers[desc[1]]
        gained_grad = desc[4] and not pointer._requires_grad
        pointer._set_meta(desc[2:])
        if gained_grad:
            _refresh_aliases(pointer)
        return pointer
    if kind == VALUE:
        return desc[1]
    if kind == NOTHING:
        if op.endswith(".__get__"):
            return None  # ptr.grad of a tensor without grad is None, as locally
        # PySyft returned a pointer for every remote call, even `backward()`; it points at nothing.
        return PointerTensor(location, new_id(), location.owner, state=VOID)
    if kind == SEQUENCE:
        _, type_name, items = desc
        values = [_materialize(item, location, pointers, op) for item in items]
        if type_name == "list":
            return values
        if type_name.startswith("torch.return_types."):
            return getattr(torch.return_types, type_name.rsplit(".", 1)[1])(values)
        return tuple(values)
    raise ValueError(f"unknown result descriptor {desc!r:.100}")


PIPELINE.pointer_type = PointerTensor  # pipelining.py sits below this module
