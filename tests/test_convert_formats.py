"""convert-colmap and convert-vkitti2 end to end: rows equal the source readers', --max-side, determinism, resume,
bad input (skipped and reported, or --strict), --help, and the sample pipeline reading the result."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_data import reprojection_errors
from vggt_train.cli import main as cli_main
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.shards.convert import EXIT_HOOK_ENV
from vggt_train.data.sources import colmap
from vggt_train.data.sources import vkitti2 as vk
from vggt_train.data.sources.colmap_model import Camera, read_model, write_model
from vggt_train.data.synthetic_colmap import make_synthetic_colmap
from vggt_train.data.synthetic_vkitti2 import make_synthetic_vkitti2
from vggt_train.geometry import depth_to_world_points

COLMAP_HW, VK_HW = (24, 32), (20, 60)
TINY_SHARDS = ("--shard-size-mb", "0.01")  # below one sequence: every sequence gets its own shard
REPO = str(Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------------------------- helpers
def run_cli(*argv, expect=0):
    rc = cli_main([*map(str, argv), "--quiet"])
    assert rc == expect


def convert_colmap(src, out, *extra, expect=0):
    run_cli("convert-colmap", "--input", src, "--out", out, *extra, expect=expect)
    return str(out)


def convert_vkitti2(src, out, *extra, expect=0):
    run_cli("convert-vkitti2", "--vkitti-dir", src, "--out", out, "--min-frames", "2", *extra, expect=expect)
    return str(out)


def arrow_rows(out, split="train") -> dict:
    """{sequence: [row dicts in stored order]} of every shard of a split, read with pyarrow only."""
    import pyarrow as pa

    seqs: dict = {}
    for path in sorted(glob.glob(os.path.join(out, split, "data-*.arrow"))):
        with pa.memory_map(path) as src:
            for row in pa.ipc.open_stream(src).read_all().to_pylist():
                seqs.setdefault(row["sequence"], []).append(row)
    return seqs


def stored_depth(row) -> np.ndarray:
    return np.frombuffer(row["depth"], "<f2").reshape(row["height"], row["width"])


def data_files(root) -> dict:
    """{relpath: bytes} of a finished dataset (the _convert work dir excluded)."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != "_convert"]
        for f in files:
            out[os.path.relpath(os.path.join(d, f), root)] = Path(d, f).read_bytes()
    return out


def report(out) -> dict:
    return json.loads(Path(out, "report.json").read_text())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def assert_safe_filepath(fp: str) -> None:
    assert fp and not os.path.isabs(fp) and not fp.startswith("/") and ".." not in fp.split("/") and "\\" not in fp


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def colmap_raw(tmp_path_factory):
    # the folder's name ("garden") becomes the category of every workspace
    return make_synthetic_colmap(str(tmp_path_factory.mktemp("colmap") / "garden"), workspaces=3, frames=4,
                                 size=COLMAP_HW, seed=5)


@pytest.fixture(scope="module")
def colmap_out(colmap_raw, tmp_path_factory):
    return convert_colmap(colmap_raw["root"], tmp_path_factory.mktemp("colmap_out") / "out", *TINY_SHARDS, "--workers", "1")


@pytest.fixture(scope="module")
def vk_raw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vkitti2") / "vk")
    return make_synthetic_vkitti2(out, scenes=("Scene01", "Scene02"), variations=("clone",), cameras=(0, 1), frames=3,
                                  size=VK_HW, seed=2)


@pytest.fixture(scope="module")
def vk_out(vk_raw, tmp_path_factory):
    return convert_vkitti2(vk_raw["root"], tmp_path_factory.mktemp("vk_out") / "out", *TINY_SHARDS, "--workers", "1")


@pytest.fixture
def colmap_copy(colmap_raw, tmp_path):
    """A private copy of the COLMAP input that a test may damage."""
    dst = tmp_path / "garden"
    shutil.copytree(colmap_raw["root"], dst)
    return dst


