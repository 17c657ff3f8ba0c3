"""The messages two parties exchange: small slotted dataclasses, their code table, result kinds.

Owns `Message` and every message kind, `Ref`/`RemoteRef` (references that travel inside
messages), the code <-> class and field tables that both wire formats use, and `Result`, the
kinds of result descriptor an Ack carries. Imports nothing from simsyft: codec.py (pickle
frames) and compact.py (fixed binary layouts for the hot messages) both build on it.

A new message kind is one class here, with `@_message(code)`: its code and field types
(from its annotations) join the tables both wire formats read. The worker's handler for it
goes in worker/core.py's table (docs/architecture.md, "A new message kind").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


class Result:
    """The kinds of result descriptor in an Ack (`Ack.result[0]`), one per thing an op can give.

    - NEW: ``(NEW, id, dtype, shape, requires_grad, device)``, a new tensor stored under `id`;
    - SAME: ``(SAME, id, dtype, ...)``, an argument the op changed in place (its pointer stays owner);
    - VALUE: ``(VALUE, value)``, a plain Python value (`torch.equal`, `is_contiguous()`);
    - NOTHING: ``(NOTHING,)``, None;
    - SEQUENCE: ``(SEQUENCE, type name, (descriptor, ...))``, a tuple, list or torch.return_types.
    """

    NEW = "p"
    SAME = "a"
    VALUE = "v"
    NOTHING = "n"
    SEQUENCE = "q"

class Ref:
    """A reference to an object in the receiving worker's store."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id

    def __repr__(self) -> str:
        return f"Ref({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Ref", self.id))


class RemoteRef:
    """A pointer held *by a worker* (a pointer chain: alice holds a pointer to bob's tensor).

    Crosses the wire as data; the user layer turns it into a PointerTensor.
    """

    __slots__ = ("id", "location", "id_at_location", "meta")

    def __init__(self, id: int, location: str, id_at_location: int, meta: tuple) -> None:
        self.id = id
        self.location = location
        self.id_at_location = id_at_location
        self.meta = meta

    def __repr__(self) -> str:
        return f"RemoteRef({self.id} -> {self.location}:{self.id_at_location})"


class Message:
    """Base of every message kind; `code` is its number on the wire."""

    __slots__ = ()
    code: int = 0
    wants_reply: bool = True


# code -> message class; class -> field names; class -> field types (checked on decode).
_KINDS: dict[int, type] = {}
_FIELDS: dict[type, tuple[str, ...]] = {}
_FIELD_TYPES: dict[type, tuple] = {}
_ANNOTATION_TYPES = {"int": int, "str": str, "tuple": tuple, "dict": dict, "bool": bool, "Any": object}


def _message(code: int, wants_reply: bool = True):
    """Make a message kind: a slotted dataclass with wire code `code`, entered in the tables."""
    def wrap(cls):
        # Not frozen: every small op builds two messages a side, and a frozen dataclass's __init__
        # (object.__setattr__ per field) cost 0.94 us for a Command against 0.20. Nothing mutates one.
        cls = dataclass(slots=True)(cls)
        if code in _KINDS:
            raise TypeError(f"message code {code} is taken by {_KINDS[code].__name__}")
        cls.code = code
        cls.wants_reply = wants_reply
        _KINDS[code] = cls
        _FIELDS[cls] = tuple(f.name for f in fields(cls))
        _FIELD_TYPES[cls] = tuple(_ANNOTATION_TYPES[f.type] for f in fields(cls))
        return cls
    return wrap


@_message(1)
class Command(Message):
    """Run allowlisted op `op` on the worker; store the result under `result_id`.

    `free` carries ids of dropped pointers, so garbage collection rides along
    with the next command instead of costing a message of its own. With
    `reply=False` (pipelined mode) the worker answers only if the op fails.
    """
    seq: int
    op: str
    args: tuple
    kwargs: dict
    result_id: int
    grad_enabled: bool = True
    free: tuple = ()
    reply: bool = True


@_message(2)
class Store(Message):
    """Put `value` (a tensor) into the worker's store under `id`, with optional tags."""
    seq: int
    id: int
    value: Any
    tags: tuple = ()
    description: Any = None


@_message(3)
class Fetch(Message):
    """Return the object `id`; with `remove`, also drop it from the store (`.get()`)."""
    seq: int
    id: int
    remove: bool = True


@_message(4, wants_reply=False)
class Free(Message):
    """Drop these ids from the store; ids already gone are ignored. No reply."""
    ids: tuple


@_message(5)
class Objects(Message):
    """Return the store: with `values`, as ((id, tensor), ...); else its size."""
    seq: int
    values: bool = True


@_message(6)
class Info(Message):
    """Return a dict describing the worker (pid, name, objects, counters)."""
    seq: int


@_message(7)
class Shutdown(Message):
    """Reply, then leave the loop and exit."""
    seq: int


@_message(8)
class Clear(Message):
    """Drop every object in the store; replies with how many were dropped."""
    seq: int


@_message(9)
class Search(Message):
    """Return ((id, meta, tags, description), ...) for objects carrying every tag in `query`."""
    seq: int
    query: tuple


