"""FLOP accounting of VGGT with torch.utils.flop_counter (works on the meta device: no memory, no time)."""

from __future__ import annotations

from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from vggt_train.model.vggt import VGGT


def _counter():
    return FlopCounterMode(display=False)


def _attention_flops(counter) -> int:
    """FLOPs of softmax attention: fused SDPA kernels, or the batched matmuls SDPA decomposes into on CPU/meta
    (the aggregator has no other batched matmul)."""
    totals = counter.get_flop_counts().get("Global", {})
    return sum(v for op, v in totals.items() if any(tag in str(op) for tag in ("scaled_dot_product", "flash", "bmm")))


def measure_flops(model: VGGT, num_images: int, height: int, width: int, heads=("camera_head", "depth_head"), device="meta") -> Dict[str, float]:
    """FLOPs for one sample of `num_images` frames of height x width.

    Returns aggregator forward (and the part of it in softmax attention, which older FLOP counters, and
    the official model's published count, leave out), heads (the named ones) forward and forward+backward, and the frozen-aggregator
    training step total (aggregator forward + heads forward/backward), as in the Ascend reference benchmark.
    """
    images = torch.rand(1, num_images, 3, height, width, device=device)
    model = model.to(device)
    was_training = model.training
    model.train()
    agg_grad = [p.requires_grad for p in model.aggregator.parameters()]
    for p in model.aggregator.parameters():
        p.requires_grad_(False)
    try:
        with _counter() as agg_counter:
            with torch.no_grad():
                tokens, start = model.aggregator(images)
        agg_fwd = agg_counter.get_total_flops()
        agg_attention = _attention_flops(agg_counter)
        tokens = [t.detach() for t in tokens]
        with _counter() as head_counter:
            total = 0
            for name in heads:
                head = getattr(model, name)
                if head is None:
                    continue
                if name == "camera_head":
                    out = head(tokens)
                    total = total + sum(o.float().sum() for o in out)
                else:
                    values, conf = head(tokens, images, start)
                    total = total + values.float().sum() + conf.float().sum()
            head_fwd = head_counter.get_total_flops()
            total.backward()
        head_fwd_bwd = head_counter.get_total_flops()
    finally:
        for p, g in zip(model.aggregator.parameters(), agg_grad):
            p.requires_grad_(g)
        model.train(was_training)
    return {
        "aggregator_forward": float(agg_fwd),
        "aggregator_forward_attention": float(agg_attention),
        "heads_forward": float(head_fwd),
        "heads_forward_backward": float(head_fwd_bwd),
        "frozen_aggregator_step": float(agg_fwd + head_fwd_bwd),
    }


def training_flops_per_image(model: VGGT, num_images: int, height: int, width: int, frozen_aggregator: bool) -> float:
    """Model FLOPs of one training step per image (for MFU): heads fwd+bwd, plus aggregator fwd (+2x for bwd)."""
    heads = tuple(h for h in ("camera_head", "depth_head", "point_head") if getattr(model, h) is not None)
    flops = measure_flops(model, num_images, height, width, heads=heads)
    aggregator = flops["aggregator_forward"] * (1 if frozen_aggregator else 3)
    return (aggregator + flops["heads_forward_backward"]) / num_images
