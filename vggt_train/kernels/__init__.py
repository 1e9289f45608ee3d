"""Hot ops of VGGT behind one door, so device-specific kernels can be swapped in without touching the model.

The model calls only these functions. This first version holds the plain-PyTorch references; the kernel
registry (issue: NPU/GPU backends, selection, self-check) replaces the bodies with a dispatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Softmax attention. q [B, heads, Nq, D], k/v [B, heads, Nk, D] -> [B, heads, Nq, D]."""
    if scale is None:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension split in two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_mul(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in half mode: x * cos + rotate_half(x) * sin. x [B, H, N, D]; cos/sin broadcast to x."""
    return x * cos + rotate_half(x) * sin
