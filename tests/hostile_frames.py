"""Hostile headers from the decode-bounds security review (issue 10), built opcode by opcode as an
attacker would, not with simsyft's encoder. Shared by tests/unit/test_decode_bounds.py and
tests/e2e/test_hostile_frames.py.

Each used to make a decoder spend time or memory out of proportion to its size, or kill the
process; protocol.py's Note [Decoding is bounded] says how each is refused now.
"""

from __future__ import annotations

import pickle
import struct

P = pickle
PRIME = (1 << 61) - 1  # hash(k * PRIME) == 0 for every int k: keys that all collide


def text(s: str) -> bytes:
    raw = s.encode()
    if len(raw) < 256:
        return P.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return P.BINUNICODE + struct.pack("<I", len(raw)) + raw


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return P.BININT1 + bytes([n])
    if -(1 << 31) <= n < (1 << 31):
        return P.BININT + struct.pack("<i", n)
    raw = pickle.encode_long(n)
    return P.LONG1 + bytes([len(raw)]) + raw if len(raw) < 256 else P.LONG4 + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    return text(module) + text(name) + P.STACK_GLOBAL


def ref(object_id: int) -> bytes:
    """A reference to a stored object (what a pointer becomes on the wire)."""
    return text("R") + integer(object_id) + P.TUPLE2 + P.BINPERSID


def header(*fields: bytes) -> bytes:
    return P.PROTO + b"\x05" + P.MARK + b"".join(fields) + P.TUPLE + P.STOP


def command(op: str, args: list, kwargs: bytes = P.EMPTY_DICT, seq: int = 1, result_id: int = 99) -> bytes:
    """Command(seq, op, args, kwargs, result_id, True, (), True)."""
    return header(integer(1), integer(seq), text(op), P.MARK + b"".join(args) + P.TUPLE, kwargs,
                  integer(result_id), P.NEWTRUE, P.EMPTY_TUPLE, P.NEWTRUE)


def value(payload: bytes, seq: int = 1) -> bytes:
    """Value(seq, payload): what a worker sends a client."""
    return header(integer(17), integer(seq), payload)


def info(prelude: bytes, seq: int = 1) -> bytes:
    """Info(seq), after `prelude` ran on the unpickler's stack and was popped."""
    return P.PROTO + b"\x05" + prelude + P.POP + P.MARK + integer(6) + integer(seq) + P.TUPLE + P.STOP


# -- payloads (one pickled value each) ------------------------------------------

def constructor_over_range(constructor: tuple[str, str], n: int) -> bytes:
    """constructor(range(n)) through REDUCE: set(range(5 * 10**7)) is a 64-byte frame."""
    return glob(*constructor) + glob("builtins", "range") + integer(n) + P.TUPLE1 + P.REDUCE + P.TUPLE1 + P.REDUCE


def long_range(n: int) -> bytes:
    return glob("builtins", "range") + integer(n) + P.TUPLE1 + P.REDUCE


def deep_list(depth: int) -> bytes:
    """[[[...[None]...]]], 2 bytes a level."""
    return P.EMPTY_LIST * depth + P.NONE + P.APPEND * depth


def deep_tuple(depth: int) -> bytes:
    """((((None,),),),...): TUPLE1 nests without growing the unpickler's stack, 1 byte a level."""
    return P.NONE + P.TUPLE1 * depth


def memo_dag(levels: int) -> bytes:
    """a = (None, None); b = (a, a); ...: under 1 KB, a tree of 2**levels values."""
    assert levels < 255
    out = P.NONE + P.MEMOIZE + P.POP
    for i in range(levels):
        out += P.BINGET + bytes([i]) + P.BINGET + bytes([i]) + P.TUPLE2 + P.MEMOIZE + P.POP
    return out + P.BINGET + bytes([levels])


def self_containing_list() -> bytes:
    """l = [l], through the memo."""
    return P.EMPTY_LIST + P.MEMOIZE + P.BINGET + b"\x00" + P.APPEND


def dict_with_key(key: bytes) -> bytes:
    """{key: None} with SETITEM: the C unpickler hashes the key (recursively, in C)."""
    return P.EMPTY_DICT + key + P.NONE + P.SETITEM


def colliding_dict(n: int) -> bytes:
    """n int keys whose hashes are all 0, with SETITEMS: quadratic to build."""
    return P.EMPTY_DICT + P.MARK + b"".join(integer(k * PRIME) + P.NONE for k in range(1, n + 1)) + P.SETITEMS


def colliding_dict_pid(n: int) -> bytes:
    """The same keys in the form simsyft's encoder uses for a dict: ("D", (*keys, *values))."""
    keys = b"".join(integer(k * PRIME) for k in range(1, n + 1))
    return text("D") + P.MARK + keys + P.NONE * n + P.TUPLE + P.TUPLE2 + P.BINPERSID


def big_int(nbytes: int) -> bytes:
    raw = b"\xff" * (nbytes - 1) + b"\x7f"
    return P.LONG4 + struct.pack("<I", len(raw)) + raw