# ----------------------------------------------------------------------------------------------- COLMAP
def test_colmap_rows_equal_the_reader(colmap_raw, colmap_out, capsys):
    assert cli_main(["verify-dataset", colmap_out]) == 0
    assert "OK" in capsys.readouterr().out
    root = colmap_raw["root"]
    seqs = arrow_rows(colmap_out)
    assert sorted(seqs) == [name for name, _ in colmap_raw["workspaces"]]
    assert len(glob.glob(os.path.join(colmap_out, "train", "data-*.arrow"))) == 3
    for name, workspace in colmap_raw["workspaces"]:
        frames = colmap.read_workspace(root, workspace)
        rows = seqs[name]
        assert len(rows) == len(frames) == 4
        for i, (row, fr) in enumerate(zip(rows, frames)):
            assert row["category"] == "garden" and row["frame"] == i  # position in name order
            assert row["filepath"] == fr.filepath == f"{name}/images/frame{i + 1:04d}.jpg"
            assert_safe_filepath(row["filepath"])
            np.testing.assert_array_equal(np.array(row["extrinsic"]), fr.extrinsic)  # exact
            np.testing.assert_array_equal(np.array(row["intrinsic"]), fr.intrinsic)
            assert (row["height"], row["width"]) == (row["original_height"], row["original_width"]) == COLMAP_HW
            assert row["image"]["bytes"] == Path(fr.image_path).read_bytes()  # the original JPEG, not re-encoded
            ref = colmap.read_depth(fr)
            assert fr.depth_kind == "colmap" and (ref > 0).mean() > 0.3
            np.testing.assert_array_equal(stored_depth(row), ref.astype(np.float16))
    # and the reader's cameras are the rendering's (the synthetic truth), so the rows are too
    truth = colmap_raw["frames"]["scene_001"][2]
    row = seqs["scene_001"][2]
    np.testing.assert_allclose(np.array(row["extrinsic"]), truth["extrinsic"], atol=1e-12)
    np.testing.assert_allclose(np.array(row["intrinsic"]), truth["intrinsic"], atol=1e-12)


def test_colmap_max_side_reencodes_and_scales_intrinsics(colmap_raw, colmap_out, tmp_path):
    out = convert_colmap(colmap_raw["root"], tmp_path / "small", "--max-side", "16", "--workers", "1")
    small, full = arrow_rows(out), arrow_rows(colmap_out)
    h, w = 12, 16  # 24x32 scaled so the longer side is 16: s = 0.5 on both axes
    for name in full:
        for a, b in zip(small[name], full[name]):
            assert (a["height"], a["width"]) == (h, w) and (a["original_height"], a["original_width"]) == COLMAP_HW
            assert a["image"]["bytes"][:2] == b"\xff\xd8" and a["image"]["bytes"] != b["image"]["bytes"]
            img = Image.open(Path(colmap_raw["root"], b["filepath"]))
            got = Image.open(io.BytesIO(a["image"]["bytes"]))
            assert got.size == (w, h)
            want = img.convert("RGB").resize((w, h), Image.LANCZOS)
            # the same picture, scaled (the tiny JPEG's noise aside): a one-pixel shift correlates far less
            corr = np.corrcoef(np.asarray(got.convert("L"), float).ravel(), np.asarray(want.convert("L"), float).ravel())
            assert corr[0, 1] > 0.85
            k0, k1 = np.array(b["intrinsic"]), np.array(a["intrinsic"])
            # pixel centres map as u' + 0.5 = (u + 0.5) * s
            np.testing.assert_allclose([k1[0, 0], k1[1, 1]], [k0[0, 0] * 0.5, k0[1, 1] * 0.5], rtol=1e-12)
            np.testing.assert_allclose([k1[0, 2], k1[1, 2]], [(k0[0, 2] + 0.5) * 0.5 - 0.5, (k0[1, 2] + 0.5) * 0.5 - 0.5],
                                       rtol=1e-12)
            assert a["extrinsic"] == b["extrinsic"] and a["filepath"] == b["filepath"]
            # nearest-neighbour depth: each output pixel is the input pixel its centre falls in
            np.testing.assert_array_equal(stored_depth(a), stored_depth(b)[1::2, 1::2])


