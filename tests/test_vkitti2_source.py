"""The Virtual KITTI 2 reader on a synthetic tree: cameras and depth as written, the official loader's conventions
(extrinsic used as camera-from-world as is, depth / 100, > 80 m cut, sky invalid), selections and bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggt_train.data.sources import vkitti2 as vk
from vggt_train.data.synthetic_vkitti2 import make_synthetic_vkitti2

# VGGT's training/data/datasets/vkitti.py: depth_map / 100, then threshold_depth_map(max_depth=self.depth_max = 80)
OFFICIAL_MAX_DEPTH_M = 80.0


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vkitti2"))
    info = make_synthetic_vkitti2(out, scenes=("Scene01", "Scene02"), variations=("clone", "fog", "15-deg-left"), frames=4)
    return out, info


@pytest.fixture
def small(tmp_path):
    """A fresh one-variation tree that a test may damage."""
    out = str(tmp_path / "vk")
    make_synthetic_vkitti2(out, variations=("clone",), frames=2, size=(16, 40))
    return out


def _raises(reason: str, fn, *args):
    with pytest.raises(vk.VKittiInputError) as info:
        fn(*args)
    err = info.value
    assert err.reason == reason, str(err)
    assert err.reason in vk.VKITTI_REASONS
    assert str(err) == f"{err.path}: {err.reason} ({err.detail})"
    return err


def _edit_line(path: str, index: int, new: str | None) -> None:
    lines = Path(path).read_text().splitlines()
    if new is None:
        del lines[index]
    else:
        lines[index] = new
    Path(path).write_text("\n".join(lines) + "\n")


def _unproject(frame, depth, v, u):
    """World points [N, 3] of pixels (v, u) with their depths, by the OpenCV camera-from-world convention."""
    cam = depth[v, u][:, None] * (np.stack([u, v, np.ones_like(u)], 1).astype(np.float64) @ np.linalg.inv(frame.intrinsic).T)
    rot, t = frame.extrinsic[:, :3], frame.extrinsic[:, 3]
    return (cam - t) @ rot  # R^T (x - t), row-wise


# ----------------------------------------------------------------------------------------------- reading
def test_cameras_and_files_are_the_generators(tree):
    root, info = tree
    for name, scene, variation, camera in vk.list_sequences(root):
        frames = vk.read_sequence(root, scene, variation, camera)
        want = info["sequences"][name]
        assert [f.frame for f in frames] == want["frames"]
        for f, extri in zip(frames, want["extrinsics"]):
            # the txt files hold 7 significant digits, like the release's
            np.testing.assert_allclose(f.extrinsic, extri, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(f.intrinsic, want["intrinsic"], rtol=1e-6)
            assert f.extrinsic.dtype == f.intrinsic.dtype == np.float64 and f.extrinsic.shape == (3, 4)
            assert f.size_hw == (40, 120)
            assert f.filepath == f"{scene}/{variation}/frames/rgb/Camera_{camera}/rgb_{f.frame:05d}.jpg"
            assert os.path.isabs(f.image_path) and f.image_path.endswith(f.filepath)
            assert f.depth_path.endswith(f"{scene}/{variation}/frames/depth/Camera_{camera}/depth_{f.frame:05d}.png")


def test_depth_is_metres_with_sky_and_the_official_cut_invalid(tree):
    root, info = tree
    assert vk.OFFICIAL_MAX_DEPTH_M == OFFICIAL_MAX_DEPTH_M
    counts = np.zeros(3, int)
    for name, scene, variation, camera in vk.list_sequences(root, scenes="Scene01"):
        for f, want in zip(vk.read_sequence(root, scene, variation, camera), info["sequences"][name]["depths"]):
            got = vk.read_depth(f)
            assert got.dtype == np.float32 and got.shape == f.size_hw
            cm = np.round(np.where(np.isfinite(want), want, 1e9) * 100)
            keep = cm <= OFFICIAL_MAX_DEPTH_M * 100
            np.testing.assert_allclose(got[keep], cm[keep] / 100, atol=1e-4)  # 1 cm steps, float32
            assert np.all(np.abs(got[keep] - want[keep]) <= 0.005 + 1e-4)
            assert np.all(got[~keep] == 0)
            counts += [keep.sum(), (~keep & np.isfinite(want)).sum(), np.isinf(want).sum()]
    # the tree exercises all three: valid depth, depth past 80 m (far walls), sky (far plane)
    assert counts.min() > 100, counts


def test_official_cutoff_is_exact_at_80_m(small):
    frame = vk.read_sequence(small, "Scene01", "clone", 0)[0]
    raw = np.zeros(frame.size_hw, np.uint16)
    raw[0, :8] = [0, 1, 7999, 8000, 8001, 30000, 65534, 65535]
    Image.fromarray(raw).save(frame.depth_path)
    got = vk.read_depth(frame)[0, :8]
    np.testing.assert_array_equal(got, np.float32([0, 0.01, 79.99, 80.0, 0, 0, 0, 0]))


def test_extrinsic_is_camera_from_world_as_written(tree):
    """World points of the bottom rows land on the ground plane z = 0 the generator rendered, and a pixel of
    Camera_0 projects with the other cameras' K [R|t] onto the pixel where their depth sees the same point."""
    root, _ = tree
    cam0 = vk.read_sequence(root, "Scene01", "clone", 0)
    cam1 = vk.read_sequence(root, "Scene01", "clone", 1)
    h, w = cam0[0].size_hw
    for f in cam0:
        depth = vk.read_depth(f)
        v, u = np.mgrid[h - 3:h, 0:w].reshape(2, -1)
        world = _unproject(f, depth, v, u)
        assert np.abs(world[:, 2]).max() < 0.05, np.abs(world[:, 2]).max()
    src, src_depth = cam0[1], vk.read_depth(cam0[1])
    v, u = np.nonzero(src_depth > 0)
    world = _unproject(src, src_depth, v, u)
    # stereo partner (same instant, 0.54 m apart) and the previous/next frame (about 5 m along the road); the
    # temporal pairs resample the steep near ground at 40x120, hence their looser, median bound
    for dst, share in ((cam1[1], 0.95), (cam0[0], 0.0), (cam0[2], 0.0)):
        cam = world @ dst.extrinsic[:, :3].T + dst.extrinsic[:, 3]
        pix = cam @ dst.intrinsic.T
        uu, vv = np.round(pix[:, 0] / pix[:, 2]).astype(int), np.round(pix[:, 1] / pix[:, 2]).astype(int)
        inside = (cam[:, 2] > 0) & (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        dst_depth = vk.read_depth(dst)[vv[inside], uu[inside]]
        seen = dst_depth > 0
        rel = np.abs(dst_depth[seen] - cam[inside, 2][seen]) / cam[inside, 2][seen]
        assert inside.mean() > 0.3 and seen.mean() > 0.9, (dst.filepath, inside.mean(), seen.mean())
        assert np.median(rel) < 0.03 and np.mean(rel < 0.01) >= share, (dst.filepath, np.median(rel), np.mean(rel < 0.01))


def test_turned_variation_keeps_the_camera_centre(tree):
    root, _ = tree
    for a, b in zip(vk.read_sequence(root, "Scene01", "clone", 0), vk.read_sequence(root, "Scene01", "15-deg-left", 0)):
        centre = lambda e: -e[:, :3].T @ e[:, 3]  # noqa: E731
        np.testing.assert_allclose(centre(a.extrinsic), centre(b.extrinsic), atol=1e-4)
        forward_a, forward_b = a.extrinsic[2, :3], b.extrinsic[2, :3]
        turn = np.degrees(np.arctan2(forward_b[1], forward_b[0]) - np.arctan2(forward_a[1], forward_a[0]))
        assert abs(turn - 15) < 1e-3


def test_same_seed_same_bytes(tmp_path):
    def digest(out):
        h = hashlib.sha256()
        for p in sorted(Path(out).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(out)).encode() + p.read_bytes())
        return h.hexdigest()

    a, b, c = (str(tmp_path / n) for n in "abc")
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        make_synthetic_vkitti2(out, frames=2, size=(16, 40), seed=seed)
    assert digest(a) == digest(b) != digest(c)


