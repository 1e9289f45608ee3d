"""Activation memory counted by MemTracker: fake tensors count what a real step holds; frozen parameters are
skipped; the per-token line fit (vggt_train.train.activation_memory)."""

from __future__ import annotations

import pytest

from vggt_train.train import activation_memory as am

needs_tracker = pytest.mark.skipif(am.unavailable() is not None, reason=str(am.unavailable()))


@needs_tracker
def test_fake_count_matches_a_real_step():
    w = am.workload_of("full_checkpointed", "tiny", samples=1, frames=3, img_size=56)
    fake, real = am.measure(w, fake=True), am.measure(w, fake=False)
    assert real.activations > 0 and real.params > 0
    assert fake.activations == pytest.approx(real.activations, rel=0.03)
    assert (fake.params, fake.grads) == (real.params, real.grads)


@needs_tracker
def test_frozen_aggregator_is_measured_without_its_gradients():
    frozen = am.measure(am.workload_of("frozen_aggregator", "tiny", 2, 2, 56), fake=True)
    full = am.measure(am.workload_of("full", "tiny", 2, 2, 56), fake=True)
    assert 0 < frozen.grads < full.grads == full.params  # only the heads get gradients
    assert frozen.activations < full.activations  # nothing of the aggregator is saved for backward


def test_workload_kind_and_fit():
    assert am.workload_kind(["aggregator*"], True) == "frozen_aggregator"
    assert am.workload_kind(["camera_head*"], True) == "full_checkpointed"
    assert am.workload_kind([], False) == "full"
    fit = am.fit_linear([100, 200, 400], [1100.0, 1200.0, 1400.0])
    assert fit["base"] == pytest.approx(1000.0) and fit["per_token"] == pytest.approx(1.0)
    assert fit["max_rel_error"] < 1e-9
    assert am.fit_linear([100, 200, 300], [100.0, 300.0, 300.0])["max_rel_error"] > 0.1
    with pytest.raises(ValueError, match="two distinct"):
        am.fit_linear([5, 5], [1.0, 2.0])
    with pytest.raises(ValueError, match="workload"):
        am.workload_of("lora", "tiny", 1, 2, 56)


def test_unavailable_torch_says_so(monkeypatch):
    monkeypatch.setattr(am, "_IMPORT_ERROR", "torch 2.1 has no mem_tracker")
    assert "mem_tracker" in am.unavailable()
    with pytest.raises(RuntimeError, match="cannot be measured"):
        am.measure(am.Workload(preset="tiny"))
