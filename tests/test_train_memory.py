"""The analytic model-state memory model (bench/zero_memory.py's tables, README's vggt_1b figures)."""

from __future__ import annotations

import pytest

from vggt_train.train.memory import model_state_bytes

GB = 1e9


def test_zero_paper_figure_with_bf16():
    """ZeRO paper, Fig. 1: 7.5B parameters, 64 cards, K = 12 -> 120 / 31.4 / 16.6 / 1.9 GB per card."""
    psi = 7.5e9
    got = {s: model_state_bytes(int(psi), 0, s, 64, "bf16").total / GB for s in ("ddp", "zero1", "zero2", "zero3")}
    assert got["ddp"] == pytest.approx(120.0, abs=0.05)
    assert got["zero1"] == pytest.approx(31.4, abs=0.05)
    assert got["zero2"] == pytest.approx(16.6, abs=0.05)
    assert got["zero3"] == pytest.approx(1.9, abs=0.05)


def test_fp32_recipe_terms():
    # DDP: 4 (weights) + 4 (grads) + 8 (m, v) bytes per trainable parameter, 4 per frozen one
    ddp = model_state_bytes(100, 50, "ddp", 8)
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (600, 400, 800)
    # ZeRO-1/2 keep a float32 partition copy: 12 bytes of optimizer state per parameter, sharded
    z1 = model_state_bytes(100, 50, "zero1", 4)
    assert (z1.weights, z1.grads, z1.optimizer) == (600, 400, 300)
    z2 = model_state_bytes(100, 50, "zero2", 4)
    assert (z2.weights, z2.grads, z2.optimizer) == (600, 100, 300)
    # ZeRO-3 shards everything, frozen weights included
    z3 = model_state_bytes(100, 50, "zero3", 4)
    assert (z3.weights, z3.grads, z3.optimizer) == (150, 100, 300)
    # one rank: sharding changes nothing but the extra float32 copy
    assert model_state_bytes(100, 0, "zero3", 1).total == model_state_bytes(100, 0, "ddp", 1).total + 400


def test_more_cards_never_cost_more_and_bad_arguments_are_named():
    for s in ("zero1", "zero2", "zero3"):
        assert model_state_bytes(10**6, 10**5, s, 64).total < model_state_bytes(10**6, 10**5, s, 8).total
    with pytest.raises(ValueError, match="strategy"):
        model_state_bytes(1, 0, "fsdp", 2)
    with pytest.raises(ValueError, match="precision"):
        model_state_bytes(1, 0, "ddp", 2, "fp8")
    with pytest.raises(ValueError, match="world_size"):
        model_state_bytes(1, 0, "ddp", 0)