def test_colmap_rerun_with_two_workers_is_byte_identical(colmap_raw, colmap_out, tmp_path):
    other = convert_colmap(colmap_raw["root"], tmp_path / "w2", *TINY_SHARDS, "--workers", "2")
    files = data_files(other)
    assert any(f.endswith(".arrow") for f in files) and files == data_files(colmap_out)


def test_colmap_resume_after_kill_reuses_finished_shards(colmap_raw, colmap_out, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vggt_train", "convert-colmap", "--input", colmap_raw["root"], "--out", str(out),
           *TINY_SHARDS, "--workers", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env={**env, EXIT_HOOK_ENV: "1"}, capture_output=True, text=True)
    assert proc.returncode == 75, proc.stderr
    assert not (out / "report.json").exists()  # not finished
    done = sorted(json.loads(next((out / "_convert").glob("manifest-part-*.json")).read_text())["shards"])
    assert len(done) == 1
    before = os.stat(out / done[0])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = os.stat(out / done[0])
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # reused, not rewritten
    assert data_files(out) == data_files(colmap_out)


def test_colmap_corrupt_image_is_skipped_and_reported(colmap_copy, tmp_path, capsys):
    bad = colmap_copy / "scene_001" / "images" / "frame0002.jpg"
    bad.write_bytes(b"not a jpeg at all")
    out = convert_colmap(colmap_copy, tmp_path / "out", "--workers", "1")
    rows = arrow_rows(out)
    assert [r["filepath"] for r in rows["scene_001"]] == [f"scene_001/images/frame000{i}.jpg" for i in (1, 3, 4)]
    assert len(rows["scene_000"]) == len(rows["scene_002"]) == 4
    (rec,) = report(out)["skipped"]
    assert rec["reason"] == "corrupt_image" and rec["path"] == str(bad) and rec["sequence"] == "scene_001"
    assert report(out)["skipped_by_reason"] == {"corrupt_image": 1}
    capsys.readouterr()
    convert_colmap(colmap_copy, tmp_path / "strict", "--strict", "--workers", "1", expect=2)
    err = one_line_error(capsys)
    assert str(bad) in err and "corrupt_image" in err and "--strict" in err


def _rewrite_model(workspace: Path, edit) -> None:
    sparse = workspace / "sparse" / "0"
    model = read_model(str(sparse), points=True)
    edit(model)
    write_model(model, str(sparse), binary=True)


def test_colmap_distorted_camera_refuses_the_sequence(colmap_copy, tmp_path, capsys):
    def distort(model):
        cam = model.cameras[1]
        fx, fy, cx, cy = cam.params
        model.cameras[1] = Camera(1, "OPENCV", cam.width, cam.height, (fx, fy, cx, cy, 0.01, 0.0, 0.0, 0.0))

    _rewrite_model(colmap_copy / "scene_000", distort)
    out = convert_colmap(colmap_copy, tmp_path / "out", "--workers", "1")
    assert sorted(arrow_rows(out)) == ["scene_001", "scene_002"]
    (rec,) = report(out)["skipped"]
    assert rec["reason"] == "distorted_camera" and rec["sequence"] == "scene_000" and rec["frame"] is None
    assert rec["path"] == str(colmap_copy / "scene_000" / "sparse" / "0" / "cameras.bin")
    assert "image_undistorter" in rec["detail"]
    capsys.readouterr()
    convert_colmap(colmap_copy, tmp_path / "strict", "--strict", "--workers", "1", expect=2)
    err = one_line_error(capsys)
    assert "cameras.bin" in err and "distorted_camera" in err and "OPENCV" in err


def test_colmap_image_name_escaping_the_workspace_is_refused(colmap_copy, tmp_path, capsys):
    shutil.copy(colmap_copy / "scene_002" / "images" / "frame0001.jpg", colmap_copy / "scene_002" / "outside.jpg")

    def escape(model):
        image = next(im for im in model.images.values() if im.name == "frame0001.jpg")
        image.name = "../outside.jpg"

    _rewrite_model(colmap_copy / "scene_002", escape)
    out = convert_colmap(colmap_copy, tmp_path / "out", "--workers", "1")
    rows = arrow_rows(out)
    assert sorted(rows) == ["scene_000", "scene_001"]
    for seq in rows.values():
        for row in seq:
            assert_safe_filepath(row["filepath"])
    (rec,) = report(out)["skipped"]
    assert rec["reason"] == "unsafe_path" and rec["sequence"] == "scene_002" and rec["path"].endswith("images.bin")
    capsys.readouterr()
    convert_colmap(colmap_copy, tmp_path / "strict", "--strict", "--workers", "1", expect=2)
    assert "unsafe_path" in one_line_error(capsys)


