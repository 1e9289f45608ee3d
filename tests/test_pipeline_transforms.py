"""Per-view transforms: target shapes, exact intrinsics through crop/resize/strict crop, rot90, colour jitter."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from vggt_train.data.pipeline.transforms import (
    AugmentConfig,
    ColorJitterConfig,
    JitterDraw,
    ViewDraw,
    gather_depth,
    open_image,
    plan_view,
    resample_depth,
    resample_image,
    rotate_camera,
    rotate_hue_,
    target_shape,
    window_pixels,
)
from vggt_train.geometry import depth_to_world_points


@pytest.mark.parametrize("img_size,aspect,expected", [(518, 1.0, (518, 518)), (518, 0.5, (252, 518)), (518, 0.33, (168, 518)),
                                                      (56, 0.75, (42, 56)), (70, 1.5, (98, 70))])
def test_target_shape(img_size, aspect, expected):
    assert target_shape(img_size, aspect, 14) == expected


def test_target_shape_rejects_less_than_a_patch():
    with pytest.raises(ValueError, match="below one patch"):
        target_shape(56, 0.2, 14)


def _index_depth(h, w):
    """Depth whose value encodes its own pixel: r * w + c + 1 (float64, exact)."""
    return (np.arange(h * w, dtype=np.float64) + 1).reshape(h, w)


def _draws():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    return [ViewDraw()] + [ViewDraw.draw(rng, cfg) for _ in range(6)]


@pytest.mark.parametrize("src_hw,target", [((120, 160), (42, 56)), ((160, 120), (56, 56)), ((90, 200), (84, 70)), ((40, 50), (56, 56))])
def test_intrinsics_follow_the_pixels_exactly(src_hw, target):
    """The source pixel each output pixel takes its depth from projects, through the new intrinsic, to within
    half a (resized) source pixel of that output pixel: no half-pixel or crop-offset error anywhere."""
    H, W = src_hw
    K = np.array([[0.9 * W, 0, W / 2 + 3.3], [0, 0.95 * W, H / 2 - 2.1], [0, 0, 1]])
    for draw in _draws():
        plan = plan_view(src_hw, K, target, draw)
        assert plan.out_hw == target and plan.rot90_k == 0
        idx = resample_depth(_index_depth(H, W), plan)
        vh, vw = plan.valid_hw
        assert (idx[vh:] == 0).all() and (idx[:, vw:] == 0).all()
        src = idx[:vh, :vw].astype(np.int64) - 1
        r, c = src // W, src % W
        Kn = plan.intrinsic
        # same camera: a source pixel centre maps to u' = fx'/fx (c - cx) + cx'
        u = Kn[0, 0] / K[0, 0] * (c - K[0, 2]) + Kn[0, 2]
        v = Kn[1, 1] / K[1, 1] * (r - K[1, 2]) + Kn[1, 2]
        ii, jj = np.mgrid[0:vh, 0:vw]
        sy, sx = plan.scale
        assert np.abs(u - jj).max() <= 0.5 * sx + 1e-9
        assert np.abs(v - ii).max() <= 0.5 * sy + 1e-9


def test_image_resample_uses_the_same_mapping_as_the_intrinsic():
    """A ramp image (R = u, G = v of the source pixel centre) read back at each output pixel equals the source
    coordinate that the new intrinsic assigns to that pixel (to the 8-bit rounding)."""
    H, W = 200, 240
    v, u = np.mgrid[0:H, 0:W]
    ramp = np.stack([u, v, np.zeros_like(u)], -1).astype(np.uint8)
    K = np.array([[200.0, 0, 118.7], [0, 200.0, 101.2], [0, 0, 1]])
    for draw in _draws():
        plan = plan_view((H, W), K, (112, 140), draw)
        out = np.asarray(resample_image(open_image(ramp), plan)).astype(np.float64)
        Kn = plan.intrinsic
        ii, jj = np.mgrid[0:plan.out_hw[0], 0:plan.out_hw[1]]
        u_src = (jj - Kn[0, 2]) * K[0, 0] / Kn[0, 0] + K[0, 2]
        v_src = (ii - Kn[1, 2]) * K[1, 1] / Kn[1, 1] + K[1, 2]
        inner = (slice(4, -4), slice(4, -4))  # the filter sees the crop border at the edges
        assert np.abs(out[..., 0][inner] - u_src[inner]).max() < 1.0
        assert np.abs(out[..., 1][inner] - v_src[inner]).max() < 1.0


def test_scale_draws_are_capped_and_identity_without_augmentation():
    rng = np.random.default_rng(1)
    draws = [ViewDraw.draw(rng, AugmentConfig()) for _ in range(200)]
    scales = np.array([d.scale_hw for d in draws])
    assert scales.max() <= 1.0 and scales.min() >= 0.8 and (scales == 1.0).mean() > 0.3
    margins = np.array([d.extra_margin for d in draws])
    assert margins.min() >= 0 and margins.max() <= 0.3 and np.median(margins) < 0.1  # triangular, mode 0
    assert not any(d.swap for d in draws)  # landscape_check is off by default
    plan = plan_view((100, 200), np.array([[100.0, 0, 100.0], [0, 100, 50.0], [0, 0, 1]]), (56, 56), ViewDraw())
    assert plan.crop == (0, 0, 100, 200)  # no random crop: the whole image around the centred principal point


def test_depth_gather_keeps_float16_and_drops_non_finite_values():
    depth = np.full((40, 60), 2.5, np.float16)
    depth[10, 10:20], depth[11, 10:20], depth[12, 10:20] = np.nan, np.inf, -np.inf
    plan = plan_view((40, 60), np.array([[50.0, 0, 29.5], [0, 50, 19.5], [0, 0, 1]]), (28, 28), ViewDraw())
    out = gather_depth(depth, plan)
    assert out.dtype == np.float16 and out.shape == (28, 28) and np.isfinite(out).all()
    assert set(np.unique(out).tolist()) == {0.0, 2.5} and (out == 0).sum() > 0
    np.testing.assert_array_equal(resample_depth(depth, plan), out.astype(np.float32))


def test_depth_gathered_into_a_slot_equals_the_gathered_copy():
    """gather_depth(out=...) writes straight into the batch (or a rotated view of it): the same values, padding
    zeroed over whatever the slot held; the float16 NaN/inf test also holds with negative values present."""
    import dataclasses

    rng = np.random.default_rng(5)
    K = np.array([[50.0, 0, 41.5], [0, 50, 29.5], [0, 0, 1]])
    for trial in range(40):
        depth = rng.uniform(-1, 4, (60, 80)).astype(np.float16 if trial % 4 else np.float32)
        depth[rng.random(depth.shape) < 0.02] = [np.nan, np.inf, -np.inf][trial % 3]
        if trial % 5 == 0:
            depth = np.abs(depth)  # no negative value: the cheap test alone decides
        draw = ViewDraw((float(rng.uniform(0.5, 1)), float(rng.uniform(0.5, 1))), float(rng.uniform(0, 0.3)), bool(trial % 2), bool(trial % 3))
        target = (28, 42) if trial % 2 else (42, 28)
        plan = plan_view((60, 80), K, target, draw)
        if trial % 3 == 0:  # a partly valid view (zero padding below and right)
            plan = dataclasses.replace(plan, valid_hw=(plan.valid_hw[0] - 3 * (trial % 2), plan.valid_hw[1] - 5))
        ref = gather_depth(depth, plan)
        # float32 tests finiteness with np.isfinite, float16 with its bit test: the same zeros
        assert np.array_equal(ref.astype(np.float32), gather_depth(depth.astype(np.float32), plan))
        slot = np.full(plan.out_hw, 7, depth.dtype)
        assert gather_depth(depth, plan, out=slot) is slot and np.array_equal(slot, ref)
        rotated = np.full(plan.out_hw[::-1], 7, depth.dtype)
        gather_depth(depth, plan, out=np.rot90(rotated, -1))
        assert np.array_equal(rotated, np.rot90(ref, 1))
    with pytest.raises(ValueError):
        gather_depth(depth, plan, out=np.zeros(plan.out_hw, np.float64))


def test_window_pixels_equal_the_cropped_image():
    """The worker packs a source window with PIL's raw encoder over that tile: the bytes np.asarray(crop) gives,
    for decoded JPEGs (full and draft-decoded) and in-memory images, any window inside the image."""
    import io

    from PIL import Image

    rng = np.random.default_rng(6)
    arr = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    for trial in range(30):
        img = open_image(buf.getvalue() if trial % 3 else arr)
        if trial % 3 == 2:
            img.draft("RGB", (35, 23))  # a 1/2 DCT decode
        W, H = img.size
        r0, c0 = (int(v) for v in rng.integers(0, (H, W)))
        r1, c1 = int(rng.integers(r0 + 1, H + 1)), int(rng.integers(c0 + 1, W + 1))
        if trial == 0:
            r0, r1, c0, c1 = 0, H, 0, W
        got = window_pixels(img, (r0, r1, c0, c1))
        assert got.dtype == np.uint8 and np.array_equal(got, np.asarray(img.crop((c0, r0, c1, r1)))), (trial, (r0, r1, c0, c1))


@pytest.mark.parametrize("k", [-1, 1])
def test_rot90_camera_is_exact(k):
    rng = np.random.default_rng(3)
    H, W = 30, 20
    depth = torch.tensor(rng.uniform(1, 3, (H, W)))
    K = np.array([[25.0, 0, 9.3], [0, 27.0, 14.1], [0, 0, 1]])
    ang = 0.4
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    E = np.concatenate([R, [[0.3], [-0.2], [1.5]]], 1)
    world = depth_to_world_points(depth, torch.tensor(E), torch.tensor(K)).numpy()
    E2, K2 = rotate_camera(E, K, (H, W), k)
    depth2 = torch.tensor(np.ascontiguousarray(np.rot90(depth.numpy(), k)))
    world2 = depth_to_world_points(depth2, torch.tensor(E2), torch.tensor(K2)).numpy()
    np.testing.assert_allclose(world2, np.rot90(world, k), atol=1e-12)
    np.testing.assert_allclose(E2[:, :3] @ E2[:, :3].T, np.eye(3), atol=1e-12)


def test_landscape_check_rotates_portrait_crops_into_the_target():
    cfg = AugmentConfig(landscape_check=True)
    K = np.array([[300.0, 0, 99.5], [0, 300, 149.5], [0, 0, 1]])
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(40):
        plan = plan_view((300, 200), K, (42, 70), ViewDraw.draw(rng, cfg))
        seen.add(plan.rot90_k)
        if plan.rot90_k:
            assert plan.out_hw == (70, 42)  # a portrait crop, rotated into the landscape target afterwards
    assert seen == {-1, 0, 1}


def test_hue_rotation_matches_hsv_round_trip():
    rng = np.random.default_rng(0)
    x = rng.random((3, 12, 12)).astype(np.float32)
    x[:, 0, :4] = 0.5  # grey
    x[0, 1, :4] = x[1, 1, :4]  # ties between max channels
    for hue in (0.07, -0.1, 0.5, -0.5):
        out = rotate_hue_(torch.tensor(x), hue).numpy()
        ref = np.empty_like(x)
        for i in range(12):
            for j in range(12):
                h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
                ref[:, i, j] = colorsys.hsv_to_rgb((h + hue) % 1, s, v)
        np.testing.assert_allclose(out, ref, atol=2e-6)


def test_jitter_ops_and_grayscale():
    img = torch.rand(3, 8, 8)
    out = JitterDraw(apply=True, brightness=1.3, order=(0, 1, 2, 3))(img.clone())
    torch.testing.assert_close(out, (img * 1.3).clamp(0, 1))
    out = JitterDraw(apply=True, contrast=0.5, order=(1, 0, 2, 3))(img.clone())
    mean = (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]).mean()
    torch.testing.assert_close(out, (0.5 * img + 0.5 * mean).clamp(0, 1))
    gray = JitterDraw(grayscale=True)(img.clone())
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(JitterDraw()(img.clone()), img)  # not applied: untouched


def test_jitter_draws_follow_the_config():
    rng = np.random.default_rng(0)
    cj = ColorJitterConfig()
    draws = [JitterDraw.draw(rng, cj, 0.05) for _ in range(2000)]
    assert 0.87 < np.mean([d.apply for d in draws]) < 0.93
    assert 0.03 < np.mean([d.grayscale for d in draws]) < 0.07
    assert all(0.5 <= d.brightness <= 1.5 and abs(d.hue) <= 0.1 for d in draws)
    assert len({d.order for d in draws}) == 24  # every op order occurs
