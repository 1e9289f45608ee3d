"""DeepSpeed on the CPU (gloo) with an older torch: the flat-tensor collectives gloo lacks, built from ones it has.

DeepSpeed's ZeRO gathers and scatters flat tensors with `all_gather_into_tensor` / `reduce_scatter_tensor`
whenever torch defines them, whatever the backend. torch 2.1's gloo defines neither underneath
("no support for _allgather_base in Gloo process group"), nor a list `reduce_scatter`. Which ones this torch's gloo
lacks is probed once on a private one-process gloo group (no collective with the other ranks), and only those are
replaced in DeepSpeed's communication backend: all-gather through gloo's list `all_gather` into views of the
output, reduce-scatter through `all_reduce` of a copy. Both give the same values; on a torch whose gloo has the
collectives nothing changes.

Also `torch.cpu.set_device`, which accelerate calls for multi-process CPU training and torch 2.1 lacks: newer
torch defines it as a no-op ("in CPU we do nothing"), and `ensure_cpu_set_device()` adds exactly that where missing.
"""

from __future__ import annotations

import datetime
import functools
from typing import FrozenSet, List

import torch
import torch.distributed as dist


@functools.lru_cache(maxsize=None)
def gloo_lacks() -> FrozenSet[str]:
    """The flat collectives ("all_gather_into_tensor", "reduce_scatter_tensor") this torch's gloo does not run."""
    try:
        pg = dist.ProcessGroupGloo(dist.HashStore(), 0, 1, datetime.timedelta(seconds=30))
    except Exception:  # no gloo in this build, or it cannot open a device here: nothing to say
        return frozenset()
    probes = {
        "all_gather_into_tensor": lambda: pg._allgather_base(torch.zeros(1), torch.ones(1)).wait(),
        "reduce_scatter_tensor": lambda: pg._reduce_scatter_base(torch.zeros(1), torch.ones(1)).wait(),
    }
    lacking = []
    for name, probe in probes.items():
        try:
            probe()
        except (RuntimeError, AttributeError, NotImplementedError):
            lacking.append(name)
    return frozenset(lacking)


class _Done:
    """The handle of a collective that already finished (what an async caller waits on)."""

    def wait(self, *args, **kwargs) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def all_gather_into_tensor_by_list(output_tensor, input_tensor, group=None, async_op=False):
    """`all_gather_into_tensor` through the list `all_gather`, writing into views of `output_tensor`."""
    world = dist.get_world_size(group)
    chunks = list(output_tensor.view(world, -1).unbind(0)) if output_tensor.is_contiguous() else None
    if chunks is None:
        raise RuntimeError("all_gather_into_tensor (gloo emulation): the output tensor must be contiguous")
    work = dist.all_gather(chunks, input_tensor.reshape(-1), group=group, async_op=async_op)
    return work if async_op else None


