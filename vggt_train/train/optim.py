"""Optimiser, learning-rate schedule, freezing and per-group gradient clipping for VGGT training."""

from __future__ import annotations

import fnmatch
import math
from typing import Dict, Iterable, List, Optional, Union

import torch
import torch.nn as nn

from vggt_train import kernels
from vggt_train.train.config import ConfigError, OptimConfig


def freeze_modules(model: nn.Module, patterns: List[str]) -> List[str]:
    """Set requires_grad=False on every parameter whose name matches a glob (e.g. "aggregator*").

    Returns the frozen parameter names; a pattern that matches nothing is a ConfigError naming it.
    """
    frozen = []
    for pattern in patterns:
        hits = [n for n, _ in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"model.frozen pattern {pattern!r} matches no parameter (e.g. use 'aggregator*')")
        frozen += hits
    names = set(frozen)
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
    return sorted(names)


def param_groups(model: nn.Module, weight_decay: float, clip_groups: Optional[Iterable[str]] = None) -> List[dict]:
    """Trainable parameters split into decayed weights and undecayed ones: vectors (biases, norms, layer
    scales) and learned tokens / position embeddings, which weight decay would pull towards zero for no gain.

    clip_groups: also split by clip group (top-level module name), in order of appearance, decayed group first,
        so that every param group lies in one clip group (what per-group clipping under DeepSpeed needs: see
        vggt_train.train.clipping). Without it: [decayed, undecayed].
    """
    names = set(clip_groups) if clip_groups is not None else set()
    buckets: Dict[Optional[str], tuple] = {}  # clip group -> (decay, no_decay), in order of appearance
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        top = name.split(".")[0]
        decay, no_decay = buckets.setdefault(top if top in names else None, ([], []))
        exempt = param.dim() < 2 or "token" in name or "pos_embed" in name
        (no_decay if exempt else decay).append(param)
    groups = []
    for decay, no_decay in buckets.values():
        if decay:
            groups.append({"params": decay, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ConfigError("no trainable parameters: model.frozen froze everything")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: Optional[Union[str, torch.device]] = None,
                    sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW through the kernel registry (fused on NPU/CUDA where available).

    device: move the model there first (in place, so the parameters stay the ones the optimiser holds): the
        registry selects the AdamW kernel by the parameters' device, and a model still on the CPU would get the
        CPU kernel on every accelerator.
    sharded: DeepSpeed ZeRO will step flat partitions of these parameters (see kernels.make_adamw); with
        clip_mode=per_group the param groups are also split by clip group, which DeepSpeed then clips one by one
        (vggt_train.train.clipping).
    """
    if device is not None:
        model.to(device)
    split = cfg.clip_groups if param_group_layout(cfg, sharded) != "by decay" else None
    return kernels.make_adamw(param_groups(model, cfg.weight_decay, split), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                              weight_decay=cfg.weight_decay, sharded=sharded)


def param_group_layout(cfg: OptimConfig, sharded: bool) -> str:
    """How build_optimizer splits the param groups; a resumed optimizer state must have been saved with the same."""
    if sharded and cfg.clip_mode == "per_group" and cfg.clip_groups:
        return f"by clip group ({', '.join(cfg.clip_groups)}) and decay"
    return "by decay"


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup from start_lr to lr over warmup_ratio of the run, then cosine decay to end_lr."""
    warmup = int(math.ceil(cfg.warmup_ratio * max_steps))
    if step < warmup:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return cfg.end_lr + 0.5 * (cfg.lr - cfg.end_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_by_group(model: nn.Module, max_norms: Dict[str, float]) -> Dict[str, float]:
    """Clip gradients of each top-level module group (e.g. aggregator, depth_head) to its own max norm.

    Returns each group's pre-clip norm and the pre-clip total norm over all trainable gradients ("total"),
    which is non-finite when any gradient is.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else torch.zeros(())
    norms: Dict[str, float] = {"total": float(total)}
    for group, max_norm in max_norms.items():
        params = [p for n, p in model.named_parameters() if n.split(".")[0] == group and p.grad is not None]
        if params:
            norms[group] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return norms


def clip_gradients(model: nn.Module, cfg: OptimConfig) -> Dict[str, float]:
    """Clip as `optim.clip_mode` says: each group to its own max norm (per_group, the official recipe), or all
    gradients together to the smallest of them (global, what DeepSpeed does). Returns the pre-clip norms
    (see clip_by_group); "total" is non-finite when any gradient is."""
    if cfg.clip_mode == "per_group":
        return clip_by_group(model, cfg.clip_groups)
    params = [p for p in model.parameters() if p.grad is not None]
    if not cfg.clip_groups or not params:
        return clip_by_group(model, {})
    total = torch.nn.utils.clip_grad_norm_(params, min(cfg.clip_groups.values()))
    return {"total": float(total)}


def trainable_clip_groups(model: nn.Module, cfg: OptimConfig) -> List[str]:
    """The clip groups that hold trainable parameters (with a frozen aggregator: the heads)."""
    return sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} & set(cfg.clip_groups))
