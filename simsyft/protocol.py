"""Messages between a client and a worker, and their frames on the wire.

Owns the message dataclasses, the code <-> class table, and encode/decode.
Knows no sockets and nothing about what an op means; imports sharing (tensor
descriptors) and errors only.

Wire format: ``[header, *buffers]``. The header is a pickle of
``(code, *fields)`` made only of builtin data (ints, strings, tuples, lists,
dicts, slices, torch dtypes/Size/device); tensors and remote references become
*persistent ids* so they never go through pickle's object machinery:
``("T", descriptor)`` (see sharing.py), ``("R", object_id)``, ``("M", name)`` for
a memory format and ``("L", name)`` for a layout. Decoding uses an unpickler
whose ``find_class`` resolves nothing outside a short allowlist, so a peer's
frame can never import or call arbitrary code.

Speed is guarded by bench/ (row "encode+decode 5-element tensor message").
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from . import sharing
from .errors import ProtocolError, SimsyftError

__all__ = [
    "MAX_HEADER_BYTES",
    "Ack",
    "Clear",
    "Command",
    "ErrorReply",
    "Export",
    "Fetch",
    "Free",
    "Import",
    "Info",
    "Message",
    "Objects",
    "Ref",
    "RemoteGet",
    "RemoteRef",
    "Search",
    "Aliases",
    "Shutdown",
    "Store",
    "StorePointer",
    "Value",
    "decode",
    "encode",
    "frames_size",
]

# Headers carry op names, ids, shapes and small scalars; anything near this is an attack or a bug.
MAX_HEADER_BYTES = 16 * 1024 * 1024


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


def _message(code: int, wants_reply: bool = True):
    def wrap(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.code = code
        cls.wants_reply = wants_reply
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
class Export(Message):
    """Remove object `id` and put it in a shared-memory segment; reply with its descriptor only.

    With Import, moves data between two workers without the bytes touching the client.
    """
    seq: int
    id: int


@_message(11)
class Import(Message):
    """Store under `id` the tensor a descriptor from Export names (segments only, never frames)."""
    seq: int
    id: int
    descriptor: tuple
    tags: tuple = ()
    description: Any = None


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


_KINDS: dict[int, type] = {
    cls.code: cls for cls in (Command, Store, Fetch, Free, Objects, Info, Shutdown, Clear, Search, Export, Import, StorePointer, RemoteGet, Aliases, Ack, Value, ErrorReply)
}
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _KINDS.values()}
_FIELD_TYPES: dict[type, tuple] = {
    Command: (int, str, tuple, dict, int, bool, tuple, bool),
    Store: (int, int, object, tuple, object),
    Fetch: (int, int, bool),
    Free: (tuple,),
    Objects: (int, bool),
    Info: (int,),
    Shutdown: (int,),
    Clear: (int,),
    Search: (int, tuple),
    Aliases: (int, int),
    Export: (int, int),
    Import: (int, int, tuple, tuple, object),
    StorePointer: (int, int, str, int, tuple),
    RemoteGet: (int, int),
    Ack: (int, tuple),
    Value: (int, object),
    ErrorReply: (int, str, str, str, str, str),
}

_MEMORY_FORMATS = {str(f).removeprefix("torch."): f for f in vars(torch).values() if isinstance(f, torch.memory_format)}
_LAYOUTS = {str(f).removeprefix("torch."): f for f in vars(torch).values() if isinstance(f, torch.layout)}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "complex"): complex,
    ("builtins", "Ellipsis"): Ellipsis,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "set"): set,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch", name): dtype for name, dtype in sharing._DTYPES.items()},
}


_PLAIN_TYPES = frozenset({tuple, int, str, bool, float, type(None), bytes, list, dict, complex, slice})


class _Encoder(pickle.Pickler):
    def __init__(self, file: io.BytesIO, buffers: list, namespace: str) -> None:
        super().__init__(file, protocol=5)
        self.buffers = buffers
        self.namespace = namespace

    def persistent_id(self, obj: Any) -> Any:
        # Called for every object pickled (~17 for a small Command): plain types leave first.
        if type(obj) in _PLAIN_TYPES:
            return None
        if isinstance(obj, torch.Tensor):
            return ("T", sharing.encode_tensor(obj, self.buffers, self.namespace))
        if type(obj) is sharing.Handover:
            return ("T", obj.describe(self.buffers, self.namespace))
        if type(obj) is Ref:
            return ("R", obj.id)
        if type(obj) is RemoteRef:
            return ("C", (obj.id, obj.location, obj.id_at_location, obj.meta))
        if isinstance(obj, torch.memory_format):
            return ("M", str(obj).removeprefix("torch."))
        if isinstance(obj, torch.layout):
            return ("L", str(obj).removeprefix("torch."))
        return None


class _Decoder(pickle.Unpickler):
    def __init__(self, header: bytes, buffers: list, resolve: Callable[[int], Any] | None) -> None:
        super().__init__(io.BytesIO(header))
        self.buffers = buffers
        self.resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ProtocolError(f"message refers to {module}.{name}, which is not an allowed type") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 2:
            raise ProtocolError(f"malformed persistent id {pid!r:.100}")
        tag, value = pid
        if tag == "T":
            return sharing.decode_tensor(value, self.buffers)
        if tag == "R":
            if not isinstance(value, int):
                raise ProtocolError(f"object reference must be an int, got {type(value).__name__}")
            return self.resolve(value) if self.resolve is not None else Ref(value)
        if tag == "C":
            if not (isinstance(value, tuple) and len(value) == 4 and type(value[0]) is int
                    and type(value[1]) is str and type(value[2]) is int and type(value[3]) is tuple):
                raise ProtocolError(f"malformed remote pointer {value!r:.100}")
            return RemoteRef(*value)
        if tag == "M" and value in _MEMORY_FORMATS:
            return _MEMORY_FORMATS[value]
        if tag == "L" and value in _LAYOUTS:
            return _LAYOUTS[value]
        raise ProtocolError(f"unknown persistent id {pid!r:.100}")


def encode(msg: Message, namespace: str = "") -> list:
    """Message -> frames. Large tensors go to shared-memory segments named for `namespace`."""
    buffers: list = []
    file = io.BytesIO()
    values = (msg.code, *(getattr(msg, name) for name in _FIELDS[type(msg)]))
    _Encoder(file, buffers, namespace).dump(values)
    return [file.getvalue(), *buffers]


# The worker checks a header's opcodes before the C unpickler sees it. Only opcodes our encoder
# emits are allowed (a whitelist): PUT/BINPUT/LONG_BINPUT would let a 9-byte header make the C
# unpickler allocate a memo of gigabytes, and GLOBAL/INST/OBJ/EXT* reach code. Each entry is
# (bytes of fixed argument, bytes of a little-endian length prefix for a variable argument).
_OPCODES: dict[int, tuple[int, int]] = {
    op[0]: shape for op, shape in {
        pickle.PROTO: (1, 0), pickle.FRAME: (8, 0), pickle.MEMOIZE: (0, 0), pickle.BINGET: (1, 0),
        pickle.LONG_BINGET: (4, 0), pickle.MARK: (0, 0), pickle.STOP: (0, 0), pickle.POP: (0, 0),
        pickle.TUPLE: (0, 0), pickle.TUPLE1: (0, 0), pickle.TUPLE2: (0, 0), pickle.TUPLE3: (0, 0),
        pickle.EMPTY_TUPLE: (0, 0), pickle.EMPTY_LIST: (0, 0), pickle.EMPTY_DICT: (0, 0),
        pickle.EMPTY_SET: (0, 0), pickle.APPEND: (0, 0), pickle.APPENDS: (0, 0), pickle.SETITEM: (0, 0),
        pickle.SETITEMS: (0, 0), pickle.ADDITEMS: (0, 0), pickle.FROZENSET: (0, 0), pickle.LIST: (0, 0),
        pickle.DICT: (0, 0), pickle.NONE: (0, 0), pickle.NEWTRUE: (0, 0), pickle.NEWFALSE: (0, 0),
        pickle.BININT: (4, 0), pickle.BININT1: (1, 0), pickle.BININT2: (2, 0), pickle.BINFLOAT: (8, 0),
        pickle.LONG1: (0, 1), pickle.LONG4: (0, 4), pickle.SHORT_BINUNICODE: (0, 1),
        pickle.BINUNICODE: (0, 4), pickle.BINUNICODE8: (0, 8), pickle.SHORT_BINBYTES: (0, 1),
        pickle.BINBYTES: (0, 4), pickle.BINBYTES8: (0, 8), pickle.BYTEARRAY8: (0, 8),
        pickle.STACK_GLOBAL: (0, 0), pickle.REDUCE: (0, 0), pickle.BINPERSID: (0, 0),
    }.items()
}
_MEMO_GETS = (pickle.BINGET[0], pickle.LONG_BINGET[0])
_MEMOIZE = pickle.MEMOIZE[0]


# Per opcode byte: None (refused), or (fixed argument bytes, length-prefix bytes, kind) with kind
# 1 = reads the memo, 2 = adds to it, 3 = STOP, 0 = anything else. A list indexes faster than a dict.
_OPCODE_TABLE: list = [None] * 256
for _op, (_fixed, _prefix) in _OPCODES.items():
    _OPCODE_TABLE[_op] = (_fixed, _prefix, 1 if _op in _MEMO_GETS else 2 if _op == _MEMOIZE else 3 if _op == 0x2E else 0)


def _check_opcodes(header: bytes) -> None:
    """Refuse a header using any opcode our encoder does not emit, or reading the memo out of range.

    A tight loop over the opcodes (~3 us for a small Command); only the worker pays it.
    """
    position, end, memo = 0, len(header), 0
    table = _OPCODE_TABLE
    while position < end:
        op = header[position]
        shape = table[op]
        if shape is None:
            raise ProtocolError(f"message header uses pickle opcode {bytes([op])!r} at byte {position}, "
                                "which simsyft never sends")
        fixed, prefix, kind = shape
        position += 1
        if prefix:
            position += prefix + int.from_bytes(header[position:position + prefix], "little")
        elif kind:
            if kind == 2:
                memo += 1
            elif kind == 1:
                if int.from_bytes(header[position:position + fixed], "little") >= memo:
                    raise ProtocolError("message header reads a memo entry it never stored")
            else:
                return  # STOP
            position += fixed
        else:
            position += fixed
    if position > end:
        raise ProtocolError("message header is truncated")


def decode(frames: list, resolve: Callable[[int], Any] | None = None, strict: bool = False) -> Message:
    """Frames -> message, refusing anything that is not a well-formed simsyft message.

    `resolve(id)` turns a remote reference into a store object (the worker
    passes its store lookup); without it references decode to `Ref`. `strict`
    (the worker's setting) also refuses opcodes our encoder never emits.
    """
    if not frames:
        raise ProtocolError("empty message: no header frame")
    header = frames[0]
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    header = bytes(header)
    if strict:
        _check_opcodes(header)
    try:
        values = _Decoder(header, list(frames[1:]), resolve).load()
    except SimsyftError:
        raise  # ProtocolError, or the resolver's ObjectNotFoundError: already say what is wrong
    except Exception as exc:  # noqa: BLE001 - whatever a hostile frame provokes, it is a bad frame
        raise ProtocolError(f"undecodable message header ({type(exc).__name__}: {exc})") from None
    if not isinstance(values, tuple) or not values or type(values[0]) is not int:
        raise ProtocolError("message header is not a (code, fields...) tuple")
    cls = _KINDS.get(values[0])
    if cls is None:
        raise ProtocolError(f"unknown message code {values[0]}")
    args = values[1:]
    types = _FIELD_TYPES[cls]
    if len(args) != len(types):
        raise ProtocolError(f"{cls.__name__} needs {len(types)} fields, got {len(args)}")
    for name, value, expected in zip(_FIELDS[cls], args, types):
        if expected is not object and type(value) is not expected:
            raise ProtocolError(f"{cls.__name__}.{name} must be {expected.__name__}, got {type(value).__name__}")
    return cls(*args)


def frames_size(frames: list) -> int:
    """Bytes a message puts through the socket (header plus inline buffers)."""
    return sum(len(f) for f in frames)


class _Peeker(_Decoder):
    def persistent_load(self, pid: Any) -> Any:
        return None  # tensors and refs are not needed to read the sequence number


def peek_seq(frames: list) -> int:
    """Best-effort sequence number of an undecodable request, so its error reply can be matched."""
    try:
        header = bytes(frames[0])
        _check_opcodes(header)
        values = _Peeker(header, [], None).load()
        return values[1] if type(values[1]) is int else -1
    except Exception:  # noqa: BLE001 - the frame is already known to be bad; -1 means "the request in flight"
        return -1
