"""convert-co3d round trip, --max-side, determinism, resume after a kill, --part + merge-shards, verify-dataset."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vggt_train.cli import main as cli_main
from vggt_train.data import decode_depth
from vggt_train.data.convert import EXIT_HOOK_ENV
from vggt_train.data.reader import Co3DSplit
from vggt_train.data.synthetic import make_synthetic_co3d
from vggt_train.data.verify import verify_dataset

HW = (32, 48)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return make_synthetic_co3d(str(root), ["apple", "tv"], sequences=2, test_sequences=1, frames=24, hw=HW, seed=1)


def convert(raw, out, *extra, expect=0):
    rc = cli_main(["convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir", raw["annotation_dir"],
                   "--out", str(out), "--quiet", *extra])
    assert rc == expect
    return str(out)


def annotations(raw, category, split):
    with gzip.open(os.path.join(raw["annotation_dir"], f"{category}_{split}.jgz")) as f:
        return json.loads(f.read())


def reference_depth(raw, filepath):
    """The official preprocessing, written independently of the converter: mask, then cut above the 98th pct."""
    img = os.path.join(raw["co3d_dir"], filepath)
    d = np.asarray(Image.open(img.replace("/images", "/depths") + ".geometric.png")).astype(np.uint16).view(np.float16)
    d = d.astype(np.float32)
    d[~np.isfinite(d)] = 0
    d[np.asarray(Image.open(img.replace("/images", "/depth_masks").replace(".jpg", ".png"))) <= 128] = 0
    d = d.astype(float)
    thr = np.nanpercentile(d, 98)
    if thr > 0:
        d[d > thr] = 0
    return d


def data_files(root):
    """{relpath: bytes} of everything a finished dataset consists of (the _convert work dir excluded)."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != "_convert"]
        for f in files:
            out[os.path.relpath(os.path.join(d, f), root)] = open(os.path.join(d, f), "rb").read()
    return out


@pytest.fixture(scope="module")
def single(raw, tmp_path_factory):
    # Tiny shards: every sequence gets its own, so parts, resume and merging have several shards to work on.
    return convert(raw, tmp_path_factory.mktemp("single") / "out", "--shard-size-mb", "0.05", "--workers", "1")


def test_round_trip_every_frame(raw, single):
    import datasets

    dd = datasets.load_from_disk(single)
    assert set(dd) == {"train", "test"}
    for split in ("train", "test"):
        sp = Co3DSplit(os.path.join(single, split))
        expected = {(c, s): fr for c in ("apple", "tv") for s, fr in annotations(raw, c, split).items()}
        assert sorted(sp.sequences) == sorted(s for _c, s in expected)
        assert len(sp) == sum(len(f) for f in expected.values())
        for (category, seq), entries in expected.items():
            assert sp.category(seq) == category and sp.num_frames(seq) == len(entries)
            got = sp.get_frames(seq, decode_images=False)
            assert got["frames"].tolist() == list(range(len(entries)))
            np.testing.assert_array_equal(got["extrinsics"], np.array([e["extri"] for e in entries]))  # exact
            np.testing.assert_array_equal(got["intrinsics"], np.array([e["intri"] for e in entries]))
            for i, e in enumerate(entries):
                jpeg = open(os.path.join(raw["co3d_dir"], e["filepath"]), "rb").read()
                assert got["images"][i] == jpeg  # stored verbatim when not resized
                ref = reference_depth(raw, e["filepath"])
                assert got["depths"][i].dtype == np.float16 and got["depths"][i].shape == HW
                np.testing.assert_array_equal(got["depths"][i].astype(float), ref)  # float16-exact, masked, cut
                assert got["original_sizes"][i].tolist() == list(HW)
    # The masks were really applied: some pixel with a depth value in the PNG is 0 after conversion.
    e = next(iter(annotations(raw, "apple", "train").values()))
    raw_nonzero = sum(int((np.asarray(Image.open(os.path.join(raw["co3d_dir"], x["filepath"]).replace("/images", "/depths")
                                                  + ".geometric.png")) != 0).sum()) for x in e)
    sp = Co3DSplit(os.path.join(single, "train"))
    conv_nonzero = sum(int((d != 0).sum()) for d in sp.get_frames(next(iter(annotations(raw, "apple", "train"))))["depths"])
    assert conv_nonzero < raw_nonzero


def test_decode_depth_in_every_format(single):
    import datasets

    ds = datasets.load_from_disk(os.path.join(single, "train"))
    ref = decode_depth(ds[5])
    assert ref.shape == HW and ref.dtype == np.float16
    np.testing.assert_array_equal(decode_depth(ds.with_format("numpy")[5]), ref)
    tbl = ds.with_format("arrow")[5:6]
    row = {c: tbl.column(c)[0] for c in ("depth", "height", "width")}
    np.testing.assert_array_equal(decode_depth(row), ref)
    assert np.asarray(ds[5]["image"]).shape == (*HW, 3)


