"""Softmax attention: q [B, heads, Nq, D], k/v [B, heads, Nk, D] -> [B, heads, Nq, D]; no mask, no dropout.

reference  explicit q k^T -> softmax (float32) -> @ v; the definition, autograd through plain ops, any device.
cpu        torch SDPA (its fused CPU kernels).
cuda       torch SDPA restricted to the flash / memory-efficient (/ cuDNN) kernels, so the N^2 score matrix is
           never materialised; inputs none of them takes run the reference with a one-time warning.
npu        torch_npu.npu_fusion_attention(query, key, value, head_num, input_layout="BNSD", scale, keep_prob=1.0),
           its first output; limits from torch_npu's `_op_plugin_docs.py` (dtype, head dim, heads, sizes).

Under autocast every backend (and the reference) first casts q/k/v to the autocast dtype, as autocast does for
the `F.scaled_dot_product_attention` call this op replaces: with QK-LayerNorm, q and k otherwise arrive in
float32 (CUDA autocast runs layer_norm in float32; float32 rotary tables promote them) while v is bf16, and
no fused kernel takes mixed dtypes.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from vggt_train.kernels import npu
from vggt_train.kernels.amp import cast_like_autocast
from vggt_train.kernels.registry import warn_fallback, declare, load

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
_SDPA_HAS_SCALE = _TORCH_VERSION >= (2, 1)  # SDPA's `scale` argument appeared in torch 2.1


def _default_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """softmax(scale * q k^T) v, scale default 1/sqrt(D); fp16/bf16 scores take the softmax in float32 (their
    exponentials lose too much), other dtypes keep theirs (float64 stays exact for the self-check's ground truth)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * _default_scale(q, scale)  # [B, heads, Nq, Nk]
    low_precision = scores.dtype in (torch.float16, torch.bfloat16)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32 if low_precision else None).to(v.dtype)
    return torch.matmul(probs, v)


def _device_of(q, *args, **kwargs) -> str:
    return q.device.type


def _prepare(q, k, v, scale=None):
    return (*cast_like_autocast(q, k, v), scale), {}


attention_op = declare("attention", attention_reference, _device_of, doc="softmax attention, [B, heads, N, D] in and out",
                       prepare=_prepare)


# -- cpu --------------------------------------------------------------------------------------------------------------
def _sdpa(q, k, v, scale):
    if scale is None:
        return F.scaled_dot_product_attention(q, k, v)
    if _SDPA_HAS_SCALE:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # torch < 2.1: SDPA always scales by 1/sqrt(D); fold the requested scale into q instead
    return F.scaled_dot_product_attention(q * (scale * math.sqrt(q.shape[-1])), k, v)


@attention_op.register("cpu")
def attention_cpu(q, k, v, scale=None):
    """torch SDPA; on CPU tensors it runs its fused flash-style kernel for float32/bfloat16."""
    return _sdpa(q, k, v, scale)


# -- cuda -------------------------------------------------------------------------------------------------------------
def _fused_sdpa_only():
    """A context allowing SDPA only its fused kernels (flash, memory-efficient, cuDNN where the torch has it)."""
    try:  # torch >= 2.3
        from torch.nn.attention import SDPBackend, sdpa_kernel

        allowed = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            allowed.append(SDPBackend.CUDNN_ATTENTION)
        return sdpa_kernel(allowed)
    except ImportError:  # torch 2.1/2.2
        return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_mem_efficient=True, enable_math=False)


def _cuda_limits(q, k, v, scale=None) -> Optional[Tuple[str, str]]:
    # what both fused CUDA kernels require (torch's sdp_utils): fp16/bf16/fp32 (flash: half types only, the
    # memory-efficient kernel takes fp32), one dtype, head dims a multiple of 8, unit stride on the last dim
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return "dtype", f"q/k/v {q.dtype}/{k.dtype}/{v.dtype}; fused SDPA needs one of float16/bfloat16/float32"
    if q.shape[-1] % 8 or v.shape[-1] % 8:
        return "head dim", f"D={q.shape[-1]}/{v.shape[-1]} is not a multiple of 8"
    return None