# ----------------------------------------------------------------------------------------------- selections
def test_selections_and_order(tree):
    root, _ = tree
    names = [r[0] for r in vk.list_sequences(root)]
    assert len(names) == 2 * 3 * 2 and names[0] == "Scene01_15-deg-left_Camera_0"
    assert vk.list_sequences(root) == sorted(vk.list_sequences(root), key=lambda r: (r[1], r[2], r[3]))
    got = vk.list_sequences(root, scenes=["Scene02"], variations="clone,fog", cameras=[1])
    assert got == vk.list_sequences(root, scenes="Scene02", variations=["fog", "clone"], cameras="1") == [("Scene02_clone_Camera_1", "Scene02", "clone", 1), ("Scene02_fog_Camera_1", "Scene02", "fog", 1)]


@pytest.mark.parametrize("kwargs, named, listed", [
    ({"scenes": ["Scene01", "Scene99"]}, "Scene99", "Scene01, Scene02"),
    ({"variations": ["rain"]}, "rain", "15-deg-left, clone, fog"),
    ({"cameras": [2]}, "camera 2", "0, 1"),
])
def test_unknown_selection_names_it_and_lists_the_available(tree, kwargs, named, listed):
    err = _raises("unknown_selection", vk.list_sequences, tree[0], *[kwargs.get(k) for k in ("scenes", "variations", "cameras")])
    assert named in err.detail and listed in err.detail


