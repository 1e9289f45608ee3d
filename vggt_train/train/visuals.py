"""The image of one validation sample the trackers get: input, predicted depth, true depth, confidence per frame.

    grid = sample_grid(batch, preds)          # [min(S, max_frames) * H, 4 * W, 3] uint8

One row per frame (the first `max_frames`), four columns: the input image, the predicted depth, the ground-truth
depth and the depth confidence. Depths share one turbo colour scale, the 2nd-98th percentile of the valid true
depths of the frames shown; the prediction is scaled to the truth per frame first (median over valid pixels, as
the depth metrics align it), since the network's depth has its own scale. Invalid true depth is black. The
confidence has its own turbo scale (2nd-98th percentile of its logarithm).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from vggt_train.visual import turbo

COLUMNS = ("image", "predicted depth", "true depth", "confidence")


def _range(values: np.ndarray) -> tuple:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def sample_grid(batch: Mapping, preds: Mapping, sample: int = 0, max_frames: int = 4) -> np.ndarray:
    """[F * H, 4 * W, 3] uint8 of sample `sample` (F = min(S, max_frames)): see the module doc. batch: images
    [B, S, 3, H, W] in [0, 1], depths [B, S, H, W], point_masks [B, S, H, W]; preds: depth [B, S, H, W, 1],
    depth_conf [B, S, H, W] (a missing map leaves its column black)."""
    images = batch["images"][sample, :max_frames].detach().float().cpu().clamp(0, 1)
    F, _, H, W = images.shape
    rows = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    black = np.zeros((F, H, W, 3), dtype=np.uint8)
    gt = batch["depths"][sample, :F].detach().double().cpu().numpy() if "depths" in batch else None
    valid = None
    if gt is not None:
        valid = np.isfinite(gt) & (gt > 0)
        if batch.get("point_masks") is not None:
            valid &= batch["point_masks"][sample, :F].detach().cpu().numpy().astype(bool)
    pred = preds.get("depth")
    pred = pred[sample, :F, ..., 0].detach().double().cpu().numpy() if pred is not None else None
    conf = preds.get("depth_conf")
    conf = conf[sample, :F].detach().double().cpu().numpy() if conf is not None else None

    lo, hi = _range(gt[valid]) if gt is not None else (0.0, 1.0)
    true_col, pred_col, conf_col = black.copy(), black.copy(), black.copy()
    for f in range(F):
        if gt is not None:
            true_col[f] = turbo(gt[f], lo, hi, valid[f])
        if pred is not None:
            scale = 1.0
            if gt is not None and valid[f].any() and np.median(pred[f][valid[f]]) > 0:
                scale = np.median(gt[f][valid[f]]) / np.median(pred[f][valid[f]])
            pred_col[f] = turbo(pred[f] * scale, lo, hi) if gt is not None else turbo(pred[f], *_range(pred[f]))
    if conf is not None:
        log_conf = np.log(np.maximum(conf, 1e-12))
        c_lo, c_hi = _range(log_conf)
        for f in range(F):
            conf_col[f] = turbo(log_conf[f], c_lo, c_hi)
    tiles = np.concatenate([rows, pred_col, true_col, conf_col], axis=2)  # [F, H, 4W, 3]
    return np.ascontiguousarray(tiles.reshape(F * H, 4 * W, 3))