def tensor_pid(dtype: str, shape: tuple, data: bytes) -> bytes:
    """("T", (dtype, shape, False, data, None)); `data` is the pickled location tuple."""
    dims = P.MARK + b"".join(integer(n) for n in shape) + P.TUPLE
    desc = P.MARK + text(dtype) + dims + P.NEWFALSE + data + P.NONE + P.TUPLE
    return text("T") + desc + P.TUPLE2 + P.BINPERSID


def inline(index: int) -> bytes:
    return text("i") + integer(index) + P.TUPLE2


def empty_data() -> bytes:
    return text("e") + P.TUPLE1


def tuple_of(items: list) -> bytes:
    return P.MARK + b"".join(items) + P.TUPLE


def setitem_on(object_id: int) -> bytes:
    """stored[0] = 7.0, run by the unpickler itself: SETITEM on a resolved store tensor."""
    return ref(object_id) + integer(0) + P.BINFLOAT + struct.pack(">d", 7.0) + P.SETITEM


def additems_on(object_id: int) -> bytes:
    """ADDITEMS on a resolved store tensor calls Tensor.add for each item."""
    return ref(object_id) + P.MARK + integer(5) + P.ADDITEMS


def keyed_by(key: bytes) -> bytes:
    """{key: None} in the form simsyft's encoder uses for a dict."""
    return text("D") + key + P.NONE + P.TUPLE2 + P.TUPLE2 + P.BINPERSID


# The hostile messages a worker holding a tensor under `object_id` is sent, with a fragment of the
# ProtocolError each must get. Most are Commands, which a worker accepts, so the refusal must come
# from decoding. `small` scales the bombs down where the size is not the point, so that running
# these tests against a decoder without the bounds fails in seconds rather than taking gigabytes.
def worker_frames(object_id: int, small: bool = False) -> dict[str, tuple[list, str]]:
    x = ref(object_id)
    getitem, add = "torch.Tensor.__getitem__", "torch.add"
    bomb = 2 * 10**6 if small else 5 * 10**7
    deep = "nests containers more than 32 deep"
    memo = "reads the pickle memo"
    never = "which simsyft never sends"
    ranges = "ranges in the message hold more than 65536"
    keys = 2_000 if small else 20_000
    return {
        # the review's findings: 24 s and 8.1 GB; SIGSEGV
        "set_range_bomb": ([command(add, [x, constructor_over_range(("builtins", "set"), bomb)])],
                           "builtins.set, which is not an allowed type"),
        "deep_list_index": ([command(getitem, [x, deep_list(60_000)])], deep),
        # the same ways in, by other routes
        "frozenset_range_bomb": ([command(add, [x, constructor_over_range(("builtins", "frozenset"), bomb)])],
                                 "builtins.frozenset, which is not an allowed type"),
        "size_range_bomb": ([command("torch.Tensor.view", [x, constructor_over_range(("torch", "Size"), bomb)])],
                            ranges),
        "range_as_index": ([command(getitem, [x, long_range(10**7 if small else 10**9)])], ranges),
        "deep_tuple_index": ([command(getitem, [x, deep_tuple(120_000)])], deep),
        "deep_tuple_dict_key": ([command(add, [x, x], kwargs=dict_with_key(deep_tuple(1_000_000)))], never),
        "deep_tuple_dict_key_pid": ([command(add, [x, x], kwargs=keyed_by(deep_tuple(1_000_000)))],
                                    "dict key in the message holds a tuple"),
        "memo_dag_index": ([command(getitem, [x, memo_dag(22 if small else 60)])], memo),
        "memo_dag_dict_key": ([command(add, [x, x], kwargs=dict_with_key(memo_dag(24 if small else 60)))], memo),
        "self_containing_list": ([command(getitem, [x, self_containing_list()])], memo),
        "colliding_dict": ([command(add, [x, x], kwargs=colliding_dict(keys))], never),
        "colliding_dict_pid": ([command(add, [x, x], kwargs=colliding_dict_pid(keys))], "ints below 2**61"),
        "setitem_on_stored_tensor": ([info(setitem_on(object_id))], never),
        "additems_on_stored_tensor": ([info(additems_on(object_id))], never),
        "big_int": ([command(add, [x, big_int(1 << 20)])], never),
        "one_frame_many_tensors": ([command(add, [x, tuple_of([tensor_pid("uint8", (1 << 20,), inline(0))]
                                                              * (16 if small else 256))]),
                                    bytes(1 << 20)], "two tensor descriptors name frame 0"),
        "shape_product_overflow": ([command(add, [x, tensor_pid("uint8", (0,) + (1 << 62,) * 20_000, empty_data())])],
                                   "more elements than int64 can count"),
    }


# Frames that killed the process outright before the bounds (SIGSEGV: a C stack overflow in torch's
# indexing or in tuple hashing): tests run these in a child process, where a crash is a failure.
CRASHED_THE_PROCESS = ("deep_list_index", "deep_tuple_index", "deep_tuple_dict_key")
