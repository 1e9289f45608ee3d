"""What every loss term shares: the official thresholds and clamps, non-finite clean-up, and the zero that stays
attached to the graph when a mask selects (almost) nothing."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch


# Below this many valid pixels (in frame 0 for the camera loss, in the batch for depth / points) a loss is
# skipped: the official thresholds.
MIN_VALID_PIXELS = 100
# Per-element losses (and the gt maps) are clamped to +-HARD_MAX so a few outliers cannot dominate.
HARD_MAX = 100.0


# -- small helpers ---------------------------------------------------------------------------------------------
def _fix_non_finite(x: torch.Tensor, hard_max: Optional[float] = HARD_MAX) -> torch.Tensor:
    """NaN / inf -> 0, then clamp to [-hard_max, hard_max] (no clamp when hard_max is None)."""
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if hard_max is not None:
        x = x.clamp(min=-hard_max, max=hard_max)
    return x


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A 0-d zero that keeps `x` in the autograd graph (so every parameter still receives a gradient)."""
    return _fix_non_finite(x, hard_max=None).sum() * 0.0


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    """Masks may arrive as bool or as 0/1 floats (e.g. after collation): index with bool."""
    return mask if mask.dtype == torch.bool else mask > 0.5


def _image_size(batch: Dict[str, Any]) -> Sequence[int]:
    """(H, W) of the batch: from images [B, S, 3, H, W], else from depths [B, S, H, W]."""
    if batch.get("images") is not None:
        return tuple(batch["images"].shape[-2:])
    return tuple(batch["depths"].shape[-2:])
