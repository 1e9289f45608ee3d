"""`vggt-train predict`: the grid <-> original pixel mapping (by hand and against PIL's resize), the written files
(cameras.json, the COLMAP text model read back, depth/conf maps, points.ply, scene.glb), the confidence
percentile and --max-points, and bad input as one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vggt_train.cli import main
from vggt_train.data.sources.colmap import camera_intrinsic, image_extrinsic, read_depth, read_workspace
from vggt_train.data.sources.colmap_model import read_model
from vggt_train.data.sources.shards import ShardSource
from vggt_train.evaluation.protocol import preprocess_image, resize_geometry
from vggt_train.model import VGGT, export_official
from vggt_train.predict import glb
from vggt_train.predict.images import GridPlacement, InputImage
from vggt_train.predict.infer import Prediction, select_points

IMG = 28
# name -> (width, height): a is cropped (resized 28x70, rows 21..48 kept), b is padded (resized 28x14 on a 28-row
# grid, 7 rows above), c is square
SIZES = {"a.png": (40, 100), "b.png": (100, 40), "c.jpg": (50, 50)}


# ---------------------------------------------------------------------------------------------- the mapping
def test_intrinsic_of_a_cropped_image_by_hand():
    # 40 x 100 at width 28: resized to 28 x 70 (sx = sy = 0.7), rows 21..48 kept
    p = read_one_placement(40, 100)
    assert (p.resized_w, p.resized_h, p.crop_top, p.crop_h, p.pad_top, p.pad_left) == (28, 70, 21, 28, 0, 0)
    grid_k = np.array([[20.0, 0, 14], [0, 20.0, 14], [0, 0, 1]])
    k = p.intrinsic_to_original(grid_k)
    # fx = 20 / 0.7; cx = (14 + 0.5) / 0.7 - 0.5; cy = (14 + 21 + 0.5) / 0.7 - 0.5
    np.testing.assert_allclose(k, [[28.571428571428573, 0, 20.214285714285715], [0, 28.571428571428573, 50.214285714285715],
                                   [0, 0, 1]], rtol=0, atol=1e-12)


def test_intrinsic_of_a_padded_image_by_hand():
    # 100 x 40 at width 28: resized to 28 x 14 (sx = 0.28, sy = 0.35), centred on a 28-row grid 7 rows down
    p = GridPlacement(100, 40, 14, 28, 0, 14, pad_top=7, pad_left=0)
    k = p.intrinsic_to_original(np.array([[20.0, 0, 14], [0, 20.0, 14], [0, 0, 1]]))
    # fx = 20 / 0.28, fy = 20 / 0.35, cx = 14.5 / 0.28 - 0.5, cy = (14 - 7 + 0.5) / 0.35 - 0.5
    np.testing.assert_allclose(k, [[71.42857142857143, 0, 51.285714285714285], [0, 57.142857142857146, 20.928571428571427],
                                   [0, 0, 1]], rtol=0, atol=1e-12)
    rows, cols = p.original_to_grid_index()
    assert rows.min() == 7 and rows.max() == 20 and cols.min() == 0 and cols.max() == 27


def read_one_placement(width, height) -> GridPlacement:
    """The placement read_one gives a width x height image (without padding)."""
    return GridPlacement(width, height, *resize_geometry(height, width, IMG))


def test_the_mapping_is_where_pil_puts_a_pixel():
    # a bright column and row on grey: after the bicubic resize their intensity centroid sits at the mapped
    # coordinate; the half-pixel-free mapping u * s would be 0.15 px off
    width, height, u0, v0 = 40, 100, 17, 60
    img = np.full((height, width, 3), 100, np.uint8)
    img[:, u0] = 200
    col = preprocess_image(img, IMG)[0].numpy() * 255 - 100
    img = np.full((height, width, 3), 100, np.uint8)
    img[v0] = 200
    row = preprocess_image(img, IMG)[0].numpy() * 255 - 100
    p = read_one_placement(width, height)
    cu = (col.sum(0) * np.arange(col.shape[1])).sum() / col.sum()
    cv = (row.sum(1) * np.arange(row.shape[0])).sum() / row.sum()
    u, v = p.grid_to_original(cu, cv)
    assert abs(u - u0) < 0.05 and abs(v - v0) < 0.05, (u, v)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = VGGT.from_preset("tiny")
    with torch.no_grad():  # random weights predict a field of view of 0 (relu): give every camera 1 radian
        model.camera_head.pose_branch.fc2.weight[7:9] = 0
        model.camera_head.pose_branch.fc2.bias[7:9] = 0.25
    ckpt = str(export_official(model, root / "tiny.safetensors"))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    return root, ckpt, str(images)


def _predict(setup, out, *extra):
    root, ckpt, images = setup
    return main(["predict", images, "--checkpoint", ckpt, "--out", str(out), "--preset", "tiny", "--img-size",
                 str(IMG), "--no-progress", *extra])


@pytest.fixture(scope="module")
def predicted(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted") / "out"
    assert _predict(setup, out) == 0
    return str(out)


def read_ply(path):
    """Our own reader of a binary little-endian vertex PLY: (header lines, structured array)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    types = {"float": "<f4", "uchar": "u1"}
    dtype = [(line.split()[2], types[line.split()[1]]) for line in header if line.startswith("property")]
    vertex = np.frombuffer(data[end:], dtype)
    assert len(vertex) == count
    return header, vertex


