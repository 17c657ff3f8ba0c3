"""Tensor data across processes: small tensors inline, large ones in shared memory.

Owns the tensor descriptor (a plain tuple, safe to put in a message header) and
the shared-memory segments behind it. Imports torch and simsyft.errors only;
knows nothing of sockets or messages.

A descriptor is ``(dtype_name, shape, requires_grad, data, grad)`` where
``data`` says where the bytes are (`Location`): ``(INLINE, buffer_index)`` for
bytes that travel as an extra message frame, ``(SEGMENT, path, capacity,
ticket)`` for a segment in /dev/shm, ``(EMPTY,)`` for none, ``(CUDA, ...)`` for
a CUDA IPC handle; ``grad`` is a nested descriptor or None. Data always crosses contiguous, so strides and
storage offsets never travel.

Large tensors live in pooled segments (segments.py, Note [Segment ownership]):
    the sender copies into a pre-faulted segment it keeps mapped, the receiver
    builds its tensor over its own cached mapping without a copy, and a worker
    hands a segment back on `get()` instead of copying when nothing else on it
    shares the memory.
A receiver opens only segments of its own simulation (`decode_tensor`'s
`namespace`), and each descriptor only once (its ticket): segments.py says why.

Speed is guarded by bench/ (rows "send"/"get" of 1 MB..256 MB).
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any

import torch

from . import segments, shm
from ..errors import ProtocolError

class Location:
    """Where a tensor descriptor's bytes are: the first item of its `data`."""

    INLINE = "i"  # (INLINE, frame index): an extra frame of the message
    SEGMENT = "s"  # (SEGMENT, path, capacity, ticket): a shared-memory segment (segments.py)
    EMPTY = "e"  # (EMPTY,): no bytes at all
    CUDA = "c"  # (CUDA, stride, offset, device, handle, ...): a CUDA IPC handle
    OBJECT = "o"  # (OBJECT, index): the index-th buffer the transport carries beside the frames (Ray's objects)


INLINE, SEGMENT, EMPTY, CUDA = Location.INLINE, Location.SEGMENT, Location.EMPTY, Location.CUDA
OBJECT = Location.OBJECT


class _OutOfBand(threading.local):
    """Note [Out-of-band buffers]: a transport that carries buffers beside the frames (the Ray
    backend: its object store, which crosses nodes where segments cannot) sets `out` to a list
    while it encodes, and `into` to the buffers that came with a message while it decodes. Large
    CPU tensors (and CUDA ones, through the host) then travel as those buffers, not in segments."""

    out: list | None = None
    into: list | None = None


OUT_OF_BAND = _OutOfBand()

__all__ = [
    "INLINE_MAX",
    "IN_FLIGHT",
    "IN_SEGMENTS",
    "Handover",
    "handover",
    "take_back",
    "tensor_from_bytes",
    "decode_tensor",
    "dtype_from_name",
    "dtype_name",
    "encode_tensor",
    "received",
    "receiving",
    "reclaim",
    "reopen",
    "sending",
    "sent",
    "settle",
    "shrunk",
]

# Up to this many bytes a tensor travels as a message frame. With pooled segments (segments.py) a
# segment costs no page faults, only a copy and a lookup. Measured on the 2-core dev machine,
# send+get of one tensor through a worker process, medians of 300 (3 runs): inline 8 KiB
# 430-470 us, 32 KiB 450-480, 64 KiB 970-1020; through a segment 32 KiB 470-480, 64 KiB
# 335-370, 128 KiB 350-460 (before the pool, fresh segments only paid off from 1 MiB).
INLINE_MAX = 32 * 1024

# Receipts and reclaims (Note [Segment ownership]): the worker and the connection bracket each
# message with them, so a failed transfer leaves every segment as it was sent.
receiving, received, sending, sent, reclaim = segments.receiving, segments.received, segments.sending, segments.sent, segments.reclaim
IN_FLIGHT, settle = segments.IN_FLIGHT, segments.settle
# address -> export of every tensor this process built over a segment. While it is empty no
# stored tensor can lie in a segment, and the worker's check before reading one (`shrunk`) costs nothing.
IN_SEGMENTS = segments._EXPORTS

