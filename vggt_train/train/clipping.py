"""Per-module gradient clipping inside DeepSpeed ZeRO-1/2/3, on the partitions each rank holds.

Without DeepSpeed, `optim.clip_gradients` clips each clip group (a top-level module: aggregator, depth_head,
camera_head) to its own max norm, as the official recipe does with `torch.nn.utils.clip_grad_norm_`. DeepSpeed
clips only the norm of all gradients together, and its step (unscale, clip, optimizer step) runs inside
`engine.step()`, so the trainer sets DeepSpeed's `gradient_clipping` to 0 and `install()` hooks two methods
of the ZeRO optimizer instance that its `step()` calls after the gradients are reduced, after the overflow
check and before each optimizer step:

- the norms. ZeRO-1/2: `scaled_global_norm()` runs DeepSpeed's own (the global norm: logged, and checked for
  overflow), then sums the squares of each optimizer param group's gradient partition on this rank, one
  all-reduce for all groups. ZeRO-3: `_get_norm_groups()` already returns each sub-group's norm over all
  ranks; they are kept. A clip group's norm is the root of its groups' summed squares.
- the scaling. `unscale_and_clip_grads` multiplies the flat fp32 gradient partition of one group by
  min(1, max_norm / (norm + 1e-6)) of its clip group (clip_grad_norm_'s coefficient) and divides out the loss
  scale (1 here). DeepSpeed's `clip_grad` is ignored, also when a resumed ZeRO-1/2 checkpoint restores one.

Each optimizer param group must lie in one clip group: `optim.build_optimizer` splits them so under DeepSpeed,
and DeepSpeed's flat groups (ZeRO-3: sub-groups) never span two param groups. These methods, their signatures
and their call order in `step()` are the same in deepspeed 0.14.0 - 0.19.5 (read) and 0.19.8 (tested). `install()`
checks the version, the optimizer class, the signatures and that `step()` calls both hooks, and
`PerGroupClipper.check_step()` that they ran; otherwise it fails with `UnsupportedDeepSpeed`, telling the user
to set optim.clip_mode=global, rather than clip globally in silence.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Dict, List, Optional

import torch

from vggt_train.train.config import ConfigError

MIN_DEEPSPEED = (0, 14)
CHECKED_UP_TO = "0.19.8"
_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


class UnsupportedDeepSpeed(ConfigError):
    """This DeepSpeed set-up cannot clip per group; the message says why and what to do."""


def _unsupported(why: str) -> UnsupportedDeepSpeed:
    import deepspeed

    return UnsupportedDeepSpeed(
        f"optim.clip_mode=per_group under DeepSpeed {deepspeed.__version__}: {why}. Per-group clipping hooks "
        f"DeepSpeed's ZeRO-1/2/3 optimizer (checked with deepspeed {'.'.join(map(str, MIN_DEEPSPEED))} - "
        f"{CHECKED_UP_TO}); set optim.clip_mode=global to clip the norm of all gradients together at the smallest "
        f"optim.clip_groups limit instead")


def _version(text: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:2])


def _unwrap(func):
    """The function under decorators: functools.wraps' __wrapped__, or the closure of DeepSpeed's
    instrument_w_nvtx (which does not use functools.wraps)."""
    for _ in range(8):
        inner = getattr(func, "__wrapped__", None)
        if inner is None:
            cells = [c.cell_contents for c in (getattr(func, "__closure__", None) or ()) if inspect.isfunction(c.cell_contents)]
            inner = cells[0] if len(cells) == 1 and getattr(func, "__name__", "") == "wrapped_fn" else None
        if inner is None:
            return func
        func = inner
    return func


def _check_class(opt, cls, hooks: Dict[str, List[str]], calls: List[str]) -> None:
    if not isinstance(opt, cls):
        raise _unsupported(f"the optimizer is {type(opt).__name__}, not {cls.__name__}")
    for name in ["step", *hooks]:
        if getattr(type(opt), name, None) is not getattr(cls, name, None) or name in vars(opt):
            raise _unsupported(f"{type(opt).__name__} replaces {cls.__name__}.{name} (e.g. ZenFlow, SuperOffload)")
    for name, params in hooks.items():
        got = list(inspect.signature(_unwrap(getattr(cls, name))).parameters)
        if got != params:
            raise _unsupported(f"{cls.__name__}.{name} takes ({', '.join(got)}), not ({', '.join(params)})")
    try:
        source = inspect.getsource(_unwrap(cls.step))
    except (OSError, TypeError):  # no source shipped: check_step() still verifies at run time
        return
    missing = [c for c in calls if c not in source]
    if missing:
        raise _unsupported(f"{cls.__name__}.step no longer calls {', '.join(missing)}")


def _clip_group_of(names: Dict[int, str], params, clip_groups: Dict[str, float], what: str) -> Optional[str]:
    """The clip group every parameter of one DeepSpeed group belongs to (None: not clipped)."""
    tops = {names[id(p)].split(".")[0] for p in params if id(p) in names}
    found = {top if top in clip_groups else None for top in tops}
    if len(found) > 1:
        raise _unsupported(f"{what} mixes the clip groups {sorted(map(str, found))}; build the optimizer with "
                           f"vggt_train.train.optim.build_optimizer(..., sharded=True), which splits its param groups "
                           f"by clip group")
    return found.pop() if found else None


class PerGroupClipper:
    """The hooks on one ZeRO optimizer. `norms` holds the last step's pre-clip norm of each clip group."""

    def __init__(self, opt, stage: int, group_of: List[Optional[str]], clip_groups: Dict[str, float]):
        self.opt, self.stage, self.group_of, self.clip_groups = opt, stage, group_of, dict(clip_groups)
        self.norms: Optional[Dict[str, torch.Tensor]] = None
        self._coef: Dict[int, torch.Tensor] = {}

    # -- shared -----------------------------------------------------------------------------------------------
    def _set_norms(self, squares: torch.Tensor) -> None:
        """squares[i]: group i's summed squared gradient (all ranks, times loss_scale**2)."""
        scale = float(self.opt.loss_scale)
        norms: Dict[str, torch.Tensor] = {}
        for name in self.clip_groups:
            members = [i for i, g in enumerate(self.group_of) if g == name]
            if members:
                norms[name] = squares[members].sum().sqrt() / scale
        coefs = {name: torch.clamp(self.clip_groups[name] / (norm + _EPS), max=1.0) for name, norm in norms.items()}
        one = torch.ones((), dtype=torch.float32, device=squares.device)
        self._coef = {i: coefs.get(g, one) for i, g in enumerate(self.group_of)}
        self.norms = norms

    def _scale(self, i: int, grad: torch.Tensor) -> None:
        coef = self._coef.pop(i, None)
        if coef is None:
            raise _unsupported(f"its step() scaled group {i} without computing the group norms first")
        scale = float(self.opt.loss_scale)
        factor = coef if scale == 1.0 else coef / scale
        for g in grad if isinstance(grad, list) else [grad]:
            g.data.mul_(factor.to(g.device, g.dtype))

    def check_step(self) -> None:
        """After a step DeepSpeed applied: every group was clipped (the hooks really ran in this version)."""
        if self.norms is None or self._coef:
            raise _unsupported(f"its step() did not run the per-group clipping hooks (groups not clipped: "
                               f"{sorted(self._coef) if self.norms is not None else 'all'})")

    def take_norms(self) -> Dict[str, float]:
        """The last step's pre-clip norm of each clip group, as floats; cleared for the next step."""
        norms, self.norms = self.norms or {}, None
        self._coef = {}
        return {name: float(v) for name, v in norms.items()}

    # -- ZeRO-1/2 ---------------------------------------------------------------------------------------------
    def scaled_global_norm(self, original, norm_type=2):
        total = original(norm_type)
        opt = self.opt
        import deepspeed.comm as dist
        from deepspeed.accelerator import get_accelerator

        device = get_accelerator().current_device_name()
        partial = []
        for i in range(len(self.group_of)):
            if opt.cpu_offload:
                grads = [opt.single_partition_of_fp32_groups[i].grad]
            else:
                grads = opt.averaged_gradients.get(i) if isinstance(opt.averaged_gradients, dict) else opt.averaged_gradients[i]
                flat = getattr(grads, "flat_partition", None)  # DeepCompile's pre-flattened partition
                grads = [flat] if flat is not None else list(grads or [])
            grads = [g for g in grads if g is not None and g.numel()]
            partial.append(torch.stack([torch.linalg.vector_norm(g.detach().float()).to(device) for g in grads]).square().sum()
                           if grads else torch.zeros((), dtype=torch.float32, device=device))
        squares = torch.stack(partial)
        dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=opt.dp_process_group)
        self._set_norms(squares)
        return total

    def unscale_and_clip_grads_12(self, original, grad_groups_flat, total_norm):
        # replaces DeepSpeed's (which would only unscale here, or clip globally at a clip_grad a checkpoint restored)
        first = grad_groups_flat[0][0] if isinstance(grad_groups_flat[0], list) else grad_groups_flat[0]
        for i, fp32 in enumerate(self.opt.single_partition_of_fp32_groups):
            if fp32.grad is first:
                return self._scale(i, grad_groups_flat[0])
        raise _unsupported("unscale_and_clip_grads got a gradient that is no flat fp32 partition's")

    # -- ZeRO-3 -----------------------------------------------------------------------------------------------
    def get_norm_groups(self, original):
        norms = original()
        if len(norms) != len(self.group_of):
            raise _unsupported(f"_get_norm_groups returned {len(norms)} norms for {len(self.group_of)} sub-groups")
        values = torch.stack([torch.as_tensor(n, dtype=torch.float32).reshape(()).cpu() for n in norms])
        # DeepSpeed marks a non-finite norm as -1; the step is then skipped, the norm must not look finite
        values = torch.where(values < 0, torch.full_like(values, math.inf), values)
        self._set_norms(values.square())
        return norms

    def unscale_and_clip_grads_3(self, original, sub_group_id, total_norm):  # replaces DeepSpeed's, as above
        self._scale(sub_group_id, self.opt.fp32_partitioned_groups_flat[sub_group_id].grad)