def test_outputs_exist_and_parse(predicted):
    doc = json.load(open(os.path.join(predicted, "cameras.json")))
    assert [i["name"] for i in doc["images"]] == sorted(SIZES)
    for item in doc["images"]:
        w, h = SIZES[item["name"]]
        assert (item["width"], item["height"]) == (w, h)
        assert np.asarray(item["extrinsic"]).shape == (3, 4) and np.asarray(item["intrinsic"]).shape == (3, 3)
        stem = os.path.splitext(item["name"])[0]
        depth = np.load(os.path.join(predicted, "depth", f"{stem}.npy"))
        conf = np.load(os.path.join(predicted, "conf", f"{stem}.npy"))
        assert depth.dtype == np.float32 and depth.shape == (h, w) and conf.shape == (h, w)
        assert np.asarray(Image.open(os.path.join(predicted, "depth", f"{stem}.png"))).shape == (h, w, 3)
        assert os.path.isfile(os.path.join(predicted, "images", item["name"]))
    assert doc["points_from"].startswith("depth head")
    for name in ("cameras", "images", "points3D"):
        assert os.path.isfile(os.path.join(predicted, "sparse", f"{name}.txt"))


def test_cropped_rows_have_no_depth(predicted):
    # a.png (40 x 100): rows whose nearest resized row (of 70) lies outside 21..48 were cut off by the crop
    depth = np.load(os.path.join(predicted, "depth", "a.npy"))
    conf = np.load(os.path.join(predicted, "conf", "a.npy"))
    resized_row = np.floor((np.arange(100) + 0.5) * 0.7).astype(int)
    cut = (resized_row < 21) | (resized_row >= 49)
    assert cut.sum() == 60
    assert (depth[cut] == 0).all() and (conf[cut] == 0).all()
    assert (depth[~cut] > 0).all() and (conf[~cut] >= 1).all()