def reduce_scatter_tensor_by_all_reduce(output_tensor, input_tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
    """`reduce_scatter_tensor` through `all_reduce` of a copy of the input; this rank keeps its chunk."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    reduced = input_tensor.detach().clone().reshape(-1)
    dist.all_reduce(reduced, op=op, group=group)
    output_tensor.view(-1).copy_(reduced.view(world, -1)[rank])
    return _Done() if async_op else None


def fit_deepspeed_to_gloo() -> List[str]:
    """Replace, in DeepSpeed's communication backend, the flat collectives this torch's gloo lacks (only when the
    default process group is gloo and DeepSpeed's backend is up). Returns the names replaced."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != "gloo":
        return []
    lacking = gloo_lacks()
    if not lacking:
        return []
    try:
        from deepspeed.comm import comm as ds_comm
    except ImportError:
        return []
    cdb = getattr(ds_comm, "cdb", None)
    if cdb is None:
        return []
    replaced = []
    if "all_gather_into_tensor" in lacking and getattr(cdb, "all_gather_function", None) is not None:
        cdb.all_gather_function = all_gather_into_tensor_by_list
        replaced.append("all_gather_into_tensor")
    if "reduce_scatter_tensor" in lacking and getattr(cdb, "reduce_scatter_function", None) is not None:
        cdb.reduce_scatter_function = reduce_scatter_tensor_by_all_reduce
        replaced.append("reduce_scatter_tensor")
    return replaced


def _cpu_set_device(device) -> None:
    """torch.cpu.set_device of newer torch: the CPU has one device, there is nothing to set."""


def ensure_cpu_set_device() -> bool:
    """Give torch.cpu the no-op `set_device` newer torch has (accelerate calls it for multi-process CPU runs).
    Returns whether it was missing."""
    if hasattr(torch.cpu, "set_device"):
        return False
    torch.cpu.set_device = _cpu_set_device
    return True


# DeepSpeed before 0.18.3 accumulates ZeRO gradients over several micro-batches wrongly under this trainer
# (accelerate 1.15; measured with 0.17.6 and 0.18.2 on torch 2.1 and 2.13: 1 process, ZeRO-2, 2 accumulation steps
# gives another gradient norm than the same global batch in one micro-batch); 0.18.3+ needs torch internals
# (torch._C._will_engine_execute_node, ...) that torch 2.1 lacks, so there accumulation under DeepSpeed is refused.
DEEPSPEED_ACCUMULATION_MIN = (0, 18, 3)


def deepspeed_accumulation_problem(grad_accum_steps: int) -> "str | None":
    """Why train.grad_accum_steps > 1 cannot run under the installed DeepSpeed (one line), or None."""
    if grad_accum_steps <= 1:
        return None
    import deepspeed

    version = tuple(int(p) for p in deepspeed.__version__.split("+")[0].split(".")[:3] if p.isdigit())
    if version >= DEEPSPEED_ACCUMULATION_MIN:
        return None
    return (f"train.grad_accum_steps={grad_accum_steps} under DeepSpeed {deepspeed.__version__}: DeepSpeed before "
            f"{'.'.join(map(str, DEEPSPEED_ACCUMULATION_MIN))} accumulates ZeRO gradients wrongly; use deepspeed >= "
            f"0.18.3 (it needs torch >= 2.2), or train.grad_accum_steps=1 with a larger data.max_img_per_gpu")


# DeepSpeed up to 0.18.x skips a step on a non-finite gradient only under fp16 (its loss scaler's overflow check):
# an fp32 or bf16 ZeRO step applies NaN to the weights. Its ZeRO optimizers do skip (and clean up) whenever their
# `overflow` attribute is set when step() looks at it, and newer releases recompute it inside step() from the
# gradients themselves, so setting it from the trainer's own all-rank finiteness check is right for every release.
_NONFINITE_FLAG = "_vggt_train_nonfinite_step"


def arm_nonfinite_skip(zero_optimizer) -> None:
    """Make `zero_optimizer.step()` skip the step (as DeepSpeed's overflow path does) when the trainer flagged it
    with flag_nonfinite_step; a no-op for an optimizer without DeepSpeed's `overflow` attribute."""
    if not hasattr(zero_optimizer, "overflow") or getattr(zero_optimizer, _NONFINITE_FLAG, None) is not None:
        return
    real_step = zero_optimizer.step

    def step(*args, **kwargs):
        zero_optimizer.overflow = bool(getattr(zero_optimizer, _NONFINITE_FLAG, False))
        setattr(zero_optimizer, _NONFINITE_FLAG, False)
        return real_step(*args, **kwargs)

    setattr(zero_optimizer, _NONFINITE_FLAG, False)
    zero_optimizer.step = step


def flag_nonfinite_step(zero_optimizer, nonfinite: bool) -> None:
    """Tell the armed optimizer whether the coming step() must be skipped (every rank passes the same value)."""
    if getattr(zero_optimizer, _NONFINITE_FLAG, None) is not None:
        setattr(zero_optimizer, _NONFINITE_FLAG, bool(nonfinite))