def test_max_side_resizes_consistently(raw, tmp_path, single):
    out = convert(raw, tmp_path / "small", "--max-side", "24", "--splits", "test", "--categories", "tv")
    small = Co3DSplit(os.path.join(out, "test"))
    full = Co3DSplit(os.path.join(single, "test"))
    seq = small.sequences[0]
    a, b = small.get_frames(seq), full.get_frames(seq)
    h, w = 16, 24  # 32x48 scaled so the longer side is 24
    assert a["images"][0].shape == (h, w, 3) and a["depths"][0].shape == (h, w)
    assert a["original_sizes"][0].tolist() == list(HW)
    k0, k1 = b["intrinsics"][0], a["intrinsics"][0]
    # Pixel centres map as u' + 0.5 = (u + 0.5) * s, for s = 0.5 on both axes.
    assert k1[0, 0] == pytest.approx(k0[0, 0] * 0.5) and k1[1, 1] == pytest.approx(k0[1, 1] * 0.5)
    assert k1[0, 2] == pytest.approx((k0[0, 2] + 0.5) * 0.5 - 0.5) and k1[1, 2] == pytest.approx((k0[1, 2] + 0.5) * 0.5 - 0.5)
    # Nearest-neighbour depth: each output pixel is the input pixel its centre falls in (2x2 block -> index 2i+1).
    for d_small, d_full in zip(a["depths"], b["depths"]):
        np.testing.assert_array_equal(d_small, d_full[1::2, 1::2])
    np.testing.assert_array_equal(a["extrinsics"], b["extrinsics"])


def test_deterministic_across_workers(raw, single, tmp_path):
    other = convert(raw, tmp_path / "w2", "--shard-size-mb", "0.05", "--workers", "2")
    assert data_files(other) == data_files(single)
    assert verify_dataset(other)["errors"] == []


def test_resume_after_kill(raw, single, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vggt_train", "convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir",
           raw["annotation_dir"], "--out", str(out), "--shard-size-mb", "0.05", "--workers", "1"]
    env = dict(os.environ, **{EXIT_HOOK_ENV: "2"})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 75, proc.stderr
    assert not (out / "manifest.json").exists() and not (out / "train" / "state.json").exists()  # not finished
    manifest = json.loads(next((out / "_convert").glob("manifest-part-*.json")).read_text())
    done = sorted(manifest["shards"])
    assert len(done) == 2
    stats = {rel: os.stat(out / rel) for rel in done}
    # A crash leftover (a partial temp file) and a half-written shard under its final name must not count as done.
    (out / "train" / "data-00002-of-00004.arrow.tmp-123").write_bytes(b"partial")
    (out / "train" / "data-00002-of-00004.arrow").write_bytes(b"half a shard")
    proc = subprocess.run(cmd + ["--quiet"], env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for rel, st in stats.items():  # finished shards were skipped, not rewritten
        assert os.stat(out / rel).st_mtime_ns == st.st_mtime_ns and os.stat(out / rel).st_ino == st.st_ino
    files = data_files(out)
    files.pop("train/data-00002-of-00004.arrow.tmp-123")
    assert files == data_files(single)


def test_parts_then_merge_equal_single_run(raw, single, tmp_path, capsys):
    parts = [convert(raw, tmp_path / f"p{i}", "--shard-size-mb", "0.05", "--part", f"{i}/3") for i in range(3)]
    dest = str(tmp_path / "merged")
    assert cli_main(["merge-shards", dest, parts[0], parts[2]]) == 2  # part 1 missing
    assert "not finished" in capsys.readouterr().err
    assert cli_main(["merge-shards", dest, parts[1]]) == 0
    assert data_files(dest) == data_files(single)
    # Moved, not copied: the part directories no longer hold shard data.
    assert not [f for p in parts for f in data_files(p) if f.endswith(".arrow")]


def test_parts_into_one_shared_dir(raw, single, tmp_path):
    out = tmp_path / "shared"
    for i in (1, 0):
        convert(raw, out, "--shard-size-mb", "0.05", "--part", f"{i}/2")
    assert not (out / "manifest.json").exists()
    assert cli_main(["merge-shards", str(out)]) == 0
    assert data_files(str(out)) == data_files(single)


def test_other_options_into_same_out_is_an_error(raw, single, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(single, out)
    convert(raw, out, "--shard-size-mb", "0.05")  # same options: nothing to do, still fine
    convert(raw, out, "--shard-size-mb", "0.05", "--max-side", "16", expect=2)
    assert "other inputs or options" in capsys.readouterr().err


def test_verify_detects_damage(single, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(single, out)
    assert cli_main(["verify-dataset", str(out)]) == 0
    shard = out / "train" / "data-00001-of-00004.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "test" / "data-00000-of-00002.arrow").write_bytes(b"")  # truncated
    assert cli_main(["verify-dataset", str(out)]) == 1
    err = capsys.readouterr().out
    assert "data-00001-of-00004.arrow: sha256" in err and "test/data-00000-of-00002.arrow: 0 bytes" in err


def test_cli_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["convert-co3d", "--help"])
    text = capsys.readouterr().out
    for opt in ("--co3d-dir", "--annotation-dir", "--out", "--categories", "--splits", "--min-frames", "--max-side",
                "--shard-size-mb", "--workers", "--part", "--strict", "--quiet"):
        assert opt in text
