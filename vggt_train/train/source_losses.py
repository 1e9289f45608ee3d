"""Validation losses per dataset of a mixture: each dataset's samples of a batch go through the loss on their own.

    sums = source_loss_sums(loss_fn, preds, batch, names=("co3d", "vkitti"), terms=sorted(losses))   # [K, 1 + T]
    ...  # summed over batches and ranks
    means = source_loss_means(sums, names, terms)     # {"co3d/objective": ..., "vkitti/loss_camera": ...}

Row k of the sums holds the number of dataset k's samples, then each loss term times that number; the trainer
adds them up over its validation batches and over ranks (every rank has the same names and terms, so the tensors
match), and divides at the end: a mean over samples, whatever rank and batch they fell in.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Sequence

import torch


def select_samples(value: Any, index: torch.Tensor, batch_size: int) -> Any:
    """`value` restricted to the samples `index` [k] (int64): batch-first tensors and per-sample lists of length
    batch_size are indexed, dicts / lists of tensors recursed into, anything else passes through."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device)) if value.dim() and value.shape[0] == batch_size else value
    if isinstance(value, Mapping):
        return {k: select_samples(v, index, batch_size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, torch.Tensor) for v in value):  # e.g. pose_enc_list: one tensor per iteration
            return type(value)(select_samples(v, index, batch_size) for v in value)
        if len(value) == batch_size:
            return [value[int(i)] for i in index.tolist()]
    return value


def source_loss_sums(loss_fn: Callable, preds: Mapping, batch: Mapping, names: Sequence[str], terms: Sequence[str]) -> torch.Tensor:
    """[len(names), 1 + len(terms)] float32 on the batch's device: per dataset, its sample count in this batch, then
    count x each loss term over its samples alone (zeros for a dataset without samples here)."""
    sources = list(batch.get("sources") or [])
    device = batch["images"].device
    out = torch.zeros(len(names), 1 + len(terms), dtype=torch.float32, device=device)
    B = len(sources)
    for k, name in enumerate(names):
        picked = [i for i, s in enumerate(sources) if s == name]
        if not picked:
            continue
        index = torch.tensor(picked, dtype=torch.int64)
        losses = loss_fn(select_samples(preds, index, B), select_samples(batch, index, B))
        out[k, 0] = len(picked)
        nan = torch.tensor(float("nan"))
        out[k, 1:] = torch.stack([losses.get(t, nan).detach().float().to(device) for t in terms]) * len(picked)
    return out


def source_loss_means(sums: torch.Tensor, names: Sequence[str], terms: Sequence[str]) -> Dict[str, float]:
    """{"<name>/<term>": mean over that dataset's samples}; a dataset no validation batch drew is left out."""
    out: Dict[str, float] = {}
    rows = sums.detach().cpu().double().tolist()
    for name, row in zip(names, rows):
        count = row[0]
        if count <= 0:
            continue
        for term, total in zip(terms, row[1:]):
            out[f"{name}/{term}"] = total / count if math.isfinite(total) else float("nan")
    return out
