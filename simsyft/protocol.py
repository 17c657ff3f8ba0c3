"""Messages between a client and a worker, and their frames on the wire.

Owns encode/decode and re-exports the message kinds (messages.py). Knows no
sockets and nothing about what an op means; imports messages, compact (fixed
layouts), sharing (tensor descriptors) and errors only.

Wire format: ``[header, *buffers]``. The hot messages (a small op's Command and
Ack, a small tensor's Store, Fetch and Value) use a fixed binary layout when
their fields allow (compact.py; its header never starts with 0x80). Every
other header is a pickle of
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
from typing import Any, Callable

import torch

from . import compact, sharing
from .errors import ProtocolError, SimsyftError
from .messages import (_FIELD_TYPES, _FIELDS, _KINDS, Ack, Aliases, Clear, Command, ErrorReply, Export, Fetch,
                       Free, Import, Info, Message, Objects, Ref, RemoteGet, RemoteRef, Restore, Search, Shutdown,
                       Store, StorePointer, Value)

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
    "Restore",
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
    def __init__(self, header: bytes, buffers: list, resolve: Callable[[int], Any] | None, namespace: str = "") -> None:
        super().__init__(io.BytesIO(header))
        self.buffers = buffers
        self.resolve = resolve
        self.namespace = namespace

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
            return sharing.decode_tensor(value, self.buffers, self.namespace)
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
    """Message -> frames. Large tensors go to shared-memory segments named for `namespace`.

    The hot messages take a fixed binary layout when their fields allow (compact.py); the
    rest, and anything unusual in them, a pickle.
    """
    frames = compact.encode(msg)
    if frames is not None:
        return frames
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
_PROTO = pickle.PROTO
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


def decode(frames: list, resolve: Callable[[int], Any] | None = None, strict: bool = False,
           namespace: str = "") -> Message:
    """Frames -> message, refusing anything that is not a well-formed simsyft message.

    `resolve(id)` turns a remote reference into a store object (the worker
    passes its store lookup); without it references decode to `Ref`. `strict`
    (the worker's setting) also refuses opcodes our encoder never emits.
    `namespace` is the receiver's simulation: only its segments are opened.
    """
    if not frames:
        raise ProtocolError("empty message: no header frame")
    header = frames[0]
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    header = bytes(header)
    if header and header[:1] != _PROTO:
        if len(frames) != 1:
            raise ProtocolError(f"a {header[:1]!r} message is one frame; this one came with {len(frames) - 1} more")
        try:
            return compact.decode(header, resolve)
        except SimsyftError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an absurd shape torch refuses to allocate
            raise ProtocolError(f"undecodable message header ({type(exc).__name__}: {exc})") from None
    if strict:
        _check_opcodes(header)
    try:
        values = _Decoder(header, list(frames[1:]), resolve, namespace).load()
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
    return sum(map(len, frames))


class _Peeker(_Decoder):
    def persistent_load(self, pid: Any) -> Any:
        return None  # tensors and refs are not needed to read the sequence number


def peek_seq(frames: list) -> int:
    """Best-effort sequence number of an undecodable request, so its error reply can be matched."""
    try:
        header = bytes(frames[0])
        if compact.is_compact(header):
            return compact.peek_seq(header)
        _check_opcodes(header)
        values = _Peeker(header, [], None).load()
        return values[1] if type(values[1]) is int else -1
    except Exception:  # noqa: BLE001 - the frame is already known to be bad; -1 means "the request in flight"
        return -1
