"""What a pointer knows about its tensor without a round trip: shape, dtype, device, sizes.

Owns `TensorFacts`, the base of PointerTensor that answers torch's metadata questions
(`shape`, `dtype`, `size()`, `dim()`, `numel()`, layout flags ...) from the metadata every
Ack carries, so code that only looks (optimizers, nn, shape checks) costs no message.
Imports torch and errors.py only.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import NotATensorError

__all__ = ["TensorFacts"]


class TensorFacts:
    """Local answers from `_shape`, `_dtype`, `_device` (set by the subclass from an Ack).

    The subclass provides `_check_live()`, which refuses a pointer already fetched.
    """

    __slots__ = ()

    @property
    def shape(self) -> torch.Size:
        self._check_live()
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        self._check_live()
        return self._dtype

    @property
    def device(self) -> torch.device:
        self._check_live()
        return torch.device(self._device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_pointer(self) -> bool:
        return True

    # Layout facts torch code (optimizers, nn) checks; pointers only ever hold dense strided tensors.
    is_sparse = is_quantized = is_meta = is_nested = is_mkldnn = property(lambda self: False)
    layout = property(lambda self: torch.strided)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def size(self, dim: int | None = None) -> Any:
        shape = self.shape
        if dim is None:
            return shape
        return torch.empty(shape, device="meta").size(dim)  # torch's own checks and messages

    def dim(self) -> int:
        return len(self.shape)

    ndimension = dim

    def numel(self) -> int:
        return self.shape.numel()

    nelement = numel

    def element_size(self) -> int:
        return self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def is_complex(self) -> bool:
        return self.dtype.is_complex

    def __len__(self) -> int:
        shape = self.shape
        if not shape:
            raise TypeError("len() of a 0-d tensor")
        if shape[0] == 0:
            # torch's C constructors read a non-tensor through len() and rows: torch.tensor([p, q])
            # of empty pointers would give tensor([], size=(2, 0)) where locally it raises. No frame
            # tells that caller from user code, so len() of an empty pointer is refused.
            raise NotATensorError(
                "len() of a pointer whose first dimension is 0 is refused: torch would read it as an empty "
                "sequence (torch.tensor([ptr, ...]) would give a wrong result); use ptr.shape[0]")
        return shape[0]