def test_colmap_missing_depth_dir(colmap_copy, tmp_path, capsys):
    # one workspace has the folder (with .npy maps), the others do not: those are refused, named in the report
    ws = colmap_copy / "scene_001"
    frames = colmap.read_workspace(str(colmap_copy), str(ws))
    (ws / "mono").mkdir()
    for fr in frames:
        depth = np.full(COLMAP_HW, 2.5, np.float32)
        depth[0, :5] = -1  # invalid
        np.save(ws / "mono" / (Path(fr.image_path).stem + ".npy"), depth)
    out = convert_colmap(colmap_copy, tmp_path / "out", "--depth-dir", "mono", "--workers", "1")
    rows = arrow_rows(out)
    assert sorted(rows) == ["scene_001"]
    d = stored_depth(rows["scene_001"][0])
    assert (d[0, :5] == 0).all() and (d[1:] == np.float16(2.5)).all()
    recs = report(out)["skipped"]
    assert sorted(r["sequence"] for r in recs) == ["scene_000", "scene_002"]
    assert {r["reason"] for r in recs} == {"missing_depth_dir"}
    assert recs[0]["path"] == str(colmap_copy / "scene_000" / "mono")
    capsys.readouterr()
    convert_colmap(colmap_copy, tmp_path / "strict", "--depth-dir", "mono", "--strict", "--workers", "1", expect=2)
    err = one_line_error(capsys)
    assert "missing_depth_dir" in err and "mono" in err
    # a folder that no workspace has (a typo) is an error, not an empty dataset
    convert_colmap(colmap_copy, tmp_path / "typo", "--depth-dir", "mnoo", "--workers", "1", expect=2)
    err = one_line_error(capsys)
    assert "--depth-dir 'mnoo'" in err and str(colmap_copy / "scene_000" / "mnoo") in err
    assert not (tmp_path / "typo" / "train").exists()


def test_colmap_single_workspace_as_input(colmap_raw, tmp_path):
    name, workspace = colmap_raw["workspaces"][0]
    out = convert_colmap(workspace, tmp_path / "out", "--workers", "1", "--name", "mine")
    rows = arrow_rows(out)[name]
    assert [r["filepath"] for r in rows] == [f"images/frame000{i}.jpg" for i in range(1, 5)]
    assert {r["category"] for r in rows} == {"mine"}


def test_colmap_without_dense_depth_stores_camera_only_rows(tmp_path):
    raw = make_synthetic_colmap(str(tmp_path / "sparse_only"), workspaces=1, frames=3, size=COLMAP_HW, seed=1,
                                binary=False, dense_depth=False)
    out = convert_colmap(raw["root"], tmp_path / "out", "--workers", "1")
    (name, workspace), = raw["workspaces"]
    rows = arrow_rows(out)[name]
    frames = colmap.read_workspace(raw["root"], workspace)
    assert len(rows) == len(frames) == 3
    for row, fr in zip(rows, frames):
        assert row["depth"] == b"" and (row["height"], row["width"]) == COLMAP_HW
        assert row["image"]["bytes"] == Path(fr.image_path).read_bytes()
        np.testing.assert_array_equal(np.array(row["extrinsic"]), fr.extrinsic)
        np.testing.assert_array_equal(np.array(row["intrinsic"]), fr.intrinsic)
    assert report(out)["skipped"] == []


def _source_baseline(frames, a, b):
    """Reprojection errors of view a's depth into view b computed from the source reader alone (no shards)."""
    D = torch.tensor(np.stack([colmap.read_depth(frames[i]).astype(np.float64) for i in (a, b)]))
    E = torch.tensor(np.stack([frames[i].extrinsic for i in (a, b)]))
    K = torch.tensor(np.stack([frames[i].intrinsic for i in (a, b)]))
    world = depth_to_world_points(D, E, K)
    return reprojection_errors(world[0], D[0] > 0, E[1], K[1], D[1])


