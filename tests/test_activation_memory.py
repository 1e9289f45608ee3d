"""Activation memory counted by MemTracker: fake tensors count what a real step holds; frozen parameters are
skipped; unfused attention's score matrices; the fitted model (vggt_train.train.activation_memory)."""

from __future__ import annotations

import pytest

from vggt_train import kernels
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


@needs_tracker
def test_unfused_attention_counts_its_score_matrices():
    """kernels.attention=reference keeps each layer's softmax for backward: tokens^2 more without checkpointing;
    the count leaves the kernel registry as it found it."""
    kernels.configure({"rope": "reference"})
    try:
        w = am.workload_of("full", "tiny", 1, 16, 112)
        fused = am.measure(w, fake=True)
        w.attention = "reference"
        unfused = am.measure(w, fake=True)
        assert kernels.overrides() == {"rope": ("reference", "config")}
    finally:
        kernels.reset()
    extra = unfused.activations - fused.activations
    assert extra > 0.5 * fused.activations
    # at least the tiny preset's 4 global layers' float32 softmax (2 heads) over 16 x 69 tokens
    assert extra >= 4 * 2 * 4 * am.score_elements(1, 16, w.tokens_per_image())[0]


def _steps(frames_list, samples=1, chunked=True):
    """Workloads of the tiny preset at 56 px: 16 + 5 = 21 tokens per image."""
    out = []
    for frames in frames_list:
        w = am.workload_of("full_checkpointed", "tiny", samples, frames, 56)
        w.head_checkpointing = chunked
        out.append(w)
    return out


def test_workload_kind_and_fit():
    assert am.workload_kind(["aggregator*"], True) == "frozen_aggregator"
    assert am.workload_kind(["camera_head*"], True) == "full_checkpointed"
    assert am.workload_kind([], False) == "full"
    with pytest.raises(ValueError, match="workload"):
        am.workload_of("lora", "tiny", 1, 2, 56)
    # a line with a bend where the heads' chunks start (4 images): 1000 + 1 x tokens + 3 x min(images, 4) x 21
    steps = _steps([1, 2, 4, 8, 16])
    assert steps[0].tokens_per_image() == 21
    values = [1000 + w.tokens() + 3 * min(w.frames, 4) * 21 for w in steps]
    fit = am.fit_activations(steps, values)
    assert fit["base"] == pytest.approx(1000.0) and fit["per_token"] == pytest.approx(1.0)
    assert fit["per_head_token"] == pytest.approx(3.0) and fit["max_rel_error"] < 1e-9 and fit["chunk_frames"] == 4
    assert am.predict(fit, 32, 21, 4) == pytest.approx(1000 + 32 * 21 + 3 * 4 * 21)
    assert am.predict(fit, 32, 21, 2) == pytest.approx(1000 + 32 * 21 + 3 * 2 * 21)  # smaller chunks, less
    assert am.fit_activations(steps, [1000.0, 3000.0, 1000.0, 3000.0, 1000.0])["max_rel_error"] > 0.1
    with pytest.raises(ValueError, match="chunk"):
        am.fit_activations(_steps([1, 2, 3]), [1.0, 2.0, 3.0])  # nothing beyond the chunk
    # heads kept whole (model.head_checkpointing=false) beyond the fit's chunk: their own slope, 5 bytes a token here
    whole_steps = _steps([8, 16], chunked=False)
    whole = am.fit_whole_heads(fit, whole_steps, [1000 + 6 * w.tokens() for w in whole_steps])
    assert whole["per_head_token_whole"] == pytest.approx(5.0) and whole["whole_heads_max_rel_error"] < 1e-9
    both = {**fit, **whole}
    assert am.predict(both, 16, 21, None) == pytest.approx(1000 + 6 * 16 * 21)
    assert am.predict(both, 16, 21, 16) == am.predict(both, 16, 21, None)  # one chunk of all = whole heads
    assert am.predict(both, 16, 21, 8) == pytest.approx(1000 + 16 * 21 + 5 * 8 * 21)  # a chunk beyond the fit's
    assert am.predict(both, 3, 21, None) == am.predict(fit, 3, 21, 4)  # up to the fit's chunk: as measured
    # unfused attention: the aggregator's peak with 0.01 byte per global and 0.005 per frame score element, where
    # it is larger than the heads' (not at 1 x 2 frames here)
    unfused = _steps([2, 8, 24]) + _steps([2], samples=4)
    scores = [am.score_elements(w.samples, w.frames, 21) for w in unfused]
    assert scores[0] == (42**2, 2 * 21**2)
    measured = [max(am.predict(fit, w.samples * w.frames, 21, 4), 1000 + w.tokens() + 0.01 * g + 0.005 * f)
                for w, (g, f) in zip(unfused, scores)]
    score_fit = am.fit_scores(fit, unfused, measured)
    assert score_fit["per_global_score"] == pytest.approx(0.01) and score_fit["per_frame_score"] == pytest.approx(0.005)
    assert score_fit["score_max_rel_error"] < 1e-9
    assert am.predict({**fit, **score_fit}, 2, 21, 4, scores[0]) == am.predict(fit, 2, 21, 4)


def test_unavailable_torch_says_so(monkeypatch):
    monkeypatch.setattr(am, "_IMPORT_ERROR", "torch 2.1 has no mem_tracker")
    assert "mem_tracker" in am.unavailable()
    with pytest.raises(RuntimeError, match="cannot be measured"):
        am.measure(am.Workload(preset="tiny"))
