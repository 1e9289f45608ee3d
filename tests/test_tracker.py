"""The point tracker of the track head: checkpoint layout, attention numerics, output contract, helper conventions.

End-to-end parity with the official outputs is covered by tests/test_model_parity.py (track, vis, conf).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import vggt_train.kernels as kernels
from vggt_train.model.tracker import (
    MultiheadAttention,
    Tracker,
    bilinear_sampler,
    correlation_window_offsets,
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    sample_correlation,
    sample_features4d,
)

PREFIX = "track_head.tracker."
SMALL = dict(latent_dim=16, hidden_size=32, corr_levels=3, corr_radius=2, stride=2)


def _inputs(batch=2, frames=3, tracks=5, channels=16, height=12, width=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    fmaps = torch.randn(batch, frames, channels, height, width, generator=g)
    # Image-pixel queries over the image covered by the maps (stride 2), one deliberately outside it.
    queries = torch.rand(batch, tracks, 2, generator=g) * torch.tensor([2.0 * (width - 1), 2.0 * (height - 1)])
    queries[0, 0] = torch.tensor([-3.0, 5.0])
    return queries, fmaps


@pytest.fixture(scope="module")
def small_tracker():
    torch.manual_seed(0)
    return Tracker(**SMALL).eval()


def test_state_dict_matches_official_1b_checkpoint(parity_dir):
    official = json.loads((parity_dir / "vggt_1b_state_dict_shapes.json").read_text())
    expected = {k[len(PREFIX):]: list(v) for k, v in official.items() if k.startswith(PREFIX)}
    assert len(expected) == 336
    with torch.device("meta"):  # shapes only: skips initialising ~40M parameters
        tracker = Tracker()
    ours = {k: list(v.shape) for k, v in tracker.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected


@pytest.mark.parametrize("cross", [False, True])
def test_attention_equals_nn_multihead_attention(cross):
    torch.manual_seed(0)
    embed, heads = 48, 8
    ref = nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases so the bias split is exercised
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    ours = MultiheadAttention(embed, heads)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())

    x = torch.randn(3, 7, embed)
    context = torch.randn(3, 11, embed) if cross else None
    with torch.no_grad():
        kv = x if context is None else context
        expected, _ = ref(x, kv, kv)
        got = ours(x, context)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attention_goes_through_the_kernel_registry(monkeypatch, small_tracker):
    calls = []
    original = kernels.attention

    def spy(q, k, v, scale=None):
        calls.append(q.shape)
        return original(q, k, v, scale=scale)

    monkeypatch.setattr(kernels, "attention", spy)
    queries, fmaps = _inputs()
    with torch.no_grad():
        small_tracker(queries, fmaps, iters=1)
    # 6 time blocks + 6 x (virtual self, two cross) attention calls per iteration.
    assert len(calls) == 24
    assert all(shape[1] == 8 and shape[3] == 4 for shape in calls)  # [B, heads, N, head_dim]


def test_output_shapes_and_ranges(small_tracker):
    queries, fmaps = _inputs()
    with torch.no_grad():
        coord_preds, vis, conf = small_tracker(queries, fmaps, iters=3)
    assert len(coord_preds) == 3
    assert all(c.shape == (2, 3, 5, 2) for c in coord_preds)
    assert vis.shape == (2, 3, 5) and conf.shape == (2, 3, 5)
    for t in (*coord_preds, vis, conf):
        assert torch.isfinite(t).all()
    assert ((vis > 0) & (vis < 1)).all() and ((conf > 0) & (conf < 1)).all()


def test_logits_without_sigmoid(small_tracker):
    queries, fmaps = _inputs()
    with torch.no_grad():
        _, vis, conf = small_tracker(queries, fmaps, iters=1)
        _, vis_logit, conf_logit = small_tracker(queries, fmaps, iters=1, apply_sigmoid=False)
    torch.testing.assert_close(torch.sigmoid(vis_logit), vis)
    torch.testing.assert_close(torch.sigmoid(conf_logit), conf)


def test_query_frame_is_pinned_to_the_queries(small_tracker):
    queries, fmaps = _inputs()
    with torch.no_grad():
        coord_preds, _, _ = small_tracker(queries, fmaps, iters=4)
    for coords in coord_preds:
        # Divided by the stride and multiplied back: equal to float rounding.
        torch.testing.assert_close(coords[:, 0], queries, atol=1e-6, rtol=0)
    # The other frames did move (the flow head is initialised near zero, but not at zero).
    assert not torch.equal(coord_preds[-1][:, 1:], queries.unsqueeze(1).expand(-1, 2, -1, -1))


def test_gradients_flow_to_feature_maps_and_parameters():
    torch.manual_seed(0)
    tracker = Tracker(**SMALL)
    queries, fmaps = _inputs()
    fmaps.requires_grad_(True)
    coord_preds, vis, conf = tracker(queries, fmaps, iters=2)
    (sum(c.sum() for c in coord_preds) + vis.sum() + conf.sum()).backward()
    assert fmaps.grad is not None and torch.isfinite(fmaps.grad).all() and fmaps.grad.abs().sum() > 0
    # Every parameter gets a gradient.
    missing = [name for name, p in tracker.named_parameters() if p.grad is None]
    assert missing == []
    # As in the reference, the query positions get gradient only through the pinned frame 0 (identity); the
    # other frames' tracks start from detached positions and sample with detached coordinates.
    q = queries.clone().requires_grad_(True)
    out, _, _ = tracker(q, fmaps.detach(), iters=1)
    out[0][:, 1:].sum().backward(retain_graph=True)
    assert q.grad is None or torch.count_nonzero(q.grad) == 0
    q.grad = None
    out[0][:, 0].sum().backward()
    torch.testing.assert_close(q.grad, torch.ones_like(q))


def test_without_space_attention_or_confidence():
    torch.manual_seed(0)
    tracker = Tracker(**SMALL, use_space_attn=False, predict_conf=False).eval()
    keys = tracker.state_dict().keys()
    assert not any("virual_tracks" in k or "space_" in k or "conf_predictor" in k for k in keys)
    queries, fmaps = _inputs()
    with torch.no_grad():
        coord_preds, vis, conf = tracker(queries, fmaps, iters=2)
    assert conf is None and vis.shape == (2, 3, 5) and coord_preds[-1].shape == (2, 3, 5, 2)


def test_single_frame_and_batch_independence(small_tracker):
    queries, fmaps = _inputs()
    with torch.no_grad():
        full, vis, _ = small_tracker(queries, fmaps, iters=2)
        one, vis_one, _ = small_tracker(queries[1:], fmaps[1:], iters=2)
        single_frame, _, _ = small_tracker(queries, fmaps[:, :1], iters=1)
    torch.testing.assert_close(one[-1], full[-1][1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vis_one, vis[1:], atol=1e-6, rtol=1e-5)
    assert single_frame[0].shape == (2, 1, 5, 2)


# ---- helper conventions -----------------------------------------------------------------------------------------


def test_bilinear_sampler_pixel_convention():
    image = torch.arange(4 * 5, dtype=torch.float32).reshape(1, 1, 4, 5)
    # Integer pixel (x, y) hits the pixel centre exactly (align-corners convention).
    coords = torch.tensor([[[[0.0, 0.0], [4.0, 3.0], [2.0, 1.0]]]])
    out = bilinear_sampler(image, coords)
    assert out.flatten().tolist() == [0.0, 19.0, 7.0]
    # Half-way between two columns averages them; outside the map: border clamps, zeros pads with 0.
    assert bilinear_sampler(image, torch.tensor([[[[1.5, 0.0]]]])).item() == pytest.approx(1.5)
    assert bilinear_sampler(image, torch.tensor([[[[-10.0, 0.0]]]])).item() == 0.0
    assert bilinear_sampler(image + 1, torch.tensor([[[[-10.0, 2.0]]]])).item() == 11.0
    assert bilinear_sampler(image + 1, torch.tensor([[[[-10.0, 2.0]]]]), padding_mode="zeros").item() == 0.0


def test_sample_features4d_shape_and_values():
    fmap = torch.randn(2, 6, 4, 5)
    coords = torch.tensor([[[1.0, 2.0], [4.0, 0.0], [0.0, 3.0]]]).expand(2, -1, -1)
    out = sample_features4d(fmap, coords)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out[:, 0], fmap[:, :, 2, 1])
    torch.testing.assert_close(out[:, 1], fmap[:, :, 0, 4])
    torch.testing.assert_close(out[:, 2], fmap[:, :, 3, 0])


def test_correlation_window_is_x_major():
    offsets = correlation_window_offsets(1)
    # Flattened: x offset outer, y offset inner.
    assert offsets.reshape(-1, 2).tolist() == [
        [-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1],
    ]
    # One-hot feature map: the correlation lights up at the window slot of the pixel's offset from the track.
    channels, height, width, radius = 4, 9, 9, 2
    fmap = torch.zeros(1, 1, channels, height, width)
    fmap[0, 0, 0, 3, 6] = 1.0  # pixel x=6, y=3
    target = torch.zeros(1, 1, 1, channels)
    target[..., 0] = 1.0
    coords = torch.tensor([[[[5.0, 4.0]]]])  # the pixel is at dx=+1, dy=-1
    window = sample_correlation([fmap], target, coords, radius)[0, 0, 0]
    side = 2 * radius + 1
    slot = (1 + radius) * side + (-1 + radius)
    assert window.argmax().item() == slot
    assert window[slot].item() == pytest.approx(1.0 / channels**0.5)


def test_sincos_position_embedding_layout():
    dim, height, width = 16, 3, 5
    pe = get_2d_sincos_pos_embed(dim, (height, width))
    assert pe.shape == (1, dim, height, width) and pe.dtype == torch.float32
    # First half depends on x (column) only, second half on y (row) only; sin at position 0 is 0, cos is 1.
    assert torch.equal(pe[0, : dim // 2, 0], pe[0, : dim // 2, 2])
    assert torch.equal(pe[0, dim // 2 :, :, 0], pe[0, dim // 2 :, :, 4])
    assert pe[0, : dim // 4, :, 0].abs().max() == 0 and torch.all(pe[0, dim // 4 : dim // 2, :, 0] == 1)
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    torch.testing.assert_close(pe[0, :quarter, 1, 3], torch.sin(3 * omega).float())
    torch.testing.assert_close(pe[0, dim // 2 + quarter :, 2, 0], torch.cos(2 * omega).float())


def test_flow_embedding_layout():
    xy = torch.tensor([[[0.25, -0.5]]])
    emb = get_2d_embedding(xy, 8, cat_coords=False)
    assert emb.shape == (1, 1, 16)
    freqs = torch.arange(0, 8, 2, dtype=torch.float32) * (1000.0 / 8)
    torch.testing.assert_close(emb[0, 0, 0:8:2], torch.sin(0.25 * freqs))
    torch.testing.assert_close(emb[0, 0, 1:8:2], torch.cos(0.25 * freqs))
    torch.testing.assert_close(emb[0, 0, 8::2], torch.sin(-0.5 * freqs))
    assert get_2d_embedding(xy, 8).shape == (1, 1, 18)
