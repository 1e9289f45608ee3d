"""The whole VGGT forward on the forced NPU route (stand-in torch_npu) still matches the official fixture.

With VGGT_KERNELS=attention=npu,rope=npu every attention of the model (aggregator frame/global blocks, camera
trunk, tracker self/cross attention) must go through npu_fusion_attention, and every rotary application (4 per
rotary block: rows and columns of q and of k) through npu_rotary_mul.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PARITY_DIR
import fake_torch_npu
from vggt_train import kernels

PARITY = PARITY_DIR


@pytest.fixture
def npu(monkeypatch):
    fake = fake_torch_npu.install(monkeypatch)
    monkeypatch.setenv(kernels.ENV_VAR, "attention=npu,rope=npu")
    kernels.reset()
    yield fake
    kernels.reset()


def _count_attention_forwards(model):
    """Forward hooks counting attention modules run, and how many of them received rotary tables."""
    from vggt_train.model.layers import Attention
    from vggt_train.model.tracker import MultiheadAttention

    counts = {"attention": 0, "rotary": 0}

    def hook(module, args, kwargs, output):
        counts["attention"] += 1
        if isinstance(module, Attention) and kwargs.get("rotary", args[1] if len(args) > 1 else None) is not None:
            counts["rotary"] += 1

    for module in model.modules():
        if isinstance(module, (Attention, MultiheadAttention)):
            module.register_forward_hook(hook, with_kwargs=True)
    return counts


def test_full_model_on_the_npu_route_matches_the_parity_fixture(npu):
    from safetensors.torch import load_file

    from vggt_train.model import VGGT, load_pretrained

    root = PARITY / "tiny_conv"
    if not root.is_dir():
        pytest.fail(f"parity fixtures not found at {root}: the checkout is incomplete")
    config = json.load(open(root / "config.json"))
    model = VGGT.from_config(config)
    load_pretrained(model, root / "weights.safetensors")
    model.eval()
    inputs, expected = load_file(str(root / "inputs.safetensors")), load_file(str(root / "outputs.safetensors"))
    counts = _count_attention_forwards(model)
    with torch.no_grad():
        pred = model(inputs["images"], query_points=inputs["query_points"])

    assert counts["rotary"] == 2 * config["aggregator"]["depth"]  # one frame and one global block per depth step
    assert counts["attention"] > counts["rotary"]  # + camera trunk and tracker attention
    assert npu.count("npu_fusion_attention") == counts["attention"]
    assert npu.count("npu_rotary_mul") == 4 * counts["rotary"]
    assert all(args["input_layout"] == "BNSD" and args["keep_prob"] == 1.0 for name, args in npu.calls if name == "npu_fusion_attention")
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "track", "vis", "conf"):
        assert pred[key].shape == expected[key].shape, key
        torch.testing.assert_close(pred[key], expected[key], atol=1e-4, rtol=1e-4, msg=lambda m: f"{key}: {m}")