def install(engine, clip_groups: Dict[str, float]) -> Optional[PerGroupClipper]:
    """Hook per-group clipping into the DeepSpeed engine's ZeRO optimizer (DeepSpeed's gradient_clipping must
    be 0). Returns None when no trainable parameter is in a clip group. Raises UnsupportedDeepSpeed when this
    DeepSpeed or this set-up (ZeRO stage 0, MoE, model parallelism, no gradient norm) cannot do it."""
    import deepspeed

    if _version(deepspeed.__version__) < MIN_DEEPSPEED:
        raise _unsupported(f"deepspeed >= {'.'.join(map(str, MIN_DEEPSPEED))} is needed")
    names = {id(p): n for n, p in engine.module.named_parameters()}
    if not any(n.split(".")[0] in clip_groups for n, p in engine.module.named_parameters() if p.requires_grad):
        return None
    opt = engine.optimizer
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
    if stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer as cls

        hooks = {"scaled_global_norm": ["self", "norm_type"], "unscale_and_clip_grads": ["self", "grad_groups_flat", "total_norm"]}
        _check_class(opt, cls, hooks, ["self.scaled_global_norm(", "self.unscale_and_clip_grads("])
        needed = ("bit16_groups", "single_partition_of_fp32_groups", "averaged_gradients", "cpu_offload", "dp_process_group")
    elif stage == 3:
        from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as cls

        hooks = {"_get_norm_groups": ["self"], "unscale_and_clip_grads": ["self", "sub_group_id", "total_norm"]}
        _check_class(opt, cls, hooks, ["self._get_norm_groups()", "self.unscale_and_clip_grads("])
        needed = ("fp16_groups", "fp32_partitioned_groups_flat")
    else:
        raise _unsupported(f"ZeRO stage {stage} is not supported (only ZeRO-1, 2 and 3)")
    missing = [a for a in (*needed, "loss_scale") if not hasattr(opt, a)]
    if missing:
        raise _unsupported(f"{cls.__name__} has no {', '.join(missing)}")
    if getattr(opt, "has_moe_layers", False):
        raise _unsupported("mixture-of-experts layers are not supported")
    if getattr(opt, "model_parallel_group", None) is not None:
        raise _unsupported("model parallelism is not supported")
    if not getattr(opt, "compute_grad_norm", True):
        raise _unsupported("zero_optimization.compute_grad_norm=false leaves no gradient norms")
    what, groups = ("ZeRO-3 sub-group", opt.fp16_groups) if stage == 3 else ("ZeRO param group", opt.bit16_groups)
    group_of = [_clip_group_of(names, params, clip_groups, f"{what} {i}") for i, params in enumerate(groups)]
    clipper = PerGroupClipper(opt, stage, group_of, clip_groups)
    if stage == 3:
        wrappers = {"_get_norm_groups": clipper.get_norm_groups, "unscale_and_clip_grads": clipper.unscale_and_clip_grads_3}
    else:
        wrappers = {"scaled_global_norm": clipper.scaled_global_norm, "unscale_and_clip_grads": clipper.unscale_and_clip_grads_12}
    for name, wrapper in wrappers.items():  # on the instance: each wrapper gets DeepSpeed's bound method first
        setattr(opt, name, (lambda w, original: lambda *a, **k: w(original, *a, **k))(wrapper, getattr(opt, name)))
    return clipper
