"""Batches: stack samples to [B, S, ...] and apply the official batch normalisation (geometry.normalize_batch)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from vggt_train.geometry import normalize_batch

# Keys normalize_batch rewrites; everything else passes through unchanged.
GEOMETRY_KEYS = ("extrinsics", "world_points", "cam_points", "depths")
TENSOR_KEYS = ("images", "depths", "extrinsics", "intrinsics", "cam_points", "world_points", "point_masks", "frame_ids", "frames")


def collate_samples(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack `MultiViewDataset.get_sample` outputs (same S and H, W) into [B, S, ...]; names go to lists."""
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples of one batch need the same [S, 3, H, W]; got {sorted(shapes)}")
    batch: Dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in TENSOR_KEYS if k in samples[0]}
    batch["seq_names"] = [s.get("seq_name", "") for s in samples]
    batch["categories"] = [s.get("category", "") for s in samples]
    batch["sources"] = [s.get("source", "") for s in samples]
    batch["replaced"] = [list(s.get("replaced", [])) for s in samples]
    return batch


def normalize(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The official batch normalisation: camera 0 of each sample becomes the world origin, and translations, depths,
    cam/world points are divided by the mean distance of the valid world points (geometry.normalize_batch).

    Input/output: extrinsics [B, S, 3, 4], world_points / cam_points [B, S, H, W, 3], depths [B, S, H, W],
    point_masks [B, S, H, W]; intrinsics and images are unchanged. Returns a new dict.
    """

    return normalize_batch(batch)


def collate_and_normalize(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """collate_samples + normalize: a training batch from a list of samples (e.g. a torch DataLoader collate_fn)."""
    return normalize(collate_samples(samples))