@attention_op.register("cuda", device_present=torch.cuda.is_available, limits=_cuda_limits)
def attention_cuda(q, k, v, scale=None):
    """torch SDPA with the math kernel disabled: flash or memory-efficient attention, never the N^2 matrix."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    try:
        with _fused_sdpa_only():
            return _sdpa(q, k, v, scale)
    except RuntimeError as exc:  # "No available kernel": a shape/arch none of the fused kernels takes
        warn_fallback("attention", "cuda", "no fused SDPA kernel", str(exc).splitlines()[0])
        return attention_reference(q, k, v, scale)


# -- npu --------------------------------------------------------------------------------------------------------------
# Documented limits of npu_fusion_attention (torch_npu _op_plugin_docs.py): q/k/v float16/bfloat16/float32 of one
# dtype; key and value of one shape; Dq = Dk >= Dv, D in [1, 768]; B in [1, 2M]; S in [1, 1M]; Nq in [1, 256] and
# Nq a multiple of Nkv (GQA); same B for all.
NPU_ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NPU_ATTENTION_MAX_HEAD_DIM = 768
NPU_ATTENTION_MAX_HEADS = 256
NPU_ATTENTION_MAX_BATCH = 2 * 1024 * 1024
NPU_ATTENTION_MAX_SEQ = 1024 * 1024


def npu_attention_limits(q, k, v, scale=None) -> Optional[Tuple[str, str]]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "rank", f"q/k/v must be 4-D [B, heads, N, D], got {q.dim()}/{k.dim()}/{v.dim()}"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in NPU_ATTENTION_DTYPES:
        return "dtype", f"q/k/v {q.dtype}/{k.dtype}/{v.dtype}; needs one of float16/bfloat16/float32 for all"
    if k.shape != v.shape:
        return "key/value shape", f"key {tuple(k.shape)} != value {tuple(v.shape)}"
    b, nq, sq, d = q.shape
    bk, nk, sk, dk = k.shape
    if b != bk:
        return "batch", f"q batch {b} != k batch {bk}"
    if d != dk or not 1 <= d <= NPU_ATTENTION_MAX_HEAD_DIM:
        return "head dim", f"Dq={d}, Dk={dk}; needs Dq == Dk in [1, {NPU_ATTENTION_MAX_HEAD_DIM}]"
    if not 1 <= nq <= NPU_ATTENTION_MAX_HEADS or nk < 1 or nq % nk:
        return "heads", f"Nq={nq}, Nkv={nk}; needs Nq in [1, {NPU_ATTENTION_MAX_HEADS}], a multiple of Nkv"
    if not 1 <= b <= NPU_ATTENTION_MAX_BATCH:
        return "batch", f"B={b} outside [1, {NPU_ATTENTION_MAX_BATCH}]"
    if not (1 <= sq <= NPU_ATTENTION_MAX_SEQ and 1 <= sk <= NPU_ATTENTION_MAX_SEQ):
        return "sequence length", f"Sq={sq}, Skv={sk} outside [1, {NPU_ATTENTION_MAX_SEQ}]"
    return None


@attention_op.register("npu", library="torch_npu", device_present=npu.device_present, limits=npu_attention_limits)
def attention_npu(q, k, v, scale=None):
    """npu_fusion_attention in the BNSD layout (our [B, heads, N, D] as is); its first output is the result.

    torch_npu's default scale is 1.0, so the 1/sqrt(D) default is always passed explicitly. The op has its own
    backward in torch_npu.
    """
    torch_npu = load("torch_npu")
    out = torch_npu.npu_fusion_attention(
        q, k, v, head_num=q.shape[1], input_layout="BNSD", scale=_default_scale(q, scale), keep_prob=1.0
    )
    return out[0]
