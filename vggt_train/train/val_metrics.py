"""Validation metrics of a run: losses, AUC@30 / RRA@15 / RTA@15 and depth AbsRel / delta over the whole draw.

Each rank scores its items of the validation draw (`ItemScores.score`, one record per micro-batch, keyed by the
item's index in the draw); the records of all ranks are gathered (`gather`) and merged in item order (`merge`),
so the result is the same whatever the number of processes:
- losses: the mean over items of each term (and, for a mixture, per dataset: the mean over its samples);
- pose: the per-pair errors of every sample (`vggt_train.evaluation.pose`) pooled over the draw, then
  `auc@30` (percent, pose_auc), `rra@15` and `rta@15` (percent), as `vggt-train evaluate` computes them;
- depth: per sample, AbsRel and delta < 1.25 after per-frame median alignment over its valid pixels
  (`vggt_train.evaluation.depth`), averaged over the samples that have valid depth (`depth_abs_rel`, and
  `depth_delta_1.25` in percent). Samples without depth (camera-only data) are left out.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from vggt_train.evaluation.depth import depth_metrics
from vggt_train.evaluation.pose import pose_auc, relative_pose_errors, rra_rta
from vggt_train.geometry import pose_encoding_to_extri_intri
from vggt_train.train.source_losses import source_loss_means, source_loss_sums

AUC_THRESHOLD = 30
RRA_THRESHOLD = 15
METRIC_KEYS = (f"auc@{AUC_THRESHOLD}", f"rra@{RRA_THRESHOLD}", f"rta@{RRA_THRESHOLD}", "depth_abs_rel", "depth_delta_1.25")


def score_item(index: int, loss_fn: Callable, preds: Mapping, batch: Mapping, sources: Sequence[str] = ()) -> Dict[str, Any]:
    """The record of item `index` of the draw: {"index", "losses": {term: float}, "sources": [K, 1 + T] list or None,
    "terms", "rot" / "trans": per-pair errors (degrees, float64 numpy [P], all samples), "depth": [(abs_rel,
    delta_1_25)] per sample with valid depth}. preds: the model's outputs for batch (images [B, S, 3, H, W])."""
    losses = loss_fn(preds, batch)
    terms = sorted(losses)
    record: Dict[str, Any] = {"index": int(index), "losses": {k: float(losses[k]) for k in terms}, "terms": terms,
                              "sources": None, "rot": np.zeros(0), "trans": np.zeros(0), "depth": []}
    if sources:  # a mixture: each dataset's samples through the loss on their own (source_losses.py)
        record["sources"] = source_loss_sums(loss_fn, preds, batch, sources, terms).cpu().double().tolist()
    B, S, _, H, W = batch["images"].shape
    if "pose_enc" in preds and "extrinsics" in batch and S >= 2:
        extrinsics, _ = pose_encoding_to_extri_intri(preds["pose_enc"].float(), (H, W), build_intrinsics=False)
        rot, trans = zip(*(relative_pose_errors(extrinsics[b], batch["extrinsics"][b]) for b in range(B)))
        record["rot"] = torch.cat(rot).cpu().numpy()
        record["trans"] = torch.cat(trans).cpu().numpy()
    if preds.get("depth") is not None and "depths" in batch:
        valid = batch.get("point_masks")
        for b in range(B):
            m = depth_metrics(preds["depth"][b, ..., 0].float(), batch["depths"][b],
                              None if valid is None else valid[b], align="median")
            if m["num_valid"] > 0:  # a NaN from a failed prediction stays and shows
                record["depth"].append((m["abs_rel"], m["delta_1_25"]))
    return record


def gather(accelerator, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every rank's records, on every rank (one all_gather_object; a single process returns its own)."""
    if accelerator.num_processes == 1:
        return list(records)
    parts: List[Optional[list]] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, records)
    return [r for part in parts for r in (part or [])]


def pooled_pose_metrics(rot: np.ndarray, trans: np.ndarray) -> Dict[str, float]:
    """{"auc@30", "rra@15", "rta@15"} in percent of the pooled per-pair errors [P] (degrees); {} without pairs."""
    if np.asarray(rot).size == 0:
        return {}
    rra, rta = rra_rta(rot, trans, RRA_THRESHOLD)
    return {f"auc@{AUC_THRESHOLD}": pose_auc(rot, trans, AUC_THRESHOLD, percent=True),
            f"rra@{RRA_THRESHOLD}": 100.0 * rra, f"rta@{RRA_THRESHOLD}": 100.0 * rta}


def merge(records: List[Dict[str, Any]], sources: Sequence[str] = ()) -> Optional[Dict[str, float]]:
    """The validation metrics of all records (any rank order; summed in item order), or None without records:
    every loss term (mean over items), `<source>/<term>` for a mixture, and METRIC_KEYS where they apply."""
    if not records:
        return None
    records = sorted(records, key=lambda r: r["index"])
    out: Dict[str, float] = {}
    for term in sorted({t for r in records for t in r["losses"]}):
        values = [r["losses"][term] for r in records if term in r["losses"]]
        out[term] = sum(values) / len(values)
    rows = [r for r in records if r["sources"] is not None]
    if rows and sources:
        terms = rows[0]["terms"]
        total = sum(torch.tensor(r["sources"], dtype=torch.float64) for r in rows if r["terms"] == terms)
        out.update(source_loss_means(total, sources, terms))  # logged as val/<source>/<term>
    out.update(pooled_pose_metrics(np.concatenate([r["rot"] for r in records]), np.concatenate([r["trans"] for r in records])))
    depth = [d for r in records for d in r["depth"]]
    if depth:
        out["depth_abs_rel"] = math.fsum(d[0] for d in depth) / len(depth)
        out["depth_delta_1.25"] = 100.0 * math.fsum(d[1] for d in depth) / len(depth)
    return out
