"""COLMAP workspaces -> frames: synthetic round trip, the pose and pixel conventions, bad input, the pycolmap path."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from vggt_train.data.sources.colmap import (ColmapInputError, SceneFrame, list_workspaces, load_model, read_depth,
                                            read_workspace)
from vggt_train.data.sources.colmap_model import (COLMAP_REASONS, qvec_to_rotmat, read_depth_map, read_model,
                                                  rotmat_to_qvec, write_depth_map)
from vggt_train.data.synthetic_colmap import make_synthetic_colmap

FRAMES, HW = 6, (24, 32)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """{'bin': info, 'txt': info} of the same two synthetic workspaces written as binary and as text models."""
    out = {}
    for kind in ("bin", "txt"):
        root = str(tmp_path_factory.mktemp(kind))
        out[kind] = make_synthetic_colmap(root, workspaces=2, frames=FRAMES, size=HW, seed=3, binary=kind == "bin")
    return out


def _tiny_workspace(root: Path, camera_line: str, image_lines: list[str], points_lines: list[str] = (),
                    image_names=("a.png",), hw=(100, 100)) -> Path:
    """A hand-written text workspace: the given cameras.txt line, images.txt lines (two per image), points3D.txt."""
    (root / "sparse").mkdir(parents=True)
    (root / "images").mkdir()
    for name in image_names:
        PILImage.new("RGB", (hw[1], hw[0])).save(root / "images" / name)
    (root / "sparse" / "cameras.txt").write_text("# comment\n" + camera_line + "\n")
    (root / "sparse" / "images.txt").write_text("# comment\n" + "\n".join(image_lines) + "\n")
    (root / "sparse" / "points3D.txt").write_text("\n".join(points_lines) + "\n")
    return root


def _reason(excinfo) -> tuple[str, str]:
    return excinfo.value.reason, excinfo.value.path


# ----------------------------------------------------------------------------------------------- round trip
def test_synthetic_round_trip_gives_the_rendering_cameras_and_depth(synth):
    info = synth["bin"]
    root = info["root"]
    assert list_workspaces(root) == info["workspaces"] == [("scene_000", os.path.join(root, "scene_000")),
                                                          ("scene_001", os.path.join(root, "scene_001"))]
    for name, ws in info["workspaces"]:
        frames = read_workspace(root, ws, backend="builtin")
        truth = info["frames"][name]
        assert [f.filepath for f in frames] == [f"{name}/images/{t['name']}" for t in truth]
        assert [f.frame for f in frames] == [t["image_id"] for t in truth]  # COLMAP IMAGE_IDs, not name order
        assert sorted(f.frame for f in frames) == list(range(1, FRAMES + 1))
        for f, t in zip(frames, truth):
            assert os.path.isabs(f.image_path) and os.path.isfile(f.image_path)
            assert f.size_hw == HW and f.depth_kind == "colmap"
            assert f.extrinsic.dtype == np.float64 and f.extrinsic.shape == (3, 4)
            np.testing.assert_allclose(f.extrinsic, t["extrinsic"], rtol=0, atol=1e-9)
            np.testing.assert_allclose(f.intrinsic, t["intrinsic"], rtol=0, atol=1e-9)
            depth = read_depth(f)
            assert depth.dtype == np.float32 and depth.shape == HW
            assert np.array_equal(depth, t["depth"]) and (depth > 0).mean() > 0.5


def test_depth_map_layout_matches_colmaps_fortran_order(tmp_path):
    # COLMAP's reader: reshape the floats to (width, height, channels) in Fortran order, then transpose to [H, W]
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5 + 0.25
    path = str(tmp_path / "d.geometric.bin")
    write_depth_map(path, depth)
    raw = Path(path).read_bytes()
    assert raw.startswith(b"4&3&1&")
    ref = np.frombuffer(raw[len(b"4&3&1&"):], "<f4").reshape((4, 3, 1), order="F").transpose(1, 0, 2)[..., 0]
    assert np.array_equal(ref, depth) and np.array_equal(read_depth_map(path), depth)


def test_text_and_binary_models_give_identical_frames(synth):
    for (name, ws_bin), (_, ws_txt) in zip(synth["bin"]["workspaces"], synth["txt"]["workspaces"]):
        a = read_workspace(synth["bin"]["root"], ws_bin, backend="builtin")
        b = read_workspace(synth["txt"]["root"], ws_txt, backend="builtin")
        assert len(a) == len(b) == FRAMES
        for x, y in zip(a, b):
            assert (x.filepath, x.frame, x.size_hw, x.depth_kind) == (y.filepath, y.frame, y.size_hw, y.depth_kind)
            assert np.array_equal(x.extrinsic, y.extrinsic) and np.array_equal(x.intrinsic, y.intrinsic)
            assert np.array_equal(read_depth(x), read_depth(y))


def test_same_seed_same_bytes(tmp_path):
    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(root).rglob("*")) if p.is_file()}

    for binary in (True, False):
        a, b, c = (str(tmp_path / f"{binary}{k}") for k in "abc")
        make_synthetic_colmap(a, workspaces=1, frames=3, size=(16, 20), seed=5, binary=binary)
        make_synthetic_colmap(b, workspaces=1, frames=3, size=(16, 20), seed=5, binary=binary)
        make_synthetic_colmap(c, workspaces=1, frames=3, size=(16, 20), seed=6, binary=binary)
        assert digest(a) == digest(b) != digest(c)


# ----------------------------------------------------------------------------------------------- conventions
def test_colmap_pose_is_already_opencv_camera_from_world(tmp_path):
    # qvec (w, x, y, z) = 90 degrees about z, scalar first; tvec (0, 0, 5): world point X maps to R X + t
    s = float(np.sqrt(0.5))
    ws = _tiny_workspace(tmp_path / "ws", "1 PINHOLE 100 100 50 50 50 50",
                         [f"7 {s!r} 0 0 {s!r} 0 0 5 1 a.png", ""])
    (frame,) = read_workspace(str(tmp_path), str(ws), backend="builtin")
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(frame.extrinsic, np.concatenate([rot, [[0], [0], [5]]], 1), atol=1e-15)
    # the camera centre -R^T t is 5 m behind the world origin, which it sees straight ahead (+z, OpenCV)
    np.testing.assert_allclose(-rot.T @ frame.extrinsic[:, 3], [0, 0, -5], atol=1e-15)
    assert frame.frame == 7 and frame.filepath == "ws/images/a.png" and frame.depth_kind is None
    assert read_depth(frame) is None


def test_principal_point_shift_projects_colmap_observations_minus_half(tmp_path):
    # X = (1, 2, 0): R X + t = (-2, 1, 5); COLMAP: x = 50 * -2/5 + 50 = 30, y = 50 * 1/5 + 50 = 60
    s = float(np.sqrt(0.5))
    ws = _tiny_workspace(tmp_path / "ws", "1 PINHOLE 100 100 50 50 50 50",
                         [f"7 {s!r} 0 0 {s!r} 0 0 5 1 a.png", "1.5 2.5 -1 30 60 42"],
                         ["42 1 2 0 255 0 0 0.1 7 1"])
    (frame,) = read_workspace(str(tmp_path), str(ws), backend="builtin")
    model = read_model(str(ws / "sparse"))
    point, image = model.points3D[42], model.images[7]
    (image_id, idx), = point.track
    assert image_id == 7 and image.point3D_ids[idx] == 42
    cam = frame.extrinsic[:, :3] @ point.xyz + frame.extrinsic[:, 3]
    uv = (frame.intrinsic @ cam)[:2] / cam[2]
    np.testing.assert_allclose(uv, image.xys[idx] - 0.5, atol=1e-12)
    np.testing.assert_allclose(uv, [29.5, 59.5], atol=1e-12)
    assert frame.intrinsic[0, 2] == 49.5 == (100 - 1) / 2  # the image centre in integer-pixel-centre coordinates


def test_synthetic_observations_project_through_our_cameras(synth):
    for kind in ("bin", "txt"):
        for _, ws in synth[kind]["workspaces"]:
            frames = {f.frame: f for f in read_workspace(synth[kind]["root"], ws, backend="builtin")}
            model = read_model(os.path.join(ws, "sparse", "0"))
            assert len(model.points3D) > 5
            for point in model.points3D.values():
                for image_id, idx in point.track:
                    f = frames[int(image_id)]
                    cam = f.extrinsic[:, :3] @ point.xyz + f.extrinsic[:, 3]
                    uv = (f.intrinsic @ cam)[:2] / cam[2]
                    np.testing.assert_allclose(uv, model.images[int(image_id)].xys[idx] - 0.5, atol=1e-9)


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(0)
    rots = [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)]
    for _ in range(50):
        q, _r = np.linalg.qr(rng.normal(size=(3, 3)))
        rots.append(q * np.sign(np.linalg.det(q)))
    for rot in rots:
        q = rotmat_to_qvec(rot)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(qvec_to_rotmat(q), rot, atol=1e-12)


# ----------------------------------------------------------------------------------------------- bad input
def test_distorted_camera_is_refused_naming_it(tmp_path):
    ws = _tiny_workspace(tmp_path / "ws", "3 SIMPLE_RADIAL 100 100 50 50 50 0.01", ["1 1 0 0 0 0 0 0 3 a.png", ""])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws), backend="builtin")
    assert _reason(e) == ("distorted_camera", str(ws / "sparse" / "cameras.txt"))
    msg = str(e.value)
    assert "\n" not in msg and "camera 3" in msg and "SIMPLE_RADIAL" in msg and "colmap image_undistorter" in msg


def test_missing_model_and_missing_image(tmp_path):
    ws = tmp_path / "ws"
    (ws / "images").mkdir(parents=True)
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws))
    assert _reason(e) == ("missing_model", str(ws))
    (ws / "sparse" / "0").mkdir(parents=True)
    (ws / "sparse" / "0" / "cameras.bin").write_bytes(b"\0" * 8)  # an incomplete model is no model
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws))
    assert e.value.reason == "missing_model"
    with pytest.raises(ColmapInputError) as e:
        list_workspaces(str(tmp_path / "nowhere"))
    assert e.value.reason == "missing_model"

    ws2 = _tiny_workspace(tmp_path / "ws2", "1 PINHOLE 100 100 50 50 50 50", ["1 1 0 0 0 0 0 0 1 b.png", ""])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws2), backend="builtin")
    assert _reason(e) == ("missing_image", os.path.abspath(ws2 / "images" / "b.png"))


@pytest.mark.parametrize("name", ["../a.png", "/etc/passwd", "x/../../a.png", "./a.png", "a\0.png", "a\\..\\b.png"])
def test_unsafe_image_names_are_refused(tmp_path, name):
    ws = _tiny_workspace(tmp_path / "ws", "1 PINHOLE 100 100 50 50 50 50", [f"1 1 0 0 0 0 0 0 1 {name}", ""])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws), backend="builtin")
    assert _reason(e) == ("unsafe_path", str(ws / "sparse" / "images.txt"))


def test_malformed_models_name_their_file(tmp_path, synth):
    ws = _tiny_workspace(tmp_path / "ws", "1 PINHOLE 100 100 50 50 50", ["1 1 0 0 0 0 0 0 1 a.png", ""])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws), backend="builtin")
    assert _reason(e) == ("malformed_model", str(ws / "sparse" / "cameras.txt")) and "line 2" in str(e.value)

    src = synth["bin"]["workspaces"][0][1]
    dst = tmp_path / "trunc"
    shutil.copytree(src, dst)
    images_bin = dst / "sparse" / "0" / "images.bin"
    images_bin.write_bytes(images_bin.read_bytes()[:-5])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(dst), backend="builtin")
    assert _reason(e) == ("malformed_model", str(images_bin)) and "truncated" in str(e.value)


@pytest.mark.parametrize("camera,image,reason,file", [
    ("1 PINHOLE 100 100 0 50 50 50", "1 1 0 0 0 0 0 0 1 a.png", "bad_camera", "cameras.txt"),
    ("1 SIMPLE_PINHOLE 100 100 nan 50 50", "1 1 0 0 0 0 0 0 1 a.png", "bad_camera", "cameras.txt"),
    ("1 PINHOLE 100 100 50 50 50 50", "1 0 0 0 0 0 0 0 1 a.png", "bad_camera", "images.txt"),
    ("1 PINHOLE 100 100 50 50 50 50", "1 1 0 0 0 0 0 inf 1 a.png", "bad_camera", "images.txt"),
    ("1 PINHOLE 100 100 50 50 50 50", "1 1 0 0 0 0 0 0 2 a.png", "malformed_model", "images.txt"),
])
def test_bad_cameras_and_poses(tmp_path, camera, image, reason, file):
    ws = _tiny_workspace(tmp_path / "ws", camera, [image, ""])
    with pytest.raises(ColmapInputError) as e:
        read_workspace(str(tmp_path), str(ws), backend="builtin")
    assert _reason(e) == (reason, str(ws / "sparse" / file))


def test_corrupt_depth_and_wrong_size(synth, tmp_path):
    root, ws = synth["bin"]["root"], synth["bin"]["workspaces"][0][1]
    frames = read_workspace(root, ws, backend="builtin")

    def copy_with(data: bytes) -> SceneFrame:
        path = str(tmp_path / f"d{len(data)}.bin")
        Path(path).write_bytes(data)
        return SceneFrame(**{**frames[0].__dict__, "depth_path": path})

    good = Path(frames[0].depth_path).read_bytes()
    for data in (b"garbage", b"32&24&3&" + good[8:], good[:-4], good + b"\0\0\0\0", b"-1&24&1&"):
        f = copy_with(data)
        with pytest.raises(ColmapInputError) as e:
            read_depth(f)
        assert _reason(e) == ("corrupt_depth", f.depth_path), data[:12]
    small = str(tmp_path / "small.bin")
    write_depth_map(small, np.ones((HW[0] - 1, HW[1]), np.float32))
    with pytest.raises(ColmapInputError) as e:
        read_depth(SceneFrame(**{**frames[0].__dict__, "depth_path": small}))
    assert _reason(e) == ("depth_size_mismatch", small)
    assert set(COLMAP_REASONS) >= {"missing_model", "malformed_model", "distorted_camera", "missing_image",
                                   "bad_camera", "corrupt_depth", "depth_size_mismatch", "unsafe_path"}


# ----------------------------------------------------------------------------------------------- depth dir, folders
def test_npy_depth_dir(tmp_path):
    info = make_synthetic_colmap(str(tmp_path / "d"), workspaces=1, frames=3, size=(12, 16), dense_depth=False)
    root, (_, ws) = info["root"], info["workspaces"][0]
    assert all(f.depth_path is None and read_depth(f) is None for f in read_workspace(root, ws, backend="builtin"))
    os.makedirs(os.path.join(ws, "depth", "npy"))
    depth = np.full((12, 16), 2.5, np.float64)
    depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = np.nan, -1.0, np.inf, 1e300
    np.save(os.path.join(ws, "depth", "npy", "frame0001.npy"), depth)
    np.save(os.path.join(ws, "depth", "npy", "frame0002.npy"), np.ones((12, 15)))
    frames = read_workspace(root, ws, depth_dir="depth/npy", backend="builtin")
    assert [f.depth_kind for f in frames] == ["npy", "npy", None]
    got = read_depth(frames[0])
    assert got.dtype == np.float32 and list(got[0, :5]) == [0, 0, 0, 0, 2.5] and (got[1:] == 2.5).all()
    with pytest.raises(ColmapInputError) as e:
        read_depth(frames[1])
    assert e.value.reason == "depth_size_mismatch"
    with pytest.raises(ColmapInputError) as e:
        read_workspace(root, ws, depth_dir="nope", backend="builtin")
    assert e.value.reason == "missing_depth_dir"


def test_folder_of_workspaces_is_listed_sorted(tmp_path, synth):
    src = synth["txt"]["workspaces"][0][1]
    for name in ("zeta", "alpha", "mid"):
        shutil.copytree(src, tmp_path / name)
    (tmp_path / "notes").mkdir()  # not a workspace: ignored
    assert list_workspaces(str(tmp_path)) == [(n, str(tmp_path / n)) for n in ("alpha", "mid", "zeta")]
    # a workspace given directly is one sequence named after its folder, file paths relative to it
    assert list_workspaces(str(tmp_path / "mid")) == [("mid", str(tmp_path / "mid"))]
    frames = read_workspace(str(tmp_path / "mid"), str(tmp_path / "mid"), backend="builtin")
    assert frames[0].filepath == "images/frame0001.jpg"


# ----------------------------------------------------------------------------------------------- pycolmap
def test_pycolmap_reads_what_our_reader_reads(synth, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    for kind in ("bin", "txt"):
        for _, ws in synth[kind]["workspaces"]:
            ours = read_workspace(synth[kind]["root"], ws, backend="builtin")
            theirs = read_workspace(synth[kind]["root"], ws, backend="pycolmap")
            key = [(f.filepath, f.frame, f.size_hw) for f in ours]
            assert key == [(f.filepath, f.frame, f.size_hw) for f in theirs]
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a.extrinsic, b.extrinsic, rtol=0, atol=1e-12)
                np.testing.assert_array_equal(a.intrinsic, b.intrinsic)
    # and our parsers read what COLMAP itself writes (its files also hold rigs and frames)
    sparse = os.path.join(synth["bin"]["workspaces"][0][1], "sparse", "0")
    rec = pycolmap.Reconstruction(sparse)
    ref = load_model(sparse, "builtin", points=True)
    for kind in ("bin", "txt"):
        out = str(tmp_path / kind)
        os.makedirs(out)
        (rec.write_binary if kind == "bin" else rec.write_text)(out)
        for model in (load_model(out, "builtin", points=True), load_model(out, "pycolmap", points=True)):
            assert model.cameras == ref.cameras
            for k, im in ref.images.items():
                assert model.images[k].name == im.name
                np.testing.assert_allclose(model.images[k].qvec, im.qvec, rtol=0, atol=1e-15)
                assert np.array_equal(model.images[k].tvec, im.tvec) and np.array_equal(model.images[k].xys, im.xys)
            for k, p in ref.points3D.items():
                assert np.array_equal(model.points3D[k].xyz, p.xyz) and np.array_equal(model.points3D[k].track, p.track)