def test_missing_root_and_escaping_names(tree, tmp_path):
    root = tree[0]
    _raises("missing_dir", vk.list_sequences, str(tmp_path / "nowhere"))
    _raises("missing_dir", vk.read_sequence, root, "Scene01", "rain", 0)
    _raises("missing_dir", vk.read_sequence, root, "Scene01", "clone", 5)
    for scene, variation in (("..", "clone"), ("../Scene01", "clone"), ("Scene01", "clone/../../x"), ("/etc", "clone"), ("", "clone")):
        _raises("unsafe_path", vk.read_sequence, root, scene, variation, 0)
    _raises("unsafe_path", vk.list_sequences, root, [".."])


# ----------------------------------------------------------------------------------------------- bad input
def _var(small):
    return os.path.join(small, "Scene01", "clone")


@pytest.mark.parametrize("txt, line, new, reason", [
    ("extrinsic.txt", 0, "0 0 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1", "malformed_txt"),  # header gone
    ("intrinsic.txt", 1, "0 0 70 70 19.5", "malformed_txt"),  # a column short
    ("intrinsic.txt", 1, "0 0 70 70 19.5 abc", "malformed_txt"),
    ("intrinsic.txt", 1, "0.5 0 70 70 19.5 7.5", "malformed_txt"),  # frame id not an integer
    ("intrinsic.txt", 2, "0 0 70 70 19.5 7.5", "duplicate_row"),  # line 2 (frame 0 camera 1) becomes camera 0 again
    ("extrinsic.txt", 1, None, "missing_camera_row"),  # frame 0 camera 0 gone
    ("intrinsic.txt", 3, None, "missing_camera_row"),  # frame 1 camera 0 gone
    ("extrinsic.txt", 1, "0 0 nan 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1", "bad_camera"),
    ("extrinsic.txt", 1, "0 0 2 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1", "bad_camera"),  # not a rotation
    ("extrinsic.txt", 1, "0 0 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 2", "bad_camera"),  # last row not 0 0 0 1
    ("intrinsic.txt", 1, "0 0 -70 70 19.5 7.5", "bad_camera"),
])
def test_bad_txt_rows(small, txt, line, new, reason):
    path = os.path.join(_var(small), txt)
    _edit_line(path, line, new)
    err = _raises(reason, vk.read_sequence, small, "Scene01", "clone", 0)
    assert txt in err.path
    if reason in ("missing_camera_row", "bad_camera"):  # only camera 0's row is bad: camera 1 still reads
        assert len(vk.read_sequence(small, "Scene01", "clone", 1)) == 2


def test_missing_files(small):
    var = _var(small)
    os.remove(os.path.join(var, "extrinsic.txt"))
    assert _raises("missing_txt", vk.read_sequence, small, "Scene01", "clone", 0).path.endswith("extrinsic.txt")


def test_a_camera_row_without_its_image(small):
    image = os.path.join(_var(small), "frames", "rgb", "Camera_0", "rgb_00001.jpg")
    os.remove(image)
    assert _raises("missing_image", vk.read_sequence, small, "Scene01", "clone", 0).path == os.path.abspath(image)


def test_an_image_without_its_camera_row(small):
    extra = os.path.join(_var(small), "frames", "rgb", "Camera_0", "rgb_00007.jpg")
    Image.new("RGB", (40, 16)).save(extra)
    err = _raises("missing_camera_row", vk.read_sequence, small, "Scene01", "clone", 0)
    assert err.path.endswith("extrinsic.txt") and "frame 7" in err.detail


def test_corrupt_image(small):
    Path(_var(small), "frames", "rgb", "Camera_1", "rgb_00000.jpg").write_bytes(b"not a jpeg")
    assert _raises("corrupt_image", vk.read_sequence, small, "Scene01", "clone", 1).path.endswith("rgb_00000.jpg")


def test_bad_depth_files(small):
    frames = vk.read_sequence(small, "Scene01", "clone", 0)
    f0, f1 = frames
    Image.fromarray(np.zeros(f0.size_hw, np.uint8)).save(f0.depth_path)  # 8-bit
    assert _raises("corrupt_depth", vk.read_depth, f0).path == f0.depth_path
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(f0.depth_path)
    assert _raises("size_mismatch", vk.read_depth, f0).path == f0.depth_path
    data = Path(f1.depth_path).read_bytes()
    Path(f1.depth_path).write_bytes(data[: len(data) // 2])  # truncated
    _raises("corrupt_depth", vk.read_depth, f1)
    os.remove(f1.depth_path)
    os.mkdir(f1.depth_path)
    _raises("not_a_regular_file", vk.read_depth, f1)
    os.rmdir(f1.depth_path)
    assert _raises("missing_depth", vk.read_sequence, small, "Scene01", "clone", 0).path == f1.depth_path


def test_no_depth_folder_gives_none(small):
    depth_dir = Path(_var(small), "frames", "depth", "Camera_0")
    for p in depth_dir.iterdir():
        p.unlink()
    depth_dir.rmdir()
    frames = vk.read_sequence(small, "Scene01", "clone", 0)
    assert [f.depth_path for f in frames] == [None, None]
    _raises("missing_depth", vk.read_depth, frames[0])
