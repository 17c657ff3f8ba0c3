"""Autograd steps both ends of `requires_grad=True` take: the client and the workers.

Owns `check_can_require_grad` (torch's own error for a dtype that cannot require grad) and
`backward_from` (continue a backward pass at an origin with the gradient its copy received).
Imports only torch, so the user layer and the worker side can share it.
"""

from __future__ import annotations

import torch

__all__ = ["backward_from", "check_can_require_grad"]


def check_can_require_grad(tensor: torch.Tensor) -> None:
    """Raise torch's own RuntimeError for a tensor that cannot require grad (integers, bool)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        torch.empty(0, dtype=tensor.dtype).requires_grad_(True)  # raises, with torch's message


def backward_from(tensor: torch.Tensor, grad: torch.Tensor) -> None:
    """Continue a backward pass at `tensor` with the gradient its copy received.

    Where `tensor` requires grad, `tensor.backward(grad)`: a leaf's .grad accumulates, and a
    graph upstream of it (the first segment of split learning) gets its gradients. Otherwise
    the gradient is added to its .grad, as it would have been to the copy's.
    """
    grad = grad.to(tensor.device)
    if tensor.requires_grad:
        with torch.enable_grad():
            tensor.backward(grad)
    elif tensor.grad is None:
        tensor.grad = grad
    else:
        tensor.grad = tensor.grad + grad