def test_colmap_samples_reproject(tmp_path):
    # a denser orbit than colmap_raw's, so that neighbouring views overlap
    raw = make_synthetic_colmap(str(tmp_path / "orbit"), workspaces=1, frames=16, size=(36, 48), seed=5)
    out = convert_colmap(raw["root"], tmp_path / "out", "--workers", "1")
    (name, workspace), = raw["workspaces"]
    frames = colmap.read_workspace(raw["root"], workspace)
    ds = MultiViewDataset(out, "train", img_size=56, augment=False)
    for a in (0, 9):
        s = ds.get_sample(name, [a, a + 1], aspect_ratio=1.0)
        assert s["replaced"] == [] and s["images"].shape[0] == 2 and s["point_masks"].float().mean() > 0.3
        world = depth_to_world_points(s["depths"].double(), s["extrinsics"].double(), s["intrinsics"].double())
        torch.testing.assert_close(s["world_points"].double(), world, atol=1e-4, rtol=1e-5)
        err = reprojection_errors(s["world_points"][0], s["point_masks"][0], s["extrinsics"][1], s["intrinsics"][1],
                                  s["depths"][1])
        base = _source_baseline(frames, a, a + 1)
        assert len(err) > 500
        # as consistent as the source's own depth and cameras (the resampling to 56 pixels aside)
        assert np.median(err) < 2 * np.median(base) + 0.002 and (err < 0.05).mean() > 0.7, (np.median(err), np.median(base))


# ----------------------------------------------------------------------------------------------- Virtual KITTI 2
def test_vkitti2_rows_equal_the_reader(vk_raw, vk_out, capsys):
    assert cli_main(["verify-dataset", vk_out]) == 0
    assert "OK" in capsys.readouterr().out
    root = vk_raw["root"]
    seqs = arrow_rows(vk_out)
    expected = vk.list_sequences(root)
    assert sorted(seqs) == sorted(name for name, *_ in expected) and len(expected) == 4
    for name, scene, variation, camera in expected:
        frames = vk.read_sequence(root, scene, variation, camera)
        rows = seqs[name]
        assert [r["frame"] for r in rows] == [f.frame for f in frames] == [0, 1, 2]
        for row, fr in zip(rows, frames):
            assert row["category"] == scene
            assert row["filepath"] == fr.filepath == f"{scene}/{variation}/frames/rgb/Camera_{camera}/rgb_{fr.frame:05d}.jpg"
            assert_safe_filepath(row["filepath"])
            np.testing.assert_array_equal(np.array(row["extrinsic"]), fr.extrinsic)
            np.testing.assert_array_equal(np.array(row["intrinsic"]), fr.intrinsic)
            assert (row["height"], row["width"]) == VK_HW
            assert row["image"]["bytes"] == Path(fr.image_path).read_bytes()
            ref = vk.read_depth(fr)
            np.testing.assert_array_equal(stored_depth(row), ref.astype(np.float16))
            # the official rule, independently: cm / 100, sky (65535) and > 80 m invalid
            raw = np.asarray(Image.open(fr.depth_path)).astype(np.float64)
            want = np.where((raw == 65535) | (raw / 100 > 80), 0, raw / 100).astype(np.float16)
            np.testing.assert_array_equal(stored_depth(row), want)
            assert (want == 0).any() and (want > 0).mean() > 0.3


def test_vkitti2_max_side(vk_raw, vk_out, tmp_path):
    out = convert_vkitti2(vk_raw["root"], tmp_path / "small", "--max-side", "30", "--workers", "1")
    small, full = arrow_rows(out), arrow_rows(vk_out)
    for name in full:
        for a, b in zip(small[name], full[name]):
            assert (a["height"], a["width"]) == (10, 30) and (a["original_height"], a["original_width"]) == VK_HW
            assert a["image"]["bytes"][:2] == b"\xff\xd8"
            assert Image.open(io.BytesIO(a["image"]["bytes"])).size == (30, 10)
            k0, k1 = np.array(b["intrinsic"]), np.array(a["intrinsic"])
            np.testing.assert_allclose(k1[:2, :2], k0[:2, :2] * 0.5, rtol=1e-12)
            np.testing.assert_allclose(k1[:2, 2], (k0[:2, 2] + 0.5) * 0.5 - 0.5, rtol=1e-12)
            np.testing.assert_array_equal(stored_depth(a), stored_depth(b)[1::2, 1::2])