_DTYPES: dict[str, torch.dtype] = {
    str(value).removeprefix("torch."): value
    for value in vars(torch).values()
    if isinstance(value, torch.dtype)
}


# dtype -> its canonical name ("float32", never the alias "float"); a lookup, as this runs once per op.
_NAMES: dict[torch.dtype, str] = {dtype: str(dtype)[6:] for dtype in _DTYPES.values()}


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    dtype = _DTYPES.get(name) if type(name) is str else None  # hashing a peer's tuple could recurse for ever
    if dtype is None:
        raise ProtocolError(f"unknown dtype {name!r:.100} in a tensor descriptor")
    return dtype


def encode_tensor(tensor: torch.Tensor, buffers: list, namespace: str, inline_max: int | None = None) -> tuple:
    """Describe `tensor`; its bytes go to `buffers` (inline) or to a pooled segment.

    `inline_max=-1` forces a segment (a worker-to-worker move: the descriptor
    travels through the client, the bytes must not).
    """
    limit = INLINE_MAX if inline_max is None else inline_max
    grad = _grad_to_send(tensor)
    oob = OUT_OF_BAND.out
    if oob is not None and tensor.device.type == "cuda":
        tensor = tensor.detach().cpu().requires_grad_(tensor.requires_grad)  # no CUDA IPC across nodes
        grad = None if grad is None else grad.cpu()
    if tensor.device.type == "cuda":
        data: tuple = _encode_cuda(tensor)
        grad_desc = encode_tensor(grad, buffers, namespace, inline_max) if grad is not None else None
        return (dtype_name(tensor.dtype), tuple(tensor.shape), bool(tensor.requires_grad), data, grad_desc)
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # other accelerators cross through host memory
    flat = _plain(tensor).reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        # A one-element tensor may keep any stride and still count as contiguous.
        flat = flat.clone(memory_format=torch.contiguous_format)
    nbytes = flat.numel() * flat.element_size()
    raw = flat.view(torch.uint8) if nbytes else flat
    if nbytes == 0:
        data = (EMPTY,)  # nothing to carry; also keeps zero-byte files out of /dev/shm
    elif nbytes <= limit:
        buffers.append(ctypes.string_at(raw.data_ptr(), nbytes))  # torch alone: numpy may be absent
        data: tuple = (INLINE, len(buffers) - 1)
    elif oob is not None:
        oob.append(raw)  # the transport copies it out before the caller can change it (backends/ray.py)
        data = (OBJECT, len(oob) - 1)
        IN_FLIGHT.shm_bytes += nbytes  # counted with shared memory's: bytes beside the frames
    else:
        seg = segments.acquire(namespace, nbytes)
        try:
            shm.write(seg, raw)
        except BaseException:
            segments.abandon(seg)
            raise
        data = (SEGMENT, seg.path, seg.capacity, segments.arm(seg))
        IN_FLIGHT.shm_bytes += nbytes
    try:
        grad_desc = encode_tensor(grad, buffers, namespace, inline_max) if grad is not None else None
    except BaseException:
        if data[0] == SEGMENT:
            segments.abandon(seg)  # the tensor's segment will not be sent either
        raise
    return (dtype_name(tensor.dtype), tuple(tensor.shape), bool(tensor.requires_grad), data, grad_desc)


class Handover:
    """A tensor whose segment changes hands instead of being copied (segments.handover).

    Holds what the descriptor needs, never the tensor: the worker drops its tensor while the
    reply is encoded. The grad, if any, is copied as usual.
    """

    __slots__ = ("meta", "data", "grad", "given")

    def __init__(self, meta: tuple, data: tuple, grad: torch.Tensor | None, given: list) -> None:
        self.meta, self.data, self.grad, self.given = meta, data, grad, given

    def describe(self, buffers: list, namespace: str) -> tuple:
        grad_desc = encode_tensor(self.grad, buffers, namespace) if self.grad is not None else None
        if self.given is not None:
            IN_FLIGHT.shm_bytes += self.given[2]  # the bytes cross in the handed-on segment
        return (*self.meta, self.data, grad_desc)


