"""AdamW (decoupled weight decay) with a fused implementation per device.

reference  torch.optim.AdamW, single-tensor loop (foreach=False): the plain algorithm.
cpu        torch.optim.AdamW(fused=True) (torch >= 2.4 has a fused CPU kernel), else foreach=True; measured on
           this project's 2-core CPU the multi-tensor path is no faster than the loop, the fused kernel is ~2x.
cuda       torch.optim.AdamW(fused=True) where the installed torch has it (all params floating point on CUDA).
npu        torch_npu.optim.NpuFusedAdamW: parameters, gradients and states combined into contiguous buffers, one
           fused update per buffer; float32/float16 parameters only (its documented TypeError otherwise).

All four compute the same update: p *= 1 - lr * wd; m, v moments; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
"""

from __future__ import annotations

import inspect
from typing import Iterable, List, Optional, Tuple

import torch

from vggt_train.kernels import npu
from vggt_train.kernels.registry import declare, load


def _all_params(params: list) -> List[torch.Tensor]:
    out = []
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            out += [group] if isinstance(group, torch.Tensor) else list(group)
        else:
            out.append(item)
    return out


def _device_of(params, *args, **kwargs) -> str:
    tensors = _all_params(params)
    return tensors[0].device.type if tensors else "cpu"


def adamw_reference(params: list, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=False)


adamw_op = declare("adamw", adamw_reference, _device_of, doc="AdamW optimiser factory (params or groups, lr, betas, eps, wd)")


@adamw_op.register("cpu")
def adamw_cpu(params: list, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> torch.optim.Optimizer:
    """torch's fused CPU AdamW (torch >= 2.4: about 2x the single-tensor loop at VGGT block sizes, see
    docs/kernels.md); older torch rejects fused CPU params in the constructor, then the multi-tensor path."""
    try:
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=True)


_ADAMW_HAS_FUSED = "fused" in inspect.signature(torch.optim.AdamW.__init__).parameters


def _cuda_limits(params, *args, **kwargs) -> Optional[Tuple[str, str]]:
    if not _ADAMW_HAS_FUSED:
        return "torch version", f"torch {torch.__version__} has no fused AdamW"
    bad = [p for p in _all_params(params) if p.device.type != "cuda" or not p.is_floating_point()]
    if bad:
        return "parameters", f"fused AdamW needs floating-point CUDA parameters, got {bad[0].dtype} on {bad[0].device}"
    return None


@adamw_op.register("cuda", device_present=torch.cuda.is_available, limits=_cuda_limits)
def adamw_cuda(params: list, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)


NPU_ADAMW_DTYPES = (torch.float32, torch.float16)


def _npu_limits(params, *args, **kwargs) -> Optional[Tuple[str, str]]:
    bad = [p for p in _all_params(params) if p.dtype not in NPU_ADAMW_DTYPES]
    if bad:
        return "parameter dtype", f"NpuFusedAdamW takes float32/float16 parameters only, got {bad[0].dtype}"
    return None


@adamw_op.register("npu", library="torch_npu", device_present=npu.device_present, limits=_npu_limits)
def adamw_npu(params: list, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> torch.optim.Optimizer:
    """NpuFusedAdamW(params, lr, betas, eps, weight_decay): its buffers are combined at the first step from the
    parameters that have a gradient then, so freeze parameters before training starts, not during it."""
    fused = load("torch_npu.optim").NpuFusedAdamW
    return fused(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def make_adamw(params_or_groups: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW over parameters or param-group dicts, through the registry (device of the first parameter)."""
    params = list(params_or_groups)  # a generator would be consumed by the device probe
    if not params:
        raise ValueError("make_adamw: no parameters to optimise")
    return adamw_op(params, lr, betas, eps, weight_decay)