@_message(10)
class Transfer(Message):
    """Send object `id` straight to worker `destination` (worker to worker), stored there under `new_id`.

    The bytes go on the link from this worker to the destination, never through the client.
    Without `keep_pointer` the object leaves this worker (`move`); with it, this worker keeps,
    under `id`, a pointer to the object's new home (PySyft's `remote_send`). With `requires_grad`
    the copy is tracked (TrackOrigin) and this worker keeps the tensor, out of its store, for the
    gradients that come back. The Ack is the destination's. If the destination fails, nothing
    changed here.
    """
    seq: int
    id: int
    destination: str
    new_id: int
    keep_pointer: bool = False
    requires_grad: bool = False  # the copy sends its gradients back here (TrackOrigin)


@_message(12)
class StorePointer(Message):
    """Store under `id` a pointer to object `id_at_location` on worker `location` (a chain)."""
    seq: int
    id: int
    location: str
    id_at_location: int
    meta: tuple


@_message(13)
class RemoteGet(Message):
    """Replace the pointer stored under `id` by the tensor it points to, fetched worker to worker."""
    seq: int
    id: int


@_message(14)
class Aliases(Message):
    """Return ((id, meta), ...) for the other stored tensors sharing object `id`'s memory.

    An in-place op through a view can make the base (and its other views) require grad;
    the client asks this after seeing such an op, to refresh those pointers' metadata.
    """
    seq: int
    id: int


@_message(15)
class Restore(Message):
    """Put object `id` back: `frames` are the Fetch reply that removed it, which the client could
    not take (a segment it could not map, say). Only the worker can always reopen its own segment."""
    seq: int
    id: int
    frames: tuple


@_message(19)
class TrackOrigin(Message):
    """Make stored tensor `id` require grad, its gradients going back to tensor `id_at_origin` on
    `origin` (a worker's name, or "me" for the client): PySyft's `send(..., requires_grad=True)`.
    The Ack describes the tensor."""
    seq: int
    id: int
    origin: str
    id_at_origin: int


@_message(20)
class Grads(Message):
    """After a backward pass: send the gradients that reached tracked copies on to the workers
    they came from (OriginGrads), and return the client's: a Value of
    (((id, grad), ...), released ids, names of the workers it sent gradients or releases to)."""
    seq: int


@_message(21)
class OriginGrads(Message):
    """Worker to worker: continue backward from the tensors `id` this worker moved away, with
    `grads` ((id, grad), ...); forget the tensors in `released`, whose copies are gone."""
    seq: int
    grads: tuple
    released: tuple


@_message(16)
class Ack(Message):
    """Result of a Command or Store: one descriptor per result (see worker.describe)."""
    seq: int
    result: tuple


@_message(17)
class Value(Message):
    """A value returned by Fetch, Objects, Info or Shutdown."""
    seq: int
    value: Any


@_message(18)
class ErrorReply(Message):
    """The request raised; enough to rebuild the exception on the client."""
    seq: int
    type_module: str
    type_name: str
    message: str
    traceback: str
    worker: str


# -- SMPC (worker/mpc.py): codes 40-47 -------------------------------------------------------

@_message(40)
class ShareOut(Message):
    """Split stored integer tensor `id` into additive shares in ring `ring` ("long", "int") and
    send share i to worker parties[i] under ids[i], worker to worker (a share for this worker
    stays here). The tensor itself stays. A Value of the shares' metadata."""
    seq: int
    id: int
    parties: tuple
    ids: tuple
    ring: str


@_message(41)
class Deal(Message):
    """Crypto provider: make a Beaver triple (a, b, c = op(a, b)) for `op` ("mul" or "matmul") with
    a and b of `shapes` in ring `ring`, and send each party its shares (Store, worker to worker)
    under ids[i] = (a_id, b_id, c_id). It receives nothing from the parties but their Acks."""
    seq: int
    op: str
    shapes: tuple
    ring: str
    parties: tuple
    ids: tuple


@_message(42)
class Open(Message):
    """Beaver, step 1 on a party: mask its shares (eps = x - a, delta = y - b) and send them to
    every other party (Opened), worker to worker; its own are kept under `tag` for step 2."""
    seq: int
    tag: int
    x: int
    y: int
    a: int
    b: int
    parties: tuple


@_message(43)
class Opened(Message):
    """Party to party: `sender`'s masked shares (eps, delta) for multiplication `tag`."""
    seq: int
    tag: int
    sender: str
    values: tuple


@_message(44)
class Beaver(Message):
    """Beaver, step 2 on a party: eps and delta are the sums of every party's opened values;
    store z = c + op(eps, b) + op(a, delta) (+ op(eps, delta) on the `first` party) under
    `result_id`, and drop the triple and the openings."""
    seq: int
    tag: int
    op: str
    a: int
    b: int
    c: int
    result_id: int
    first: bool


@_message(45)
class Triple(Message):
    """Crypto provider to a party: store its shares of a Beaver triple, values[i] under ids[i].

    From a provider process `reply` is False: the party answers only a failure, so nothing flows
    from the parties to the provider (Note [One-way deals], worker/mpc.py)."""
    seq: int
    ids: tuple
    values: tuple
    reply: bool = True


@_message(46)
class Step(Message):
    """A party's next round of a multi-round protocol `op` ("msb", binary.py) run under `tag`:
    the first Step starts it on share `inputs[0]` with the provider's tensors `deal`; each Step
    combines the previous round's openings, then sends this round's masked shares to every other
    party (Round). The last one stores the result under `result_id` and answers its metadata."""
    seq: int
    tag: int
    op: str
    inputs: tuple
    deal: tuple
    result_id: int
    parties: tuple


@_message(47)
class Round(Message):
    """Party to party: `sender`'s masked shares for round `round` of protocol `tag`."""
    seq: int
    tag: int
    sender: str
    round: int
    values: tuple
