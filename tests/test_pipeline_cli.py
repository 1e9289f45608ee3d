"""`vggt-train inspect-batch`: PNG grid and PLY files from a converted (or raw) dataset; clear errors."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline_data import tiny_dataset
from vggt_train.cli import main as cli_main


def _ply_points(path):
    raw = open(path, "rb").read()
    head, body = raw.split(b"end_header\n", 1)
    n = int(head.split(b"element vertex ")[1].split(b"\n")[0])
    v = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    assert len(v) == n
    return v


def test_inspect_batch_writes_grid_and_point_clouds(tmp_path_factory, tmp_path, capsys):
    data = tiny_dataset(tmp_path_factory.getbasetemp())
    out = tmp_path / "inspect"
    rc = cli_main(["inspect-batch", data["root"], "--img-size", "56", "--num-images", "3", "--samples", "2",
                   "--aspect", "0.75", "--out", str(out), "--max-points", "1000"])
    assert rc == 0
    grid = Image.open(out / "batch_step0.png")
    assert grid.size[0] == 3 * 56 + 8 and grid.size[1] > 2 * 3 * 42  # image | depth | mask, one row per view
    for b in range(2):
        v = _ply_points(out / f"batch_step0_sample{b}.ply")
        assert 100 < len(v) <= 1000 and np.isfinite(v["xyz"]).all()
        assert 0.2 < np.linalg.norm(v["xyz"], axis=1).mean() < 5  # normalised: mean distance about 1
    printed = capsys.readouterr().out
    assert "B=2 samples x S=3 views, 42x56" in printed and "wrote" in printed


def test_inspect_batch_raw_mode_and_errors(tmp_path_factory, tmp_path, capsys):
    data = tiny_dataset(tmp_path_factory.getbasetemp())
    rc = cli_main(["inspect-batch", data["co3d_dir"], "--raw", "--annotation-dir", data["annotation_dir"], "--img-size", "28",
                   "--num-images", "2", "--samples", "1", "--out", str(tmp_path / "raw"), "--no-augment"])
    assert rc == 0 and (tmp_path / "raw" / "batch_step0_sample0.ply").exists()
    assert cli_main(["inspect-batch", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no converted split" in capsys.readouterr().err
    assert cli_main(["inspect-batch", data["root"], "--img-size", "50"]) == 2
    assert "multiple of --patch-size" in capsys.readouterr().err
    assert cli_main(["inspect-batch", data["co3d_dir"], "--raw"]) == 2
    assert "--annotation-dir" in capsys.readouterr().err
