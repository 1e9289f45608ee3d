"""Hot ops of VGGT behind one door, so device-specific kernels can be swapped in without touching the model.

The model and the trainer call only these functions; each dispatches through the registry (`registry.py`) to a
backend chosen by the tensors' device, or forced per op:

    VGGT_KERNELS="attention=npu,rope=reference"      # environment; wins over the config
    kernels.configure({"attention": "npu"})           # the trainer's YAML `kernels:` mapping
    kernels.reset()                                   # back to automatic (tests)

Ops: `attention`, `rope` (rotary_mul), `adamw` (make_adamw; zero its gradients with `kernels.zero_grad`).
Backends: `reference`, `cpu`, `cuda`, `npu`.
`vggt-train kernels` lists them; `vggt-train kernels --check` compares every available backend with the reference.
"""

from __future__ import annotations

from typing import Optional

import torch

# declaration order is the listing order: attention, rope, adamw
from vggt_train.kernels.attention import attention_op, attention_reference  # noqa: I001
from vggt_train.kernels.rope import rope_op, rotary_reference, rotate_half
from vggt_train.kernels.optim import is_fused_optimizer, make_adamw, zero_grad
from vggt_train.kernels.npu import HCCL_BACKEND, setup_npu, setup_npu_if_present
from vggt_train.kernels.npu import device_present as npu_present
from vggt_train.kernels.registry import (
    BACKENDS,
    ENV_VAR,
    OPS,
    KernelError,
    KernelFallbackWarning,
    configure,
    overrides,
    reset,
    select,
    table,
)

__all__ = [
    "attention",
    "rotary_mul",
    "rotate_half",
    "make_adamw",
    "zero_grad",
    "is_fused_optimizer",
    "configure",
    "reset",
    "overrides",
    "selected",
    "table",
    "setup_npu",
    "setup_npu_if_present",
    "npu_present",
    "HCCL_BACKEND",
    "KernelError",
    "KernelFallbackWarning",
    "OPS",
    "BACKENDS",
    "ENV_VAR",
    "attention_reference",
    "rotary_reference",
]


# note: this function shadows the submodule `vggt_train.kernels.attention` as a package attribute; import from
# the submodule (`from vggt_train.kernels.attention import ...`) to reach its internals.
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Softmax attention. q [B, heads, Nq, D], k/v [B, heads, Nk, D] -> [B, heads, Nq, D]; scale default 1/sqrt(D)."""
    return attention_op(q, k, v, scale)


def rotary_mul(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in half mode: x * cos + rotate_half(x) * sin. x [B, H, N, D]; cos/sin broadcast to x."""
    return rope_op(x, cos, sin)


def selected(op: str, device_type: str = "cpu") -> str:
    """Name of the backend `op` uses for tensors on `device_type` now ("reference", "cpu", "cuda", "npu")."""
    if op not in OPS:
        raise KernelError(f"unknown kernel op {op!r}; ops are {', '.join(OPS)}")
    backend = select(OPS[op], device_type)
    return "reference" if backend is None else backend.name
