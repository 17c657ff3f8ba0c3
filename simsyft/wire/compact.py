"""Fixed binary layouts for the messages every small op sends: Command, Ack, Store, Fetch, Value.

Owns `encode(msg) -> frames | None` and `decode(header, resolve) -> Message`. A message
qualifies when its fields are plain: a Command's args are references and scalars and its
kwargs empty; an Ack describes one tensor (or nothing); a tensor is small (<= INLINE_MAX),
dense, contiguous, on the CPU, without a grad. Anything else makes `encode` return None and
protocol.py pickles it. The first header byte names the layout; a pickle header always starts
with 0x80 (PROTO), which no layout uses.

Why: through pickle a small Command cost ~10 us a side (a Python persistent_id per object,
then the worker's opcode check); a struct layout costs ~1-2. Decoding a layout never runs
code: fixed-width numbers, an ASCII op name and raw tensor bytes, every length checked
against the frame. Speed is guarded by bench/ (rows "small sync op", "encode+decode").

Imports messages, sharing (INLINE_MAX, tensor_from_bytes) and errors only.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable

import torch

from . import tensors
from ..errors import ProtocolError
from .messages import Ack, Command, Fetch, Message, Ref, Result, Store, Value

__all__ = ["decode", "encode", "is_compact", "peek_seq"]

# Layout tags (first header byte).
_COMMAND, _ACK, _STORE, _VALUE, _FETCH = b"C"[0], b"A"[0], b"S"[0], b"V"[0], b"F"[0]

# tag, flags (1 grad_enabled, 2 reply), len(op), len(args), len(free), seq, result_id;
# then the op name (ASCII), one code byte per arg, 8 bytes per arg, 8 bytes per freed id.
_COMMAND_HEAD = struct.Struct("<BBBBHqq")
# tag, kind (0 Result.NEW, 1 Result.SAME, 2 Result.NOTHING), dtype, ndim, requires_grad, len(device), seq, id;
# then ndim sizes and the device name (ASCII).
_ACK_HEAD = struct.Struct("<BBBBBBxxqq")
# tag, dtype, ndim, requires_grad, seq, id (0 in a Value); then ndim sizes and the raw bytes.
_TENSOR_HEAD = struct.Struct("<BBBBxxxxqq")
# tag, remove, seq, id.
_FETCH_HEAD = struct.Struct("<BBxxxxxxqq")

_SIZES = [struct.Struct(f"<{n}q") for n in range(256)]  # a shape of n dims

# Dtypes a layout carries, by index; any other dtype is pickled.
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
_DTYPE_INDEX = {dtype: i for i, dtype in enumerate(_DTYPES)}
_DTYPE_NAME_INDEX = {tensors.dtype_name(dtype): i for i, dtype in enumerate(_DTYPES)}
_DTYPE_NAMES = tuple(tensors.dtype_name(dtype) for dtype in _DTYPES)

_ACK_KINDS = {Result.NEW: 0, Result.SAME: 1}
_ACK_KIND_NAMES = (Result.NEW, Result.SAME)

# Command argument codes; each arg takes 8 bytes (an int64, a double, or padding).
_REF, _INT, _FLOAT, _TRUE, _FALSE, _NONE = b"RifTFN"
_ARG_FORMATS = {_REF: "q", _INT: "q", _FLOAT: "d", _TRUE: "8x", _FALSE: "8x", _NONE: "8x"}
_CONSTANTS = {_TRUE: True, _FALSE: False, _NONE: None}


def is_compact(header: Any) -> bool:
    """Whether a header frame uses one of these layouts (else it is a pickle)."""
    return len(header) > 0 and header[0] in _DECODERS


# -- encode ---------------------------------------------------------------------

def encode(msg: Message) -> list | None:
    """`msg` as one frame in a fixed layout, or None when it does not qualify."""
    encoder = _ENCODERS.get(type(msg))
    return encoder(msg) if encoder is not None else None


def _encode_command(msg: Command) -> list | None:
    args, free = msg.args, msg.free
    if msg.kwargs or len(args) > 255 or len(free) > 0xFFFF:
        return None
    codes = bytearray()
    values = []
    for arg in args:
        kind = type(arg)
        if kind is Ref:
            codes.append(_REF)
            values.append(arg.id)
        elif kind is int:
            codes.append(_INT)
            values.append(arg)
        elif kind is float:
            codes.append(_FLOAT)
            values.append(arg)
        elif arg is True:
            codes.append(_TRUE)
        elif arg is False:
            codes.append(_FALSE)
        elif arg is None:
            codes.append(_NONE)
        else:
            return None
    key = (msg.op, bytes(codes), len(free))
    shape = _COMMAND_SHAPES.get(key)
    if shape is None:
        shape = _command_shape(*key)
        if shape is None:
            return None
    layout, op = shape
    flags = (1 if msg.grad_enabled else 0) | (2 if msg.reply else 0)
    try:
        return [layout.pack(_COMMAND, flags, len(op), len(codes), len(free), msg.seq, msg.result_id, op, key[1],
                            *values, *free)]
    except struct.error:  # an int or id out of int64 range: let pickle carry it
        return None


# (op, codes, len(free)) -> (one struct for the whole frame, op name as bytes): a loop reuses both.
_COMMAND_SHAPES: dict[tuple, tuple] = {}


def _command_shape(op: str, codes: bytes, nfree: int) -> tuple | None:
    try:
        name = op.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(name) > 255:
        return None
    layout = struct.Struct(f"{_COMMAND_HEAD.format}{len(name)}s{len(codes)}s{_arg_formats(codes)}{nfree}q")
    if len(_COMMAND_SHAPES) >= 4096:
        _COMMAND_SHAPES.clear()
    _COMMAND_SHAPES[(op, codes, nfree)] = (layout, name)
    return layout, name


def _encode_ack(msg: Ack) -> list | None:
    result = msg.result
    if result == (Result.NOTHING,):
        return [_ACK_HEAD.pack(_ACK, 2, 0, 0, 0, 0, msg.seq, 0)]
    if len(result) != 6:
        return None
    kind, object_id, dtype, shape, requires_grad, device = result
    kind_index = _ACK_KINDS.get(kind)
    dtype_index = _DTYPE_NAME_INDEX.get(dtype)
    if kind_index is None or dtype_index is None or type(shape) is not tuple or len(shape) > 255:
        return None
    try:
        name = device.encode("ascii")
        return [_ACK_HEAD.pack(_ACK, kind_index, dtype_index, len(shape), bool(requires_grad), len(name),
                               msg.seq, object_id) + _SIZES[len(shape)].pack(*shape) + name]
    except (struct.error, UnicodeEncodeError, AttributeError):
        return None


def _tensor_parts(tensor: Any) -> tuple | None:
    """(dtype index, shape, requires_grad, raw bytes) of a tensor a layout can carry, else None."""
    if type(tensor) is not torch.Tensor and type(tensor) is not torch.nn.Parameter:
        return None
    dtype_index = _DTYPE_INDEX.get(tensor.dtype)
    if dtype_index is None or not tensor.is_cpu or tensor.layout is not torch.strided:
        return None
    # Only a leaf without a grad: a non-leaf or a grad takes pickle's full descriptor. (Autograd
    # refuses even is_leaf on some views made under no_grad: those are pickled too.)
    try:
        if not tensor.is_leaf or tensor.grad is not None:
            return None
    except RuntimeError:
        return None
    if tensor.is_conj() or tensor.is_neg() or tensor._is_zerotensor() or not tensor.is_contiguous():
        return None
    shape = tuple(tensor.shape)
    if len(shape) > 255:
        return None
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes > tensors.INLINE_MAX:
        return None
    raw = ctypes.string_at(tensor.data_ptr(), nbytes) if nbytes else b""
    return dtype_index, shape, tensor.requires_grad, raw


def _encode_tensor_message(tag: int, seq: int, object_id: int, tensor: Any) -> list | None:
    parts = _tensor_parts(tensor)
    if parts is None:
        return None
    dtype_index, shape, requires_grad, raw = parts
    try:
        return [_TENSOR_HEAD.pack(tag, dtype_index, len(shape), requires_grad, seq, object_id)
                + _SIZES[len(shape)].pack(*shape) + raw]
    except struct.error:  # a seq or id out of int64 range (never ours): let pickle carry it
        return None


def _encode_store(msg: Store) -> list | None:
    if msg.tags or msg.description is not None:
        return None
    return _encode_tensor_message(_STORE, msg.seq, msg.id, msg.value)


def _encode_value(msg: Value) -> list | None:
    return _encode_tensor_message(_VALUE, msg.seq, 0, msg.value)


def _encode_fetch(msg: Fetch) -> list | None:
    try:
        return [_FETCH_HEAD.pack(_FETCH, bool(msg.remove), msg.seq, msg.id)]
    except struct.error:
        return None


_ENCODERS: dict[type, Callable[[Any], list | None]] = {
    Command: _encode_command, Ack: _encode_ack, Store: _encode_store, Value: _encode_value, Fetch: _encode_fetch,
}


# -- decode ---------------------------------------------------------------------

def decode(header: bytes, resolve: Callable[[int], Any] | None) -> Message:
    """A header in one of these layouts -> its message; ProtocolError if it is malformed."""
    decoder = _DECODERS.get(header[0]) if header else None
    if decoder is None:
        raise ProtocolError(f"message header starts with {header[:1]!r}, which is neither a pickle nor a "
                            "simsyft layout")
    return decoder(header, resolve)


def _decode_command(header: bytes, resolve: Callable[[int], Any] | None) -> Command:
    _, flags, op_len, nargs, nfree, seq, result_id = _unpack(_COMMAND_HEAD, header, 0, "Command")
    if flags & ~3:
        raise ProtocolError(f"Command has unknown flags {flags:#x}")
    position = _COMMAND_HEAD.size + op_len + nargs
    key = (header[_COMMAND_HEAD.size:position], op_len, nfree)
    plan = _COMMAND_PLANS.get(key)
    if plan is None:
        plan = _command_plan(*key)
    op, codes, layout, all_refs = plan
    if len(header) != position + layout.size:
        raise ProtocolError(f"Command frame has {len(header)} bytes, its counts need {position + layout.size}")
    values = layout.unpack_from(header, position)
    if nfree:
        free, values = values[-nfree:], values[:-nfree]
    else:
        free = ()
    if all_refs:
        args = tuple(map(resolve, values)) if resolve is not None else tuple(map(Ref, values))
    else:
        out = []
        index = 0
        for code in codes:
            if code == _REF:
                out.append(resolve(values[index]) if resolve is not None else Ref(values[index]))
                index += 1
            elif code == _INT or code == _FLOAT:
                out.append(values[index])
                index += 1
            else:
                out.append(_CONSTANTS[code])
        args = tuple(out)
    return Command(seq, op, args, {}, result_id, bool(flags & 1), free, bool(flags & 2))


# (op name + arg codes as on the wire, len(op), len(free)) -> how to read the rest; bounded, as a
# peer could invent names and codes.
_COMMAND_PLANS: dict[tuple, tuple] = {}


def _command_plan(names: bytes, op_len: int, nfree: int) -> tuple:
    codes = names[op_len:]
    try:
        op = names[:op_len].decode("ascii")
        layout = struct.Struct(f"<{_arg_formats(codes)}{nfree}q")
    except (UnicodeDecodeError, KeyError):
        raise ProtocolError("Command has a non-ASCII op name or an unknown argument code") from None
    plan = (op, codes, layout, all(code == _REF for code in codes))
    if len(_COMMAND_PLANS) >= 4096:
        _COMMAND_PLANS.clear()
    _COMMAND_PLANS[(names, op_len, nfree)] = plan
    return plan


def _decode_ack(header: bytes, resolve: Callable[[int], Any] | None) -> Ack:
    _, kind, dtype_index, ndim, requires_grad, name_len, seq, object_id = _unpack(_ACK_HEAD, header, 0, "Ack")
    if kind == 2:
        if len(header) != _ACK_HEAD.size:
            raise ProtocolError("Ack of no result carries extra bytes")
        return Ack(seq, (Result.NOTHING,))
    position = _ACK_HEAD.size
    sizes = _SIZES[ndim]
    if kind > 2 or dtype_index >= len(_DTYPES) or requires_grad > 1 or len(header) != position + sizes.size + name_len:
        raise ProtocolError("malformed Ack frame")
    shape = sizes.unpack_from(header, position)
    if shape and min(shape) < 0:
        raise ProtocolError(f"Ack describes a tensor of negative size {shape}")
    try:
        device = header[position + sizes.size:].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("Ack names a non-ASCII device") from None
    return Ack(seq, (_ACK_KIND_NAMES[kind], object_id, _DTYPE_NAMES[dtype_index], shape, bool(requires_grad), device))


def _decode_tensor(header: bytes, name: str) -> tuple:
    try:
        _, dtype_index, ndim, requires_grad, seq, object_id = _TENSOR_HEAD.unpack_from(header)
        sizes = _SIZES[ndim]
        shape = sizes.unpack_from(header, _TENSOR_HEAD.size)
    except struct.error:
        raise ProtocolError(f"{name} frame is truncated ({len(header)} bytes)") from None
    if dtype_index >= len(_DTYPES) or requires_grad > 1:
        raise ProtocolError(f"malformed {name} frame")
    position = _TENSOR_HEAD.size + sizes.size
    tensor = tensors.tensor_from_bytes(header[position:], _DTYPES[dtype_index], shape)
    if requires_grad:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise ProtocolError(f"{name} frame marks a {_DTYPE_NAMES[dtype_index]} tensor as requiring grad")
        tensor.requires_grad_(True)
    return seq, object_id, tensor


def _decode_store(header: bytes, resolve: Callable[[int], Any] | None) -> Store:
    seq, object_id, tensor = _decode_tensor(header, "Store")
    return Store(seq, object_id, tensor)


def _decode_value(header: bytes, resolve: Callable[[int], Any] | None) -> Value:
    seq, _, tensor = _decode_tensor(header, "Value")
    return Value(seq, tensor)


def _decode_fetch(header: bytes, resolve: Callable[[int], Any] | None) -> Fetch:
    _, remove, seq, object_id = _unpack(_FETCH_HEAD, header, 0, "Fetch")
    if remove > 1 or len(header) != _FETCH_HEAD.size:
        raise ProtocolError("malformed Fetch frame")
    return Fetch(seq, object_id, bool(remove))


_DECODERS: dict[int, Callable[[bytes, Any], Message]] = {
    _COMMAND: _decode_command, _ACK: _decode_ack, _STORE: _decode_store, _VALUE: _decode_value, _FETCH: _decode_fetch,
}


_SEQ_OFFSETS = {_COMMAND: 6, _ACK: 8, _STORE: 8, _VALUE: 8, _FETCH: 8}


def peek_seq(header: bytes) -> int:
    """The sequence number of a (possibly malformed) header in one of these layouts, or -1."""
    offset = _SEQ_OFFSETS.get(header[0]) if header else None
    if offset is None or len(header) < offset + 8:
        return -1
    return int.from_bytes(header[offset:offset + 8], "little", signed=True)


# -- helpers ----------------------------------------------------------------------

def _unpack(layout: struct.Struct, header: bytes, offset: int, name: str) -> tuple:
    try:
        return layout.unpack_from(header, offset)
    except struct.error:
        raise ProtocolError(f"{name} frame is truncated ({len(header)} bytes)") from None



def _arg_formats(codes: bytes) -> str:
    """struct format of a Command's args (KeyError for an unknown code)."""
    return "".join(_ARG_FORMATS[code] for code in codes)