def handover(tensor: torch.Tensor) -> Handover | None:
    """`tensor` as a Handover if its segment can change hands, else None (copy it instead)."""
    if tensor.device.type != "cpu":
        return None
    if OUT_OF_BAND.out is not None:
        return None  # the reply goes where segments cannot: Note [Out-of-band buffers]
    given = segments.handover(tensor)
    if given is None:
        return None
    meta = (dtype_name(tensor.dtype), tuple(tensor.shape), bool(tensor.requires_grad))
    return Handover(meta, (SEGMENT, given[0], given[1], given[5]), _grad_to_send(tensor), given)


def take_back(handed: Handover) -> None:
    """Undo `handover` while our tensor still lives (something else on the worker holds it)."""
    segments.take_back(handed.given)


def reopen(handed: Handover, namespace: str) -> torch.Tensor:
    """The tensor a Handover gave away, rebuilt over its segment: the reply carrying it was never sent."""
    tensor = decode_tensor((*handed.meta, handed.data, None), [], namespace)
    if handed.grad is not None:
        tensor.grad = handed.grad
    return tensor


def shrunk(tensor: torch.Tensor) -> Any:
    """The segment under `tensor` (or its .grad) whose file shrank since it was mapped, else None.

    Reading such a tensor raises SIGBUS. Only tensors in segments cost an fstat; for others
    this is a dict lookup (callers skip even that while IN_SEGMENTS is empty).
    """
    seg = segments.segment_of(tensor)
    if seg is not None and not shm.intact(seg):
        return seg
    if tensor.requires_grad:
        grad = _grad_to_send(tensor)
        seg = segments.segment_of(grad) if grad is not None else None
        if seg is not None and not shm.intact(seg):
            return seg
    return None


