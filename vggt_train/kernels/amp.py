"""Which dtype autocast is casting to, per device type, across torch 2.1 .. current and torch_npu.

The registry's ops replace torch ops that autocast would have cast (`F.scaled_dot_product_attention` is on its
lower-precision list); the ops are plain Python functions to autocast, so they apply the same cast themselves.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch


def _probe_device_argument() -> bool:
    # torch >= 2.4 takes a device type; older releases only have the cuda-only no-argument form
    try:
        torch.is_autocast_enabled("cpu")
        return hasattr(torch, "get_autocast_dtype")
    except TypeError:
        return False


_DEVICE_ARGUMENT = _probe_device_argument()


def _npu_autocast_dtype() -> Optional[torch.dtype]:
    # torch_npu keeps its own autocast state (torch.npu.is_autocast_enabled / get_autocast_dtype, 2.1 .. 2.14);
    # never import it here: without torch_npu loaded there can be no npu tensor
    torch_npu = sys.modules.get("torch_npu")
    npu = getattr(torch_npu, "npu", None)
    if npu is None or not hasattr(npu, "is_autocast_enabled"):
        return None
    return npu.get_autocast_dtype() if npu.is_autocast_enabled() else None


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The lower-precision dtype autocast casts to on `device_type` now, or None where autocast is off."""
    if device_type == "npu":
        found = _npu_autocast_dtype()
        if found is not None or not _DEVICE_ARGUMENT:
            return found
    if _DEVICE_ARGUMENT:
        try:
            return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        except RuntimeError:  # a device type autocast does not know (meta, ...)
            return None
    if device_type == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return None


def cast_like_autocast(*tensors: torch.Tensor) -> tuple:
    """The tensors as autocast's lower-precision cast leaves them: floating tensors other than float64 in the
    autocast dtype of the first tensor's device, when autocast is on there; unchanged otherwise."""
    dtype = autocast_dtype(tensors[0].device.type)
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if t.dtype != dtype and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )
