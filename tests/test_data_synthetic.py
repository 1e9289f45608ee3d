"""make-synthetic-co3d: the raw Co3D layout, determinism, and geometry a model can learn from (multi-view consistent)."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from vggt_train.data.synthetic import make_synthetic_co3d


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    info = make_synthetic_co3d(str(out), ["apple", "tv"], sequences=2, test_sequences=1, frames=24, hw=(48, 64), seed=3)
    return info


def _load(info, category, split):
    with gzip.open(os.path.join(info["annotation_dir"], f"{category}_{split}.jgz")) as f:
        return json.loads(f.read())


def _frame(info, entry):
    img_path = os.path.join(info["co3d_dir"], entry["filepath"])
    depth = np.asarray(Image.open(img_path.replace("/images", "/depths") + ".geometric.png")).astype(np.uint16).view(np.float16)
    mask = np.asarray(Image.open(img_path.replace("/images", "/depth_masks").replace(".jpg", ".png"))) > 128
    rgb = np.asarray(Image.open(img_path).convert("RGB")).astype(np.float64)
    return rgb, depth.astype(np.float64), mask, np.array(entry["extri"]), np.array(entry["intri"])


def test_raw_layout(syn):
    for category in ("apple", "tv"):
        train, test = _load(syn, category, "train"), _load(syn, category, "test")
        assert len(train) == 2 and len(test) == 1 and not set(train) & set(test)
        for seq, frames in {**train, **test}.items():
            assert len(frames) == 24
            for entry in frames:
                assert entry["filepath"].startswith(f"{category}/{seq}/images/frame") and entry["filepath"].endswith(".jpg")
                rgb, depth, mask, extri, intri = _frame(syn, entry)
                assert rgb.shape == (48, 64, 3) and depth.shape == mask.shape == (48, 64)
                rot = extri[:, :3]
                np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
                assert np.linalg.det(rot) > 0 and intri[0, 0] > 0 and intri[2].tolist() == [0, 0, 1]
                assert np.all(depth[mask] > 0), "a valid mask pixel must carry a depth"


def test_masks_exercise_invalid_areas(syn):
    frames = [e for seqs in _load(syn, "apple", "train").values() for e in seqs]
    masks = [_frame(syn, e)[2] for e in frames]
    depths = [_frame(syn, e)[1] for e in frames]
    # Holes: the depth PNG has a value, but the mask says invalid -> conversion must zero them.
    assert any(((d > 0) & ~m).any() for d, m in zip(depths, masks))
    # Sky: no depth at all.
    assert any((d == 0).any() for d in depths)


def test_deterministic(tmp_path):
    a = make_synthetic_co3d(str(tmp_path / "a"), ["tv"], 1, 0, 4, (16, 24), seed=7)
    b = make_synthetic_co3d(str(tmp_path / "b"), ["tv"], 1, 0, 4, (16, 24), seed=7)
    c = make_synthetic_co3d(str(tmp_path / "c"), ["tv"], 1, 0, 4, (16, 24), seed=8)

    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, fs in os.walk(root) for f in fs}

    fa, fb = files(a["co3d_dir"]) | files(a["annotation_dir"]), files(b["co3d_dir"]) | files(b["annotation_dir"])
    assert fa == fb
    assert files(c["annotation_dir"]) != files(a["annotation_dir"])


def test_multiview_consistent(syn):
    """Unproject frame i with its z-depth and camera, project into frame j: depth and colour must agree."""
    seq = next(iter(_load(syn, "tv", "train").values()))
    rgb0, d0, m0, e0, k0 = _frame(syn, seq[0])
    ok_pairs = 0
    for j in (2, 4):
        rgb1, d1, m1, e1, k1 = _frame(syn, seq[j])
        v, u = np.nonzero(m0)
        z = d0[v, u]
        cam0 = (np.linalg.inv(k0) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)) * z  # z-depth, not ray length
        world = e0[:, :3].T @ (cam0 - e0[:, 3:])
        cam1 = e1[:, :3] @ world + e1[:, 3:]
        pix = k1 @ cam1
        u1, v1 = np.round(pix[0] / pix[2]).astype(int), np.round(pix[1] / pix[2]).astype(int)
        inside = (cam1[2] > 0) & (u1 >= 0) & (u1 < 64) & (v1 >= 0) & (v1 < 48)
        u1, v1, zc = u1[inside], v1[inside], cam1[2][inside]
        vis = m1[v1, u1] & (np.abs(d1[v1, u1] - zc) < 0.03 * zc)  # visible (not occluded) in frame j
        assert vis.mean() > 0.5, "most reprojected points must land on the same surface in the other view"
        col_err = np.abs(rgb1[v1[vis], u1[vis]] - rgb0[v[inside][vis], u[inside][vis]]).mean()
        shuffled = np.abs(rgb1[v1[vis], u1[vis]] - rgb0[v[inside][vis], u[inside][vis]][::-1]).mean()
        assert col_err < 0.5 * shuffled, (col_err, shuffled)
        ok_pairs += 1
    assert ok_pairs == 2


def test_textured(syn):
    seq = next(iter(_load(syn, "apple", "train").values()))
    rgb = _frame(syn, seq[0])[0]
    # Textures, not flat colours: strong local gradients over a good part of the image.
    grad = np.abs(np.diff(rgb.mean(2), axis=1))
    assert (grad > 8).mean() > 0.1