def test_the_colmap_model_reads_back_as_the_predicted_cameras(predicted):
    doc = json.load(open(os.path.join(predicted, "cameras.json")))
    sparse = os.path.join(predicted, "sparse")
    model = read_model(sparse, points=True)
    assert len(model.images) == 3 and len(model.cameras) == 3
    by_name = {im.name: im for im in model.images.values()}
    for item in doc["images"]:
        image = by_name[item["name"]]
        camera = model.cameras[image.camera_id]
        assert camera.model == "PINHOLE" and (camera.width, camera.height) == (item["width"], item["height"])
        np.testing.assert_allclose(image_extrinsic(image, sparse), item["extrinsic"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(camera_intrinsic(camera, sparse), item["intrinsic"], rtol=0, atol=1e-6)
        assert camera.params[2] == pytest.approx(item["intrinsic"][0][2] + 0.5)  # COLMAP's pixel convention
    # as a workspace: images/ + sparse/ (what convert-colmap reads), depth by --depth-dir depth
    frames = read_workspace(predicted, predicted, depth_dir="depth")
    assert [os.path.basename(f.image_path) for f in frames] == sorted(SIZES)
    for frame, item in zip(frames, doc["images"]):
        np.testing.assert_allclose(frame.extrinsic, item["extrinsic"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(frame.intrinsic, item["intrinsic"], rtol=0, atol=1e-6)
        stem = os.path.splitext(item["name"])[0]
        np.testing.assert_array_equal(read_depth(frame), np.load(os.path.join(predicted, "depth", f"{stem}.npy")))


def test_every_point_projects_onto_its_track_pixel_and_depth(predicted):
    model = read_model(os.path.join(predicted, "sparse"), points=True)
    assert model.points3D
    seen = {iid: 0 for iid in model.images}
    for pid, point in model.points3D.items():
        assert point.track.shape == (1, 2)
        iid, idx = point.track[0]
        image = model.images[iid]
        assert image.point3D_ids[idx] == pid
        seen[iid] += 1
        k = camera_intrinsic(model.cameras[image.camera_id], "cameras.txt")
        cam = image_extrinsic(image, "images.txt") @ np.append(point.xyz, 1.0)
        xy = (k @ cam)[:2] / cam[2] + 0.5  # COLMAP pixel convention
        np.testing.assert_allclose(xy, image.xys[idx], rtol=0, atol=1e-6)
        # the depth map at the pixel under the 2D point holds the point's z-depth
        depth = np.load(os.path.join(predicted, "depth", os.path.splitext(image.name)[0] + ".npy"))
        x, y = np.floor(image.xys[idx]).astype(int)
        assert depth[y, x] == pytest.approx(cam[2], rel=1e-5)
    # every image lists exactly its points, no 2D point without a 3D point
    assert all(len(model.images[iid].point3D_ids) == n for iid, n in seen.items())
    assert all((im.point3D_ids > 0).all() for im in model.images.values())


def _ply_points(path):
    try:
        import trimesh  # optional: when installed, the file must also open there
    except ImportError:
        _, vertex = read_ply(path)
        return np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1)
    cloud = trimesh.load(path)
    return np.asarray(cloud.vertices), np.asarray(cloud.colors)[:, :3]


def test_points_ply_holds_the_points_and_colours_of_the_model(predicted):
    doc = json.load(open(os.path.join(predicted, "cameras.json")))
    xyz, rgb = _ply_points(os.path.join(predicted, "points.ply"))
    header, _ = read_ply(os.path.join(predicted, "points.ply"))
    assert f"element vertex {doc['points']}" in header and len(xyz) == doc["points"] > 0
    model = read_model(os.path.join(predicted, "sparse"), points=True)
    pts = [model.points3D[k] for k in sorted(model.points3D)]
    np.testing.assert_allclose(xyz, np.stack([p.xyz for p in pts]).astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rgb, np.stack([p.rgb for p in pts]))
    # at the default 50th percentile about half of the 28x28 + 28x28 + 28x14 valid pixels are kept
    assert doc["points"] == pytest.approx((784 * 2 + 392) / 2, abs=3)


def test_max_points_is_a_deterministic_subset(setup, predicted, tmp_path):
    assert _predict(setup, tmp_path / "one", "--max-points", "50", "--no-images") == 0
    assert _predict(setup, tmp_path / "two", "--max-points", "50", "--no-images") == 0
    one = open(tmp_path / "one" / "points.ply", "rb").read()
    assert one == open(tmp_path / "two" / "points.ply", "rb").read()
    _, sub = read_ply(tmp_path / "one" / "points.ply")
    _, full = read_ply(os.path.join(predicted, "points.ply"))
    assert len(sub) == 50 and np.isin(sub, full).all()
    assert not (tmp_path / "one" / "images").exists()


def _fake_prediction(conf: np.ndarray) -> Prediction:
    """Two 4x4 grid images, the second padded (only its middle two rows are its own)."""
    items = [InputImage("a.png", "a.png", torch.zeros(3, 4, 4), GridPlacement(4, 4, 4, 4, 0, 4)),
             InputImage("b.png", "b.png", torch.zeros(3, 2, 4), GridPlacement(8, 4, 2, 4, 0, 2, pad_top=1))]
    k = np.array([[2.0, 0, 2], [0, 2.0, 2], [0, 0, 1]])
    return Prediction(items, np.zeros((2, 4, 4, 3), np.uint8), np.tile(np.eye(3, 4), (2, 1, 1)), np.stack([k, k]),
                      np.stack([k, k]), np.ones((2, 4, 4), np.float32), conf.astype(np.float32))


def test_the_confidence_percentile_counts_only_the_images_own_pixels():
    conf = np.arange(32, dtype=np.float32).reshape(2, 4, 4) + 1
    conf[1, 0] = conf[1, 3] = 1000  # padding: never a point, never in the percentile
    pred = _fake_prediction(conf)
    cloud = select_points(pred, 50, 10_000)
    assert cloud.candidates == 24
    own = np.concatenate([conf[0].ravel(), conf[1, 1:3].ravel()])
    assert cloud.threshold == np.percentile(own, 50) and len(cloud.xyz) == (own >= cloud.threshold).sum() == 12
    assert set(cloud.v[cloud.image == 1].tolist()) <= {1, 2}
    assert len(select_points(pred, 0, 10_000).xyz) == 24
    few = select_points(pred, 0, 5)
    assert len(few.xyz) == 5 and np.array_equal(few.u, select_points(pred, 0, 5).u)
    pred.depth[:] = np.nan  # nothing valid: no point, no threshold (cameras.json writes null)
    empty = select_points(pred, 50, 10)
    assert len(empty.xyz) == 0 and empty.candidates == 0 and np.isnan(empty.threshold)
    # unprojection at integer pixel centres: pixel (u, v) at depth 1 through fx = 2, cx = 2 is ((u - 2) / 2, ...)
    np.testing.assert_allclose(cloud.xyz[:, 0], (cloud.u - 2) / 2)
    np.testing.assert_allclose(cloud.xyz[:, 1], (cloud.v - 2) / 2)


def test_scene_glb_has_the_points_and_a_frustum_per_camera(predicted):
    trimesh = pytest.importorskip("trimesh")
    scene = trimesh.load(os.path.join(predicted, "scene.glb"))
    kinds = sorted(type(g).__name__ for g in scene.geometry.values())
    assert kinds == ["PointCloud", "Trimesh", "Trimesh", "Trimesh"]


def test_scene_glb_is_skipped_with_a_note_without_trimesh(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(glb, "trimesh_available", lambda: False)
    assert _predict(setup, tmp_path / "out", "--no-images") == 0
    assert "scene.glb skipped: trimesh is not installed" in capsys.readouterr().out
    assert not (tmp_path / "out" / "scene.glb").exists() and (tmp_path / "out" / "points.ply").exists()


def test_frustum_apex_is_the_camera_centre_and_corners_project_to_the_image_corners():
    rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    ext = np.concatenate([rot, [[1.0], [2.0], [3.0]]], 1)
    k = np.array([[50.0, 0, 20], [0, 40.0, 10], [0, 0, 1]])
    corners = glb.frustum_corners(ext, k, 40, 20, 2.0)
    np.testing.assert_allclose(corners[0], -rot.T @ ext[:, 3])
    cam = corners[1:] @ rot.T + ext[:, 3]
    np.testing.assert_allclose(cam[:, 2], 2.0)
    uv = (cam @ k.T)[:, :2] / 2.0
    np.testing.assert_allclose(uv, [[-0.5, -0.5], [39.5, -0.5], [39.5, 19.5], [-0.5, 19.5]], atol=1e-12)


# ---------------------------------------------------------------------------------------------- bad input
def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("vggt-train predict: error: "), err
    return err[0]


def test_an_empty_folder_is_one_line(setup, tmp_path, capsys):
    root, ckpt, _ = setup
    (tmp_path / "empty").mkdir()
    rc = main(["predict", str(tmp_path / "empty"), "--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--preset", "tiny"])
    assert "no images in" in _one_line_error(capsys, rc)


def test_a_missing_checkpoint_or_input_is_one_line(setup, tmp_path, capsys):
    root, ckpt, images = setup
    rc = main(["predict", images, "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    assert "checkpoint not found" in _one_line_error(capsys, rc)
    rc = main(["predict", str(tmp_path / "nothere.png"), "--checkpoint", ckpt, "--out", str(tmp_path / "o")])
    assert "input not found" in _one_line_error(capsys, rc)
    rc = main(["predict", images, "--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--conf-threshold", "120"])
    assert "--conf-threshold" in _one_line_error(capsys, rc)


def test_an_unreadable_image_is_skipped_and_reported_or_stops_with_strict(setup, tmp_path, capsys):
    root, ckpt, images = setup
    bad = tmp_path / "in"
    bad.mkdir()
    for name in SIZES:
        (bad / name).write_bytes(open(os.path.join(images, name), "rb").read())
    (bad / "broken.png").write_bytes(b"not an image")
    args = ["predict", str(bad), "--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--preset", "tiny",
            "--img-size", str(IMG), "--no-progress", "--no-images"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.err and "(1 skipped)" in captured.out
    assert len(json.load(open(tmp_path / "o" / "cameras.json"))["images"]) == 3
    message = _one_line_error(capsys, main(args + ["--strict"]))
    assert "broken.png: cannot read the image" in message
    (bad / "a.png").unlink()
    (bad / "b.png").unlink()
    (bad / "c.jpg").unlink()
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2 and err[0].startswith("skipped ") and "not an image format" in err[0]
    assert err[1] == "vggt-train predict: error: none of the 1 input images could be read"


def test_two_inputs_with_one_stem_are_refused(setup, tmp_path, capsys):
    root, ckpt, images = setup
    other = tmp_path / "x"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"")
    rc = main(["predict", images, str(other / "a.jpg"), "--checkpoint", ckpt, "--out", str(tmp_path / "o")])
    assert "share the name 'a'" in _one_line_error(capsys, rc)


def test_convert_colmap_reads_the_prediction_as_a_workspace(predicted, tmp_path):
    shards = tmp_path / "shards"
    assert main(["convert-colmap", "--input", predicted, "--depth-dir", "depth", "--out", str(shards),
                 "--min-frames", "2", "--workers", "1", "--quiet"]) == 0
    source = ShardSource(str(shards / "train"))
    doc = json.load(open(os.path.join(predicted, "cameras.json")))
    assert source.num_frames(source.sequences[0]) == 3
    frame = source.read_frame(source.sequences[0], 0)
    np.testing.assert_allclose(frame.intrinsic, doc["images"][0]["intrinsic"], rtol=0, atol=1e-6)
    assert frame.depth.shape == (100, 40)
