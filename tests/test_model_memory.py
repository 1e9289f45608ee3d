"""The activation-memory savings of a training step (unread aggregator layers dropped, frozen aggregator without a
graph, dense heads checkpointed per chunk of frames) change no output value and cut the counted peak."""

from __future__ import annotations

import copy

import pytest
import torch

from vggt_train.model import VGGT
from vggt_train.train.config import ConfigError, load_config

OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def _step(model: VGGT, images: torch.Tensor, lean: bool, chunk: int, frozen: bool):
    model = copy.deepcopy(model).train()
    model.lean_activations = lean
    model.head_checkpointing = lean
    model.head_chunk_frames = chunk
    if frozen:
        model.aggregator.requires_grad_(False)
    out = model(images)
    (out["depth"].mean() + out["pose_enc"].square().mean() + out["world_points"].mean() + out["depth_conf"].mean()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("preset,size", [("tiny", 28), ("small", 28)])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen_aggregator"])
def test_savings_change_no_output_and_no_gradient(preset, size, frozen):
    torch.manual_seed(0)
    model = VGGT.from_preset(preset, track_head=None)
    images = torch.rand(2, 3, 3, size, size)  # 6 frames
    ref_out, ref_grads = _step(model, images, lean=False, chunk=4, frozen=frozen)
    assert ref_grads and any(n.startswith("aggregator") for n in ref_grads) != frozen
    for chunk in (6, 4):  # one chunk; two uneven ones
        out, grads = _step(model, images, lean=True, chunk=chunk, frozen=frozen)
        for key in OUTPUTS:
            assert torch.equal(out[key], ref_out[key]), f"{key} changed with head_chunk_frames={chunk}"
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            if chunk >= 6:  # one chunk: the same operations in the same order
                assert torch.equal(grad, ref_grads[name]), name
            else:  # a head's weight gradient is summed over the chunks: a different summation order
                torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_head_checkpointing_recomputes_each_chunk_in_training_only(monkeypatch):
    import vggt_train.model.dpt_head as dpt_module

    calls = []
    real = dpt_module.checkpoint
    monkeypatch.setattr(dpt_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = VGGT.from_preset("tiny", track_head=None, point_head=None).train()
    model.head_chunk_frames = 2
    model(torch.rand(2, 3, 3, 28, 28))["depth"].mean().backward()
    assert len(calls) == 3  # 2 x 3 frames in chunks of 2
    calls.clear()
    with torch.no_grad():
        model.eval()(torch.rand(2, 3, 3, 28, 28))
    assert not calls


def _aggregator_outputs(model: VGGT, images: torch.Tensor):
    seen = []
    handle = model.aggregator.register_forward_hook(lambda mod, args, out: seen.append(out[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return seen[0]


def test_aggregator_keeps_only_the_layers_the_heads_read():
    torch.manual_seed(0)
    model = VGGT.from_preset("small", track_head=None).train()  # depth 8, the DPT heads read layers 1, 3, 5, 7
    images = torch.rand(1, 2, 3, 28, 28)
    assert model.layers_read(with_tracks=False) == {1, 3, 5, 7}
    kept = _aggregator_outputs(model, images)
    assert len(kept) == 8 and [i for i, t in enumerate(kept) if t is not None] == [1, 3, 5, 7]
    model.lean_activations = False
    every = _aggregator_outputs(model, images)
    assert all(t is not None for t in every)
    for i in (1, 3, 5, 7):
        assert torch.equal(kept[i], every[i])
    # a direct call still returns every layer (the parity tests read the first one)
    assert all(t is not None for t in model.aggregator(images)[0])


def test_a_frozen_aggregator_builds_no_graph():
    model = VGGT.from_preset("tiny", track_head=None).train()
    model.aggregator.requires_grad_(False)
    tokens = _aggregator_outputs(model, torch.rand(1, 2, 3, 28, 28))
    assert all(t.grad_fn is None for t in tokens if t is not None)
    model.aggregator.camera_token.requires_grad_(True)  # one trainable aggregator parameter: the graph is needed
    tokens = _aggregator_outputs(model, torch.rand(1, 2, 3, 28, 28))
    assert all(t.grad_fn is not None for t in tokens if t is not None)


def test_head_chunk_frames_is_validated():
    with pytest.raises(ConfigError, match=r"model\.head_chunk_frames=0 must be >= 1"):
        load_config(None, ["data.path=/d", "model.head_chunk_frames=0"])
    with pytest.raises(ValueError, match="head_chunk_frames"):
        VGGT.from_preset("tiny").head_chunk_frames = 0


def _peak_activation_bytes(lean: bool) -> int:
    """Peak activation + backward-temporary bytes of one frozen-aggregator step of the tiny preset, counted
    under FakeTensorMode with MemTracker (no real memory is used)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    class _NoHook:
        def remove(self):
            pass

    class FrozenAwareMemTracker(MemTracker):
        # MemTracker hooks every parameter's gradient; a frozen one cannot take a hook
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(p, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state):
            # the global peak only: the per-module bookkeeping costs a pass over every module per operation
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    with torch.device("meta"):
        model = VGGT.from_preset("tiny", track_head=None, point_head=None).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        model.aggregator.reset_non_persistent_buffers()
        model.lean_activations = model.head_checkpointing = lean
        model.head_chunk_frames = 1
        model.aggregator.requires_grad_(False)
        images = torch.rand(2, 2, 3, 224, 224)
        tracker = FrozenAwareMemTracker()
        tracker.track_external(model)
        with tracker:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(images)
                objective = out["depth"].float().mean() + out["depth_conf"].float().mean() + out["pose_enc"].float().square().mean()
            objective.backward()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return peak.get("Activation", 0) + peak.get("Temp", 0)


def test_savings_cut_the_counted_peak_activation_memory():
    pytest.importorskip("torch.distributed._tools.mem_tracker", reason="MemTracker needs torch >= 2.4")
    before, after = _peak_activation_bytes(False), _peak_activation_bytes(True)
    assert after < 0.5 * before, (before / 2**20, after / 2**20)
