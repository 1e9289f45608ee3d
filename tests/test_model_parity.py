"""Our VGGT computes the official function: parity with tensors produced by the official implementation."""

from __future__ import annotations

import pytest
import torch

from conftest import PARITY_DIR, load_fixture
from vggt_train.model import VGGT, load_pretrained

FIXTURES = ["tiny_conv", "tiny_dinov2"]


def _assert_close(name, ours, theirs, tol=1e-4):
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != official {tuple(theirs.shape)}"
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_run(request, parity_dir):
    config, _, inputs, outputs = load_fixture(request.param)
    model = VGGT.from_config(config).eval()
    load_pretrained(model, PARITY_DIR / request.param / "weights.safetensors", strict=True)
    with torch.no_grad():
        pred = model(inputs["images"], query_points=inputs["query_points"])
        tokens, _ = model.aggregator(inputs["images"])
    return request.param, model, inputs, outputs, pred, tokens


def test_aggregator_tokens_match(fixture_run):
    name, _, _, outputs, _, tokens = fixture_run
    _assert_close(f"{name} aggregated_tokens_first", tokens[0], outputs["aggregated_tokens_first"])
    _assert_close(f"{name} aggregated_tokens_last", tokens[-1], outputs["aggregated_tokens_last"])


def test_camera_depth_point_outputs_match(fixture_run):
    name, _, _, outputs, pred, _ = fixture_run
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        _assert_close(f"{name} {key}", pred[key], outputs[key])
    assert len(pred["pose_enc_list"]) == 4
    for i, pose in enumerate(pred["pose_enc_list"]):
        _assert_close(f"{name} pose_enc_list.{i}", pose, outputs[f"pose_enc_list.{i}"])


def test_track_outputs_match(fixture_run):
    name, _, _, outputs, pred, _ = fixture_run
    for key in ("track", "vis", "conf"):
        _assert_close(f"{name} {key}", pred[key], outputs[key])


def test_unbatched_input_equals_batched(fixture_run):
    _, model, inputs, _, pred, _ = fixture_run
    with torch.no_grad():
        single = model(inputs["images"][1], query_points=inputs["query_points"][1])
    _assert_close("unbatched depth", single["depth"][0], pred["depth"][1], tol=1e-5)
    _assert_close("unbatched track", single["track"][0], pred["track"][1], tol=1e-5)


def test_gradient_checkpointing_does_not_change_gradients(parity_dir):
    config, weights, inputs, _ = load_fixture("tiny_conv")
    config["track_head"] = None
    grads = []
    for ckpt in (True, False):
        model = VGGT.from_config(config).train()
        model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("track_head")})
        model.gradient_checkpointing = ckpt
        out = model(inputs["images"])
        (out["depth"].mean() + out["pose_enc"].square().mean()).backward()
        grads.append(model.aggregator.frame_blocks[0].attn.qkv.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("setting", ["train", "eval", "train_switched_off"])
def test_gradient_checkpointing_runs_once_per_block_in_training_only(monkeypatch, setting):
    import vggt_train.model.aggregator as aggregator_module

    calls = []
    real = aggregator_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(aggregator_module, "checkpoint", counting_checkpoint)
    model = VGGT.from_preset("tiny", track_head=None)
    model.train(setting != "eval")
    if setting == "train_switched_off":
        model.gradient_checkpointing = False
    model(torch.rand(1, 2, 3, 28, 28))["depth"].mean().backward()
    blocks = len(model.aggregator.frame_blocks) + len(model.aggregator.global_blocks)
    assert blocks > 0 and len(calls) == (blocks if setting == "train" else 0)