def test_vkitti2_rerun_is_byte_identical_and_resumes(vk_raw, vk_out, tmp_path, capsys):
    out = tmp_path / "again"
    convert_vkitti2(vk_raw["root"], out, *TINY_SHARDS, "--workers", "1")
    assert data_files(out) == data_files(vk_out)
    # a lost shard is rewritten on a rerun into the same OUT; the others are reused untouched
    shards = sorted(glob.glob(str(out / "train" / "data-*.arrow")))
    assert len(shards) == 4
    os.remove(shards[2])
    stats = {p: os.stat(p) for p in shards if p != shards[2]}
    assert cli_main(["convert-vkitti2", "--vkitti-dir", vk_raw["root"], "--out", str(out), "--min-frames", "2",
                     *TINY_SHARDS, "--workers", "1"]) == 0
    assert "1 shards written, 3 reused" in capsys.readouterr().out
    for p, st in stats.items():
        assert (os.stat(p).st_ino, os.stat(p).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert data_files(out) == data_files(vk_out)


def test_vkitti2_unknown_scene_lists_the_available(vk_raw, tmp_path, capsys):
    convert_vkitti2(vk_raw["root"], tmp_path / "out", "--scenes", "Scene01,Scene09", expect=2)
    err = one_line_error(capsys)
    assert "Scene09" in err and "available: Scene01, Scene02" in err


def test_vkitti2_bad_extrinsic_row_refuses_its_sequence(vk_raw, tmp_path, capsys):
    src = tmp_path / "vk"
    shutil.copytree(vk_raw["root"], src)
    ext = src / "Scene02" / "clone" / "extrinsic.txt"
    lines = ext.read_text().splitlines()
    assert lines[1].startswith("0 0 ")  # frame 0, camera 0
    lines[1] = "0 0 2 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"  # not a rotation
    ext.write_text("\n".join(lines) + "\n")
    out = convert_vkitti2(src, tmp_path / "out", "--workers", "1")
    assert sorted(arrow_rows(out)) == ["Scene01_clone_Camera_0", "Scene01_clone_Camera_1", "Scene02_clone_Camera_1"]
    (rec,) = report(out)["skipped"]
    assert rec["reason"] == "bad_camera" and rec["sequence"] == "Scene02_clone_Camera_0" and str(ext) in rec["path"]
    capsys.readouterr()
    convert_vkitti2(src, tmp_path / "strict", "--strict", expect=2)
    err = one_line_error(capsys)
    assert "bad_camera" in err and "extrinsic.txt" in err


def test_vkitti2_samples_reproject(vk_out):
    ds = MultiViewDataset(vk_out, "train", img_size=56, augment=False)
    s = ds.get_sample("Scene01_clone_Camera_0", [0, 1], aspect_ratio=0.5)
    assert s["replaced"] == [] and s["point_masks"].any()
    err = reprojection_errors(s["world_points"][0], s["point_masks"][0], s["extrinsics"][1], s["intrinsics"][1],
                              s["depths"][1])
    assert len(err) > 100
    assert np.median(err) < 0.02 and (err < 0.05).mean() > 0.6, (np.median(err), (err < 0.05).mean())


# ----------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("command, flags", [
    ("convert-colmap", ("--input", "--name", "--split", "--depth-dir")),
    ("convert-vkitti2", ("--vkitti-dir", "--scenes", "--variations", "--cameras", "--split")),
])
def test_help_lists_the_flags(command, flags, capsys):
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    text = capsys.readouterr().out
    for flag in (*flags, "--out", "--min-frames", "--max-side", "--shard-size-mb", "--workers", "--part", "--strict",
                 "--quiet", "verify-dataset"):
        assert flag in text, flag
