"""AdamW (decoupled weight decay) with a fused implementation per device.

reference  torch.optim.AdamW, single-tensor loop (foreach=False): the plain algorithm.
cpu        torch.optim.AdamW(fused=True) (torch >= 2.4 has a fused CPU kernel), else foreach=True; measured on
           this project's 2-core CPU the multi-tensor path is no faster than the loop, the fused kernel is ~2x.
cuda       torch.optim.AdamW(fused=True) where the installed torch has it (all params floating point on CUDA).
npu        torch_npu.optim.NpuFusedAdamW: parameters, gradients and states combined into contiguous buffers, one
           fused update per buffer; float32/float16 parameters only (its documented TypeError otherwise).

All four compute the same update: p *= 1 - lr * wd; m, v moments; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).

NpuFusedAdamW differs in how it must be driven. At its first step (or first zero_grad) it moves every parameter
that has a gradient, and that gradient, into combined buffers, and from then on reads gradients from those
buffers only: a gradient must be updated in place (backward accumulating into it, `p.grad.copy_(g)`), never
rebound (`p.grad = g` is silently ignored). Hence `zero_grad(set_to_none=True)` raises there (use
`kernels.zero_grad`), and under DeepSpeed, which rebinds the `.grad` of its flat partitions every step,
`make_adamw(..., sharded=True)` never picks it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Iterable, List, Optional, Tuple, Union

import torch

from vggt_train.kernels import npu
from vggt_train.kernels.registry import declare, load, overrides, select, warn_fallback


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


@functools.lru_cache(maxsize=None)
def cpu_has_fused_adamw() -> bool:
    """Whether this torch steps CPU parameters with its fused AdamW kernel (torch >= 2.4). Probed, not read off the
    version: torch 2.1-2.3 reject fused CPU parameters in the constructor, and a build could lack the kernel."""
    if "fused" not in inspect.signature(torch.optim.AdamW.__init__).parameters:
        return False
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    try:
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return False
    return True


def _fresh_groups(params: list) -> list:
    # torch's optimiser writes its defaults (fused, foreach, ...) into the group dicts it is given: a second
    # optimiser built from the same dicts would inherit the first one's `fused=True`
    return [{k: v for k, v in g.items() if k not in ("fused", "foreach")} if isinstance(g, dict) else g for g in params]


@adamw_op.register("cpu")
def adamw_cpu(params: list, lr: float, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> torch.optim.Optimizer:
    """torch's fused CPU AdamW where this torch has it (torch >= 2.4: about 2x the single-tensor loop at VGGT block
    sizes, see docs/kernels.md), else (or for parameters it rejects) the multi-tensor path."""
    if cpu_has_fused_adamw():
        try:
            return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass
    return torch.optim.AdamW(_fresh_groups(params), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             foreach=True)


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


# backends whose optimiser keeps gradient buffers across steps, so it cannot step tensors whose .grad is rebound
GRAD_BUFFER_BACKENDS = frozenset({"npu"})


def _device_type(device: Union[str, torch.device]) -> str:
    # a string is split by hand: torch.device("npu") parses only once the real torch_npu is imported
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def make_adamw(params_or_groups: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.01, *, device: Union[str, torch.device, None] = None,
               sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW over parameters or param-group dicts, through the registry.

    device: the device type selecting the backend (default: the first parameter's).
    sharded: the optimiser will step DeepSpeed ZeRO's flat partitions, whose `.grad` DeepSpeed rebinds every
        step. NpuFusedAdamW would keep stepping the gradients of its first step there (and a flat partition is
        one tensor per group, nothing to fuse), so torch's AdamW (the reference) runs instead: silently when
        selected automatically, with a one-time KernelFallbackWarning when `adamw=npu` is forced.
    """
    params = list(params_or_groups)  # a generator would be consumed by the device probe
    if not params:
        raise ValueError("make_adamw: no parameters to optimise")
    device_type = _device_type(device) if device is not None else _device_of(params)
    args = (params, lr, betas, eps, weight_decay)
    if sharded:
        backend = select(adamw_op, device_type)
        if backend is not None and backend.name in GRAD_BUFFER_BACKENDS:
            if "adamw" in overrides():
                warn_fallback("adamw", backend.name, "DeepSpeed", "its fused optimiser keeps gradient buffers that "
                              "DeepSpeed's per-step .grad rebinding bypasses; torch's AdamW steps the flat partitions",
                              stacklevel=3)
            return adamw_reference(*args)
    return adamw_op.dispatch(device_type, *args)


def is_fused_optimizer(optimizer) -> bool:
    """Whether `optimizer`, or the optimiser it wraps (accelerate's AcceleratedOptimizer, DeepSpeed's ZeRO
    optimiser: `.optimizer`), is a torch_npu fused optimiser (combined gradient buffers, no set_to_none)."""
    for _ in range(8):  # wrappers nest a few levels at most; a cycle must not hang
        if optimizer is None:
            return False
        if getattr(optimizer, "is_fused_optimizer", False):
            return True
        optimizer = getattr(optimizer, "optimizer", None)
    return False


def zero_grad(optimizer) -> None:
    """Zero the gradients the way `optimizer` allows: set to None (frees the memory until the next backward),
    except for a torch_npu fused optimiser, whose gradients live in its combined buffers and must be zeroed in
    place (its zero_grad(set_to_none=True) raises)."""
    optimizer.zero_grad(set_to_none=not is_fused_optimizer(optimizer))
