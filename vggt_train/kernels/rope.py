"""Rotary embedding in half mode: x * cos + rotate_half(x) * sin, x [B, heads, N, D], cos/sin broadcast to x.

VGGT's 2D RoPE calls it twice per q and per k (rows on the first half of the head, columns on the second), so
D is head_dim / 2 (32 for VGGT-1B) and cos/sin are [1, 1, N, D] tables shared by every block.

reference  the formula with plain ops; autograd-correct, any device.
npu        torch_npu.npu_rotary_mul(x, cos, sin) (rotary_mode "half", the default); limits from torch_npu's
           `_op_plugin_docs.py` for jit_compile=False (what setup_npu selects).

cos/sin of another dtype than x are cast to x's dtype first (every backend and the reference): the output has
x's dtype, and the fused kernel, which takes one dtype for all three, is not skipped for a float32 table
meeting bf16 activations under autocast.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from vggt_train.kernels import npu
from vggt_train.kernels.registry import declare, load


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension split in two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin; x [B, heads, N, D], cos/sin [1|B, 1, N, D] (anything broadcasting)."""
    return x * cos + rotate_half(x) * sin


def _device_of(x, *args, **kwargs) -> str:
    return x.device.type


def _prepare(x, cos, sin):
    if cos.dtype != x.dtype and x.is_floating_point():
        cos = cos.to(x.dtype)
    if sin.dtype != x.dtype and x.is_floating_point():
        sin = sin.to(x.dtype)
    return (x, cos, sin), {}


rope_op = declare("rope", rotary_reference, _device_of, doc="half-mode rotary embedding, x [B, heads, N, D]", prepare=_prepare)

# Documented limits of npu_rotary_mul, half mode, jit_compile=False: 4-D input of float16/bfloat16/float32;
# D even and < 896; B, N < 1000; with the BNSD layout cos/sin must be 11SD, B1SD or BNSD; when cos/sin need a
# gradient, B * N <= 1024. The docs also advise against the fused op for BNSD when D is not 32-byte aligned (a
# slow path), so that case runs the reference too. With jit_compile=True only D == 128 is supported.
NPU_ROPE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NPU_ROPE_MAX_D = 896  # exclusive
NPU_ROPE_MAX_BN = 1000  # exclusive, for B and for N
NPU_ROPE_MAX_BN_GRAD = 1024  # B * N when cos/sin require grad


def npu_rope_limits(x, cos, sin) -> Optional[Tuple[str, str]]:
    if x.dim() != 4 or cos.dim() != 4 or sin.dim() != 4:
        return "rank", f"x/cos/sin must be 4-D, got {x.dim()}/{cos.dim()}/{sin.dim()}"
    if not (x.dtype == cos.dtype == sin.dtype) or x.dtype not in NPU_ROPE_DTYPES:
        return "dtype", f"x/cos/sin {x.dtype}/{cos.dtype}/{sin.dtype}; needs one of float16/bfloat16/float32 for all"
    b, n, s, d = x.shape
    if d % 2 or d >= NPU_ROPE_MAX_D:
        return "head dim", f"D={d}; needs an even D < {NPU_ROPE_MAX_D}"
    if b >= NPU_ROPE_MAX_BN or n >= NPU_ROPE_MAX_BN:
        return "batch/heads", f"B={b}, N={n}; needs both < {NPU_ROPE_MAX_BN}"
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape[2:]) != (s, d) or (t.shape[0], t.shape[1]) not in ((1, 1), (b, 1), (b, n)):
            return "cos/sin layout", f"{name} {tuple(t.shape)} for x {tuple(x.shape)}; needs 11SD, B1SD or BNSD"
    if (cos.requires_grad or sin.requires_grad) and b * n > NPU_ROPE_MAX_BN_GRAD:
        return "cos/sin gradient", f"B*N={b * n} > {NPU_ROPE_MAX_BN_GRAD} with cos/sin requiring grad"
    if (d * x.element_size()) % 32:
        return "32-byte alignment", f"D={d} x {x.element_size()} bytes is not 32-byte aligned (documented slow path)"
    if d != 128 and npu.jit_compile_enabled():
        return "jit_compile", f"D={d}; with jit_compile=True the op takes only D=128 (call kernels.setup_npu())"
    return None


@rope_op.register("npu", library="torch_npu", device_present=npu.device_present, limits=npu_rope_limits)
def rotary_npu(x, cos, sin):
    """npu_rotary_mul(input, r1=cos, r2=sin) in its default half mode; torch_npu registers its backward.

    The three positional arguments are the signature every torch_npu release documents (2.1 through 2.14).
    """
    return load("torch_npu").npu_rotary_mul(x, cos, sin)
