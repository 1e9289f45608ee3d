"""Ascend NPU set-up: import torch_npu, bind this rank's card, and the runtime options the fused kernels need.

Nothing here imports torch_npu at module import time: the package must import on machines without CANN.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from vggt_train.kernels.registry import KernelError, library_error, load, memo, set_memo

HCCL_BACKEND = "hccl"  # the torch.distributed backend of Ascend collectives (torch_npu registers it)


def device_present() -> bool:
    """True when torch_npu imports and sees at least one NPU."""
    if sys.modules.get("torch_npu") is None and library_error("torch_npu") is not None:
        return False
    return bool(load("torch_npu").npu.is_available())


def setup_npu(local_rank: Optional[int] = None, jit_compile: bool = False) -> str:
    """Make this process ready to train on its NPU; returns its device string "npu:<local_rank>".

    (A string: `torch.device("npu")` parses only once the real torch_npu has registered the device name.)

    - binds the card `local_rank` (default: $LOCAL_RANK, else 0) before any collective: HCCL communicators are
      created on the current device, so every rank must set its own first;
    - `torch.npu.config.allow_internal_format = False`: keep every tensor in the plain ND format; the private
      formats (NZ, 5HD) that torch_npu would otherwise pick for conv/matmul weights break views, DeepSpeed's
      flattened buffers and the fused optimiser's format checks;
    - `torch.npu.set_compile_mode(jit_compile=False)`: use the prebuilt binary kernels; the documented limits
      of npu_rotary_mul assume it (with jit_compile=True it only takes head dim 128, VGGT's is 32), and it
      avoids recompiling operators for every new shape.
    Raises KernelError when torch_npu is missing or sees no NPU.
    """
    error = library_error("torch_npu")
    if error is not None:
        raise KernelError(f"NPU set-up: torch_npu cannot be imported ({error}); install the torch_npu build matching torch and CANN")
    torch_npu = load("torch_npu")
    if not torch_npu.npu.is_available():
        raise KernelError("NPU set-up: torch_npu imported but sees no NPU (check the driver, npu-smi info, ASCEND_RT_VISIBLE_DEVICES)")
    rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else int(local_rank)
    torch_npu.npu.set_device(rank)
    torch_npu.npu.config.allow_internal_format = False
    torch_npu.npu.set_compile_mode(jit_compile=jit_compile)
    set_memo(_JIT_KEY, bool(jit_compile))
    return f"npu:{rank}"


def setup_npu_if_present() -> Optional[str]:
    """setup_npu() when torch_npu imports and sees an NPU (its device string), else None (nothing touched)."""
    return setup_npu() if device_present() else None


_JIT_KEY = "npu.jit_compile"


def jit_compile_enabled() -> bool:
    """Whether torch_npu compiles operators just in time (False on the A2 default and after setup_npu).

    Probed once (the rope limits ask on every call) and remembered until kernels.reset(); setup_npu records
    what it sets.
    """
    return bool(memo(_JIT_KEY, _probe_jit_compile))


def _probe_jit_compile() -> bool:
    torch_npu = load("torch_npu")
    probe = getattr(torch_npu.npu, "is_jit_compile_false", None)
    if probe is None:
        return False
    try:
        return not probe()
    except Exception:  # a stand-in or an uninitialised runtime: assume the documented A2 default
        return False
