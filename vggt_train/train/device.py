"""Which device a run trains on: `train.device` resolved against this machine, or a one-line reason it cannot be.

    auto         an NPU if torch_npu works, else a CUDA GPU, else the CPU
    accelerator  an NPU or a CUDA GPU; never the CPU (the shipped NPU/GPU recipes ask for this)
    npu | cuda   that device type only
    cpu          the CPU, even where an accelerator is present

A node where torch_npu cannot load (CANN's `set_env.sh` not sourced: `libhccl.so` missing) would otherwise train
on the CPU for hours without a word; `resolve_device` stops such a run before any data is opened, naming the
import error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from vggt_train import kernels
from vggt_train.kernels.registry import library_error, load

CHOICES = ("auto", "accelerator", "npu", "cuda", "cpu")
ASCEND_ENV_HINT = "source /usr/local/Ascend/ascend-toolkit/set_env.sh (the CANN toolkit's environment) before launching"


class DeviceError(RuntimeError):
    """The requested device is not usable here; the message says why and what to do."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device type a run uses and how many of them this node shows (1 for the CPU)."""

    type: str  # npu | cuda | cpu
    local_count: int
    requested: str


def _npu_problem() -> Optional[str]:
    """None when torch_npu imports and sees an NPU, else why not (the import error itself where there is one)."""
    error = library_error("torch_npu")
    if error is not None:
        if "No module named 'torch_npu'" in error:
            return "torch_npu is not installed (pip install torch_npu matching your torch and CANN)"
        return f"torch_npu cannot be imported ({error}); {ASCEND_ENV_HINT}"
    try:
        if kernels.npu_present():
            return None
    except Exception as exc:  # a broken driver raises from the device query
        return f"torch_npu imported but the NPU query failed ({type(exc).__name__}: {exc}); check npu-smi info"
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    return "torch_npu imported but sees no NPU (check the driver with npu-smi info" + (
        f"; ASCEND_RT_VISIBLE_DEVICES={visible!r})" if visible is not None else ")")


def _cuda_problem() -> Optional[str]:
    """None when torch sees a CUDA GPU, else why not."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (check nvidia-smi" + (
        f"; CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ")")


def _npu_count() -> int:
    return int(load("torch_npu").npu.device_count())


def resolve_device(requested: str) -> DeviceChoice:
    """The device type `requested` (one of CHOICES) means on this machine. Raises DeviceError naming the reason
    when it asks for an accelerator that is not usable."""
    if requested not in CHOICES:
        raise DeviceError(f"train.device={requested!r}; choose from {', '.join(CHOICES)}")
    if requested == "cpu":
        return DeviceChoice("cpu", 1, requested)
    npu_problem = _npu_problem() if requested in ("auto", "accelerator", "npu") else "not asked for"
    if npu_problem is None:
        return DeviceChoice("npu", _npu_count(), requested)
    if requested == "npu":
        raise DeviceError(f"train.device=npu but no NPU is usable: {npu_problem}")
    cuda_problem = _cuda_problem()
    if cuda_problem is None:
        return DeviceChoice("cuda", torch.cuda.device_count(), requested)
    if requested == "cuda":
        raise DeviceError(f"train.device=cuda but no GPU is usable: {cuda_problem}")
    if requested == "accelerator":
        raise DeviceError(f"train.device=accelerator but neither an NPU nor a GPU is usable. NPU: {npu_problem}. "
                          f"GPU: {cuda_problem}. (train.device=cpu trains on the CPU on purpose)")
    return DeviceChoice("cpu", 1, requested)


def check_placement(choice: DeviceChoice, actual: torch.device) -> None:
    """Raise DeviceError when the launcher/accelerate put this process on another device type than chosen."""
    if actual.type != choice.type:
        raise DeviceError(f"train.device={choice.requested} resolved to {choice.type}, but accelerate placed this "
                          f"process on {actual}; check the launcher config (use_cpu, the device ids) and the environment")