def over(tensor: torch.Tensor, seg: Any) -> bool:
    """Whether `tensor`'s memory, or its .grad's, lies in segment `seg`."""
    if segments.segment_of(tensor) is seg:
        return True
    grad = _grad_to_send(tensor) if tensor.requires_grad else None
    return grad is not None and segments.segment_of(grad) is seg


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The values as an ordinary dense tensor: no lazy zero, conjugate or negative bits."""
    plain = tensor.detach()
    if plain._is_zerotensor():  # e.g. the gradient of torch.sgn
        return torch.zeros(plain.shape, dtype=plain.dtype, device=plain.device)
    if plain.is_conj():
        plain = plain.resolve_conj()
    if plain.is_neg():
        plain = plain.resolve_neg()
    return plain.contiguous()


def _grad_to_send(tensor: torch.Tensor) -> torch.Tensor | None:
    # Reading .grad of a non-leaf warns in torch; only leaves (or retain_grad tensors) carry one.
    # Some views (made under no_grad, base modified since) make autograd refuse even is_leaf.
    try:
        return tensor.grad if tensor.is_leaf or tensor.retains_grad else None
    except RuntimeError:
        return None


def decode_tensor(desc: Any, buffers: list, namespace: str = "", used: set | None = None) -> torch.Tensor:
    """Rebuild a tensor from a descriptor; the result owns its memory.

    `used` collects the inline frames and CUDA blocks already turned into tensors: each may
    feed one tensor only, or a small header naming one big frame many times would copy it
    that many times (protocol.py passes one set per message). A segment is opened only if it
    belongs to simulation `namespace` (the receiver's) and was handed to us (its ticket):
    Note [Segment ownership].
    """
    if used is None:
        used = set()
    try:
        dtype_s, shape, requires_grad, data, grad_desc = desc
    except (TypeError, ValueError):
        raise ProtocolError(f"malformed tensor descriptor {desc!r:.200}") from None
    if type(shape) is not tuple or not all(type(n) is int for n in shape):
        raise ProtocolError(f"malformed tensor descriptor: shape {shape!r:.200} is not a tuple of ints")
    dtype = dtype_from_name(dtype_s)
    numel = _numel(shape)
    nbytes = numel * dtype.itemsize
    kind = data[0] if isinstance(data, tuple) and data else None
    if kind == INLINE:
        index = data[1] if len(data) == 2 else None
        if not isinstance(index, int) or not 0 <= index < len(buffers):
            raise ProtocolError(f"tensor descriptor names missing frame {index!r:.40}")
        if (INLINE, index) in used:
            raise ProtocolError(f"two tensor descriptors name frame {index}; each inline frame holds one tensor")
        used.add((INLINE, index))
        tensor = tensor_from_bytes(buffers[index], dtype, shape)
    elif kind == EMPTY and nbytes == 0:
        tensor = torch.empty(shape, dtype=dtype)
    elif kind == SEGMENT and len(data) == 4:
        tensor = _open_segment(data, nbytes, dtype, shape, namespace)
    elif kind == CUDA and len(data) == 11:
        tensor = _decode_cuda(data, dtype, shape, used)
    elif kind == OBJECT and len(data) == 2:
        tensor = _decode_object(data[1], dtype, shape, nbytes, used)
    else:
        raise ProtocolError(f"unknown tensor data location {data!r:.200}")
    if requires_grad:
        if dtype.is_floating_point or dtype.is_complex:
            tensor.requires_grad_(True)
        else:
            # An integer tensor can require grad only as autograd made it, through an in-place copy
            # from a float that does (t[:] = w): remake it so, with an empty copy, values untouched.
            tensor.view(-1)[:0] = torch.zeros((), requires_grad=True)
    _reset_version(tensor)  # set_() counted as a write; a received tensor is new, at version 0
    if grad_desc is not None:
        grad = decode_tensor(grad_desc, buffers, namespace, used)
        if grad.shape != tensor.shape:
            # torch keeps a .grad of the old shape after an in-place reshape under no_grad, but refuses
            # to assign one: attach it while the shapes agree, then swap the data in, as torch did.
            holder = torch.zeros(grad.shape, dtype=tensor.dtype).requires_grad_(tensor.requires_grad)
            holder.grad = grad
            holder.data = tensor
            _reset_version(holder)
            return holder
        tensor.grad = grad
    return tensor


def _decode_object(index: Any, dtype: torch.dtype, shape: tuple, nbytes: int, used: set) -> torch.Tensor:
    """Note [Out-of-band buffers]: a tensor of its own, copied once from the transport's buffer
    (Ray's are read-only views of its object store, which must not pin them)."""
    into = OUT_OF_BAND.into
    if into is None or type(index) is not int or not 0 <= index < len(into):
        raise ProtocolError(f"tensor descriptor names missing out-of-band buffer {index!r:.40}")
    if (OBJECT, index) in used:
        raise ProtocolError(f"two tensor descriptors name out-of-band buffer {index}")
    used.add((OBJECT, index))
    raw = into[index]
    kind = getattr(raw, "dtype", None)
    if str(kind) != "uint8" or getattr(raw, "ndim", 0) != 1 or len(raw) != nbytes:
        raise ProtocolError(f"out-of-band buffer {index} does not hold the {nbytes} bytes its descriptor needs")
    tensor = torch.empty(shape, dtype=dtype)
    if nbytes:
        mine = tensor.view(-1).view(torch.uint8)
        if isinstance(raw, torch.Tensor):
            mine.copy_(raw)
        else:
            mine.numpy()[:] = raw  # a read-only numpy view of the object store: numpy copies it, torch would warn
    IN_FLIGHT.shm_bytes += nbytes
    return tensor


def _numel(shape: tuple) -> int:
    """Elements of a shape that is not negative and whose sizes multiply within int64 (zeros counted
    as ones, as torch's own stride check does). Stops at the first overflow: a product of thousands of
    huge sizes would otherwise grow a big int at quadratic cost."""
    numel = bound = 1
    for n in shape:
        if n < 0:
            raise ProtocolError(f"negative size in tensor shape {shape!r:.200}")
        numel *= n
        bound *= n or 1
        if bound > _INT64_MAX:
            raise ProtocolError(f"tensor shape {shape!r:.200} has more elements than int64 can count")
    return numel


_INT64_MAX = (1 << 63) - 1


def tensor_from_bytes(raw: Any, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """A new tensor holding a copy of `raw`, in memory torch allocated.

    Not a tensor over the frame's buffer: that storage would refuse to grow, and a local
    tensor's `resize_()` grows. The copy is at most INLINE_MAX bytes.
    """
    if shape and min(shape) < 0:
        raise ProtocolError(f"negative size in tensor shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if len(raw) != nbytes:
        raise ProtocolError(f"tensor data has {len(raw)} bytes, its shape {shape} and dtype "
                            f"{dtype_name(dtype)} need {nbytes}")
    if not nbytes and shape:
        _numel(shape)  # a zero size lets the others be anything: torch must still count them in int64
    tensor = torch.empty(*shape, dtype=dtype) if shape else torch.empty((), dtype=dtype)  # *shape: 0.5 us less
    if nbytes:
        ctypes.memmove(tensor.data_ptr(), raw if type(raw) is bytes else bytes(raw), nbytes)
    return tensor


def _reset_version(tensor: torch.Tensor) -> None:
    reset = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if reset is not None:
        reset((tensor,), (0,))


def _open_segment(data: tuple, nbytes: int, dtype: torch.dtype, shape: tuple, namespace: str) -> torch.Tensor:
    _, path, capacity, ticket = data
    if nbytes == 0:
        raise ProtocolError(f"segment {path!r:.200} named for an empty tensor")
    flat = segments.receive(path, capacity, nbytes, ticket, namespace)
    # set_ on the segment's storage: the tensor is not a view (no _base), as one the user made is not.
    return torch.empty(0, dtype=dtype).set_(flat.untyped_storage(), 0, shape, _contiguous_stride(shape))


def _contiguous_stride(shape: tuple) -> tuple:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


# Note [CUDA tensors cross with CUDA IPC]
#     The sender clones the tensor on its GPU and shares that private block with a
#     CUDA IPC handle (torch's own `_share_cuda_`, the mechanism behind
#     torch.multiprocessing). The receiver maps it and copies it into memory of its
#     own (a device-to-device copy: the receiver owns its tensor, as on the CPU
#     path) and drops the mapping, which releases torch's IPC ref counter; the
#     sender's caching allocator keeps the block in its IPC "limbo" until then.
#     Data never goes through host memory.

def _encode_cuda(tensor: torch.Tensor) -> tuple:
    private = tensor.detach().clone()
    IN_FLIGHT.shm_bytes += private.numel() * private.element_size()  # the ledger counts IPC bytes too
    storage = private._typed_storage()
    (device, handle, storage_bytes, storage_offset_bytes, ref_handle, ref_offset, event_handle,
     event_sync) = storage._share_cuda_()
    return (CUDA, tuple(private.stride()), private.storage_offset(), device, handle, storage_bytes,
            storage_offset_bytes, ref_handle, ref_offset, event_handle, event_sync)


def _decode_cuda(data: tuple, dtype: torch.dtype, shape: tuple, used: set) -> torch.Tensor:
    (_, stride, offset, device, handle, storage_bytes, storage_offset_bytes, ref_handle, ref_offset,
     event_handle, event_sync) = data
    ints = (offset, device, storage_bytes, storage_offset_bytes, ref_offset)
    if not all(type(v) is int for v in ints) or type(stride) is not tuple or len(stride) != len(shape) or not all(
        type(v) is int for v in stride
    ) or not all(isinstance(v, (bytes, type(None))) for v in (handle, ref_handle, event_handle)):
        raise ProtocolError("malformed CUDA IPC descriptor")
    # Each would be mapped and cloned again. A handle names the allocator's whole segment, which
    # several of the sender's blocks can share: a block is the handle and its offset.
    block = (CUDA, handle, storage_offset_bytes)
    if block in used:
        raise ProtocolError("two tensor descriptors name one CUDA IPC block")
    used.add(block)
    if not torch.cuda.is_available():
        raise ProtocolError("received a CUDA tensor, but this process has no CUDA device")
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    mapped = rebuild_cuda_tensor(
        torch.Tensor, torch.Size(shape), tuple(stride), offset, torch.storage.TypedStorage, dtype,
        device, handle, storage_bytes, storage_offset_bytes, False, ref_handle, ref_offset,
        event_handle, bool(event_sync),
    )
    owned = mapped.clone()  # Note [CUDA tensors cross with CUDA IPC]
    del mapped
    IN_FLIGHT.shm_bytes += owned.numel() * owned.element_size()
    return owned
