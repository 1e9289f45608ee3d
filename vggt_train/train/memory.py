"""Analytic per-rank memory of the model states (weights, gradients, AdamW state) under DDP and DeepSpeed ZeRO.

Two precisions:
- ``fp32``: our recipe. Weights and gradients stay float32 and bf16 comes from autocast (DeepSpeed's own bf16
  is off). DeepSpeed ZeRO-1/2/3 still keep a float32 copy of each rank's weight partition for the optimiser
  (ZeRO-1/2 clone it whatever the dtype; ZeRO-3 reuses the partition only when its device check passes, which
  it did not on the CPU with deepspeed 0.19, so the copy is counted: an upper bound).
- ``bf16``: DeepSpeed's bf16 mode (bf16 weights and gradients, float32 master weights + Adam m, v), the
  K = 12 bytes of the ZeRO paper.
Frozen parameters (fine-tuning freezes the aggregator) hold only their weights; ZeRO-3 partitions them too.
Activations, communication buckets and the allocator's slack come on top and are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")


@dataclass(frozen=True)
class StateBytes:
    """Bytes one rank holds for the model states."""

    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer

    def as_dict(self) -> Dict[str, float]:
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer, "total": self.total}


def model_state_bytes(trainable: int, frozen: int, strategy: str, world_size: int, precision: str = "fp32") -> StateBytes:
    """Per-rank bytes of weights, gradients and AdamW state for `trainable` + `frozen` parameter counts."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: choose from {STRATEGIES}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: choose fp32 or bf16")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    n = world_size
    w = 4 if precision == "fp32" else 2  # bytes of a weight / gradient element as the model holds it
    # optimizer: Adam m and v (8 bytes) plus a float32 master/partition copy where DeepSpeed keeps one
    if strategy == "ddp":
        master = 0 if precision == "fp32" else 4
    else:  # ZeRO's optimizer steps a float32 copy of the partition, even when the weights are float32 already
        master = 4
    opt = (8 + master) * trainable
    shard_opt = strategy != "ddp"
    shard_grads = strategy in ("zero2", "zero3")
    shard_weights = strategy == "zero3"
    weights = w * (trainable + frozen) / (n if shard_weights else 1)
    grads = w * trainable / (n if shard_grads else 1)
    optimizer = opt / (n if shard_opt else 1)
    return StateBytes(weights=weights, grads=grads, optimizer=optimizer)
