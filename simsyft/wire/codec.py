"""Messages <-> frames on the wire.

Owns encode/decode and the persistent-id tags (`Tag`). Knows no sockets and
nothing about what an op means; imports messages, compact (fixed layouts),
tensors (tensor descriptors) and errors only.

Wire format: ``[header, *buffers]``. The hot messages (a small op's Command and
Ack, a small tensor's Store, Fetch and Value) use a fixed binary layout when
their fields allow (compact.py; its header never starts with 0x80). Every
other header is a pickle of
``(code, *fields)`` made only of builtin data (ints, strings, tuples, lists,
dicts, slices, torch dtypes/Size/device); tensors and remote references become
*persistent ids* ``(tag, value)`` so they never go through pickle's object
machinery (`Tag` lists them: a tensor descriptor, see tensors.py; an object
reference; a pointer a worker holds; a memory format or layout by name); dicts
and sets too, so that only our checked code hashes anything. Decoding uses an unpickler whose ``find_class`` resolves nothing outside a
short allowlist, each entry a builder that checks its arguments, so a peer's frame can
never import or call arbitrary code. Note [Decoding is bounded] says why a frame's
cost to the receiver is bounded by its size.

Speed is guarded by bench/ (row "encode+decode 5-element tensor message").
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable

import torch

from . import compact, tensors
from ..errors import ProtocolError, SimsyftError
from .messages import (_FIELD_TYPES, _FIELDS, _KINDS, Message, Ref, RemoteRef, Triple)

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_RANGE_ITEMS",
    "Tag",
    "decode",
    "encode",
    "frames_size",
    "is_delivery",
    "peek_seq",
]

# Headers carry op names, ids, shapes and small scalars; anything near this is an attack or a bug.
MAX_HEADER_BYTES = 16 * 1024 * 1024

# Note [Decoding is bounded]
#     A peer's frame must cost its receiver (a worker, or a client reading a reply from a worker that
#     may be compromised) work and memory in proportion to its size, and must not nest deep enough for
#     a recursive walk in C (torch's argument parser and indexing, tuple hashing) to overflow the stack
#     and kill the process. A pickle amplifies in five ways; each is closed:
#     - Memo reads (BINGET): a 1 KB frame can share one value exponentially often (a = (x, x);
#       b = (a, a); ...) or put a list inside itself. The encoder pickles without a memo (fast mode)
#       and the decoder refuses memo reads, so a decoded message is a tree of at most one value per
#       opcode, and no later walk of it can do more than the frame's size in steps.
#     - REDUCE of an allowed constructor: set(range(5 * 10**7)) is 64 bytes. Each allowed global is
#       a builder that checks its arguments (_ALLOWED_GLOBALS); set and frozenset are not globals at
#       all, and ranges, which torch materialises as int lists, hold at most MAX_RANGE_ITEMS together.
#     - Hashing inside the unpickler: SETITEM, ADDITEMS and FROZENSET hash keys recursively in C (a key
#       nested 10**6 deep overflows the stack) and let keys collide on purpose (ints equal mod 2**61 - 1
#       make a dict quadratic); SETITEM and ADDITEMS on a tensor even run torch indexing and
#       Tensor.add. Those opcodes are refused; dicts and sets travel as persistent ids whose keys
#       must be flat: str, bytes (salted hashes), bool, None or an int of magnitude below 2**61 (whose
#       hash is itself, but for -1 and -2).
#     - Big ints: LONG4 is refused (ints up to 2040 bits still travel as LONG1), so hashing or
#       comparing an int is constant work.
#     - Tensor descriptors: an inline frame or a CUDA block feeds one tensor, or naming one big frame
#       many times would copy it that many times; a shape must count its elements in int64
#       (tensors.decode_tensor).
#     What remains is depth: more than MAX_DEPTH nested containers are refused. The opcode scan counts
#     the opcodes that build a container (an upper bound on the depth), so only a message with more
#     than MAX_DEPTH of them pays for a walk that measures it.
# The largest depth a real message needs: the header tuple, Command.args, then the user's nesting
# (torch.cat([a, b]) is 3, x[[[0, 1], [1, 0]]] is 4; an Ack of nested results ~7). torch's indexing
# recursion crashed at ~60,000 levels; Python's repr and the worker's own walks stop at ~1,000.
MAX_DEPTH = 32
# torch turns a range passed as an int list into a list (36 bytes an element): a 12-byte range
# could otherwise ask for gigabytes. x[range(1000)] and .permute(range(4)) stay far below.
MAX_RANGE_ITEMS = 1 << 16



_MEMORY_FORMATS = {str(f).removeprefix("torch."): f for f in vars(torch).values() if isinstance(f, torch.memory_format)}
_LAYOUTS = {str(f).removeprefix("torch."): f for f in vars(torch).values() if isinstance(f, torch.layout)}


def _build_slice(*args: Any) -> slice:
    if len(args) > 3 or not all(a is None or type(a) is int for a in args):
        raise ProtocolError("a slice in the message holds something other than ints and None")
    return slice(*args)


def _build_complex(*args: Any) -> complex:
    if len(args) != 2 or not all(type(a) is float or type(a) is int for a in args):
        raise ProtocolError("a complex number in the message is not made of two floats")
    return complex(*args)


def _build_size(*args: Any) -> torch.Size:
    if len(args) != 1 or type(args[0]) is not tuple or not all(type(n) is int for n in args[0]):
        raise ProtocolError("a torch.Size in the message is not a tuple of ints")
    return torch.Size(args[0])


def _build_device(*args: Any) -> torch.device:
    if not (1 <= len(args) <= 2 and type(args[0]) in (str, int) and (len(args) == 1 or type(args[1]) is int)):
        raise ProtocolError("a torch.device in the message is not a (type, index) pair")
    if type(args[0]) is str and len(args[0]) > 64:
        raise ProtocolError(f"a torch.device in the message names a device of {len(args[0])} characters")
    return torch.device(*args)


def _build_range(decoder: "_Decoder", args: tuple) -> range:
    if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
        raise ProtocolError("a range in the message holds something other than ints")
    built = range(*args)
    try:
        decoder.range_items += len(built)
    except OverflowError:  # longer than sys.maxsize
        decoder.range_items = MAX_RANGE_ITEMS + 1
    if decoder.range_items > MAX_RANGE_ITEMS:
        raise ProtocolError(f"the ranges in the message hold more than {MAX_RANGE_ITEMS} numbers; "
                            "send a tensor (torch.arange) instead")
    return built


# Note [Decoding is bounded]: what a peer may name, each a value or a builder checking its arguments.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "slice"): _build_slice,
    ("builtins", "range"): _build_range,  # bound to the decoder by find_class (it counts items)
    ("builtins", "complex"): _build_complex,
    ("builtins", "Ellipsis"): Ellipsis,
    ("torch", "Size"): _build_size,
    ("torch", "device"): _build_device,
    **{("torch", name): dtype for name, dtype in tensors._DTYPES.items()},
}

# Dict keys and set items: types whose hash costs O(1) (str and bytes cache theirs) and never
# collides on purpose. Ints are checked to lie below 2**61 as well.
_FLAT_KEYS = frozenset({str, int, bool, bytes, type(None)})
_HASH_SAFE = 1 << 61


def _check_keys(keys: tuple, what: str) -> None:
    for key in keys:
        kind = type(key)
        if kind is not str and (kind not in _FLAT_KEYS or (kind is int and not -_HASH_SAFE < key < _HASH_SAFE)):
            raise ProtocolError(f"a {what} in the message holds a {kind.__name__}; only str, bytes, bool, "
                                "None and ints below 2**61 are accepted")


_PLAIN_TYPES = frozenset({tuple, int, str, bool, float, type(None), bytes, list, complex, slice})


class Tag:
    """Persistent-id tags in a pickled header: ``(tag, value)`` stands for one non-plain value."""

    TENSOR = "T"  # (TENSOR, descriptor): tensors.encode_tensor / decode_tensor
    REF = "R"  # (REF, object id): an object in the receiver's store
    POINTER = "P"  # (POINTER, (id, location, id_at_location, meta)): a pointer a worker holds
    MEMORY_FORMAT = "M"  # (MEMORY_FORMAT, name): torch.contiguous_format, ...
    LAYOUT = "L"  # (LAYOUT, name): torch.strided, ...
    DICT = "D"  # (DICT, (*keys, *values))
    SET = "S"  # (SET, items)
    FROZENSET = "F"  # (FROZENSET, items)


class _Encoder(pickle.Pickler):
    def __init__(self, file: io.BytesIO, buffers: list, namespace: str) -> None:
        super().__init__(file, protocol=5)
        self.fast = True  # no memo: the decoder refuses memo reads (Note [Decoding is bounded])
        self.buffers = buffers
        self.namespace = namespace

    def persistent_id(self, obj: Any) -> Any:
        # Called for every object pickled (~17 for a small Command): plain types leave first.
        kind = type(obj)
        if kind in _PLAIN_TYPES:
            return None
        if kind is dict:  # an empty one stays EMPTY_DICT: nothing to hash
            return (Tag.DICT, (*obj, *obj.values())) if obj else None
        if kind is set or kind is frozenset:
            return (Tag.SET if kind is set else Tag.FROZENSET, tuple(obj))
        if isinstance(obj, torch.Tensor):
            return (Tag.TENSOR, tensors.encode_tensor(obj, self.buffers, self.namespace))
        if type(obj) is tensors.Handover:
            return (Tag.TENSOR, obj.describe(self.buffers, self.namespace))
        if type(obj) is Ref:
            return (Tag.REF, obj.id)
        if type(obj) is RemoteRef:
            return (Tag.POINTER, (obj.id, obj.location, obj.id_at_location, obj.meta))
        if isinstance(obj, torch.memory_format):
            return (Tag.MEMORY_FORMAT, str(obj).removeprefix("torch."))
        if isinstance(obj, torch.layout):
            return (Tag.LAYOUT, str(obj).removeprefix("torch."))
        return None


class _Decoder(pickle.Unpickler):
    def __init__(self, header: bytes, buffers: list, resolve: Callable[[int], Any] | None, namespace: str = "") -> None:
        super().__init__(io.BytesIO(header))
        self.buffers = buffers
        self.resolve = resolve
        self.range_items = 0
        self.data_used: set = set()  # each inline frame or CUDA block feeds one tensor (tensors.decode_tensor)
        self.namespace = namespace

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ProtocolError(f"message refers to {module}.{name}, which is not an allowed type") from None
        if found is _build_range:
            return lambda *args: _build_range(self, args)
        return found

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 2:
            raise ProtocolError(f"malformed persistent id {pid!r:.100}")
        tag, value = pid
        if tag == Tag.TENSOR:
            return tensors.decode_tensor(value, self.buffers, self.namespace, self.data_used)
        if tag == Tag.REF:
            if not isinstance(value, int):
                raise ProtocolError(f"object reference must be an int, got {type(value).__name__}")
            return self.resolve(value) if self.resolve is not None else Ref(value)
        if tag == Tag.DICT:
            if type(value) is not tuple or len(value) % 2:
                raise ProtocolError("malformed dict in the message: not a tuple of keys then values")
            half = len(value) >> 1
            keys = value[:half]
            _check_keys(keys, "dict key")
            return dict(zip(keys, value[half:]))
        if tag == Tag.SET or tag == Tag.FROZENSET:
            if type(value) is not tuple:
                raise ProtocolError("malformed set in the message: not a tuple of items")
            _check_keys(value, "set")
            return set(value) if tag == Tag.SET else frozenset(value)
        if tag == Tag.POINTER:
            if not (isinstance(value, tuple) and len(value) == 4 and type(value[0]) is int
                    and type(value[1]) is str and type(value[2]) is int and type(value[3]) is tuple):
                raise ProtocolError(f"malformed remote pointer {value!r:.100}")
            if _depth_exceeds(value[3], MAX_DEPTH):  # a pointer's metadata is kept and re-sent
                raise ProtocolError(f"remote pointer metadata nests more than {MAX_DEPTH} deep")
            return RemoteRef(*value)
        if type(value) is str:  # hashing anything else could recurse without end
            if tag == Tag.MEMORY_FORMAT and value in _MEMORY_FORMATS:
                return _MEMORY_FORMATS[value]
            if tag == Tag.LAYOUT and value in _LAYOUTS:
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


# Every header's opcodes are checked before the C unpickler sees it (the worker's and the
# client's: a worker may be compromised). Only opcodes our encoder emits are allowed (a whitelist):
# PUT/BINPUT/LONG_BINPUT would let a 9-byte header make the C unpickler allocate a memo of
# gigabytes, GLOBAL/INST/OBJ/EXT* reach code, and Note [Decoding is bounded] says why memo reads,
# dict and set opcodes, LONG4 and BYTEARRAY8 are refused too (MEMOIZE alone stores a value that can
# never be read: harmless, and what a stock pickler writes). Each entry is (bytes of fixed argument,
# bytes of a little-endian length prefix for a variable argument, kind): kind 1 builds a container
# (counted: their number bounds the depth), 2 is STOP, 0 anything else.
_OPCODES: dict[int, tuple[int, int, int]] = {
    op[0]: shape for op, shape in {
        pickle.PROTO: (1, 0, 0), pickle.FRAME: (8, 0, 0), pickle.MEMOIZE: (0, 0, 0), pickle.MARK: (0, 0, 0),
        pickle.STOP: (0, 0, 2), pickle.POP: (0, 0, 0),
        pickle.TUPLE: (0, 0, 1), pickle.TUPLE1: (0, 0, 1), pickle.TUPLE2: (0, 0, 1), pickle.TUPLE3: (0, 0, 1),
        pickle.EMPTY_TUPLE: (0, 0, 1), pickle.EMPTY_LIST: (0, 0, 1), pickle.LIST: (0, 0, 1),
        pickle.EMPTY_DICT: (0, 0, 1), pickle.APPEND: (0, 0, 0), pickle.APPENDS: (0, 0, 0),
        pickle.NONE: (0, 0, 0), pickle.NEWTRUE: (0, 0, 0), pickle.NEWFALSE: (0, 0, 0),
        pickle.BININT: (4, 0, 0), pickle.BININT1: (1, 0, 0), pickle.BININT2: (2, 0, 0), pickle.BINFLOAT: (8, 0, 0),
        pickle.LONG1: (0, 1, 0), pickle.SHORT_BINUNICODE: (0, 1, 0), pickle.BINUNICODE: (0, 4, 0),
        pickle.BINUNICODE8: (0, 8, 0), pickle.SHORT_BINBYTES: (0, 1, 0), pickle.BINBYTES: (0, 4, 0),
        pickle.BINBYTES8: (0, 8, 0), pickle.STACK_GLOBAL: (0, 0, 0), pickle.REDUCE: (0, 0, 0),
        pickle.BINPERSID: (0, 0, 0),
    }.items()
}
_PROTO = pickle.PROTO

# Per opcode byte, one int (a list of ints indexes and compares fastest): 0 refused; -n a length
# prefix of n bytes follows; else the bytes to step over, plus _CONTAINER for a container opcode,
# or _STOP.
_CONTAINER, _STOP = 100, 1000
_OPCODE_STEPS: list[int] = [0] * 256
for _op, (_fixed, _prefix, _kind) in _OPCODES.items():
    _OPCODE_STEPS[_op] = -_prefix if _prefix else _STOP if _kind == 2 else 1 + _fixed + (_CONTAINER if _kind else 0)
_MEMO_READS = {pickle.BINGET[0], pickle.LONG_BINGET[0], pickle.GET[0]}


def _check_opcodes(header: bytes) -> int:
    """Refuse a header using any opcode our encoder does not emit; return its container opcodes.

    A tight loop over the opcodes (~1.5 us for a small Command). The count bounds the decoded
    message's depth (Note [Decoding is bounded]).
    """
    position = containers = 0
    steps = _OPCODE_STEPS
    try:
        while True:
            step = steps[header[position]]  # IndexError past the end: no STOP
            if step > 0:
                if step < _CONTAINER:
                    position += step
                elif step < _STOP:
                    position += step - _CONTAINER
                    containers += 1
                else:
                    return containers
            elif step == -1:  # SHORT_BINUNICODE, SHORT_BINBYTES, LONG1: the common case
                position += 2 + header[position + 1]
            elif step:
                position += 1 - step + int.from_bytes(header[position + 1:position + 1 - step], "little")
            else:
                op = header[position]
                if op in _MEMO_READS:
                    raise ProtocolError(f"message header reads the pickle memo at byte {position}; simsyft never "
                                        "shares a value within a message")
                raise ProtocolError(f"message header uses pickle opcode {bytes([op])!r} at byte {position}, "
                                    "which simsyft never sends")
    except IndexError:
        raise ProtocolError("undecodable message header (truncated: it ends before its STOP opcode)") from None


def _depth_exceeds(root: Any, limit: int) -> bool:
    """Whether a decoded message nests more than `limit` containers deep. A level at a time,
    never recursing; the message is a tree (no memo), so each container is seen once. Store
    objects a reference resolved to are not entered (a RemoteRef's meta was checked on arrival)."""
    level = [root]
    for _ in range(limit):
        below = []
        for value in level:
            kind = type(value)
            if kind is tuple or kind is list:
                below.extend(value)
            elif kind is dict:
                below.extend(value.values())  # keys are flat (_check_keys)
        level = [value for value in below if type(value) in _NESTING]
        if not level:
            return False
    return True


_NESTING = frozenset({tuple, list, dict})


def decode(frames: list, resolve: Callable[[int], Any] | None = None, strict: bool = False,
           namespace: str = "") -> Message:
    """Frames -> message, refusing anything that is not a well-formed simsyft message.

    `resolve(id)` turns a remote reference into a store object (the worker
    passes its store lookup); without it references decode to `Ref`. Every frame
    is checked as strictly as the worker always did (Note [Decoding is bounded]),
    so `strict` changes nothing; it stays for callers that pass it.
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
    containers = _check_opcodes(header)
    try:
        values = _Decoder(header, list(frames[1:]), resolve, namespace).load()
    except SimsyftError:
        raise  # ProtocolError, or the resolver's ObjectNotFoundError: already say what is wrong
    except Exception as exc:  # noqa: BLE001 - whatever a hostile frame provokes, it is a bad frame
        raise ProtocolError(f"undecodable message header ({type(exc).__name__}: {exc})") from None
    if containers > MAX_DEPTH and _depth_exceeds(values, MAX_DEPTH):
        raise ProtocolError(f"message nests containers more than {MAX_DEPTH} deep (simsyft's limit, "
                            "protocol.MAX_DEPTH); flatten the arguments or send a tensor")
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


def is_delivery(frames: list) -> bool:
    """Whether a request is a one-way deal of Beaver triple shares (a Triple, `reply` False),
    read from its header without building its tensors (worker/mpc.py, Note [One-way deals])."""
    try:
        header = bytes(frames[0])
        if compact.is_compact(header):
            return False  # compact layouts carry commands and replies only
        _check_opcodes(header)
        values = _Peeker(header, [], None).load()
        return values[0] == Triple.code and values[-1] is False
    except Exception:  # noqa: BLE001 - an undecodable frame is served (and refused) in its turn
        return False


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
