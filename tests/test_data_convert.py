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
from vggt_train.data.shards.convert import EXIT_HOOK_ENV
from vggt_train.data.shards.reader import Co3DSplit
from vggt_train.data.synthetic import make_synthetic_co3d
from vggt_train.data.shards.verify import verify_dataset

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
    # The stale temp file of one of this run's shards was removed, so the result is exactly the single run's.
    assert data_files(out) == data_files(single)


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


def _flip_byte(path, keep_mtime=False):
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_resume_rehashes_a_changed_finished_shard(raw, single, tmp_path, capsys):
    out = tmp_path / "flipped"
    shutil.copytree(single, out)  # copy2 keeps mtimes: every shard still counts as finished
    shard = out / "train" / "data-00001-of-00004.arrow"
    untouched = os.stat(out / "train" / "data-00000-of-00004.arrow")
    _flip_byte(shard)  # same size, new mtime -> re-hashed on resume, found changed, rewritten
    convert(raw, out, "--shard-size-mb", "0.05")
    assert data_files(out) == data_files(single)
    assert os.stat(out / "train" / "data-00000-of-00004.arrow").st_mtime_ns == untouched.st_mtime_ns  # not rewritten

    # Same size and mtime (bit rot, or a deliberate `touch -r`): trusted without reading it, which keeps a resume
    # O(shards); the manifest keeps the true sha256, so verify-dataset reports it, and --rehash-finished rewrites it.
    _flip_byte(shard, keep_mtime=True)
    convert(raw, out, "--shard-size-mb", "0.05")
    assert data_files(out) != data_files(single)
    capsys.readouterr()
    assert cli_main(["verify-dataset", str(out), "--no-decode"]) == 1
    assert "data-00001-of-00004.arrow: sha256" in capsys.readouterr().out
    convert(raw, out, "--shard-size-mb", "0.05", "--rehash-finished")
    assert data_files(out) == data_files(single)


def test_verify_warns_about_stray_files(single, tmp_path, capsys):
    out = tmp_path / "stray"
    shutil.copytree(single, out)
    (out / "train" / "data-00001-of-00004.arrow.tmp-4242").write_bytes(b"partial")
    (out / "manifest.json.tmp-4242").write_bytes(b"{")
    (out / "notes.txt").write_text("the user's own file at the top is not ours to judge")
    capsys.readouterr()
    assert cli_main(["verify-dataset", str(out), "--no-decode"]) == 0
    text = capsys.readouterr().out
    assert "WARNING train/data-00001-of-00004.arrow.tmp-4242: stray file" in text
    assert "WARNING manifest.json.tmp-4242: stray file" in text and "notes.txt" not in text
    assert "2 stray file(s)" in text.splitlines()[-1]


@pytest.mark.parametrize("damage", ["state_missing", "index_missing", "manifest_invalid", "manifest_wrong_shape"])
def test_verify_reports_missing_or_invalid_metadata(single, tmp_path, capsys, damage):
    out = tmp_path / "meta"
    shutil.copytree(single, out)
    if damage == "state_missing":
        os.remove(out / "train" / "state.json")
        expect = "ERROR train/state.json: missing"
    elif damage == "index_missing":
        os.remove(out / "test" / "sequence_index.json")
        expect = "ERROR test/sequence_index.json: missing"
    elif damage == "manifest_invalid":
        (out / "manifest.json").write_text('{"splits": ')
        expect = "ERROR manifest.json: not readable JSON"
    else:
        (out / "manifest.json").write_text('{"splits": {"train": {"shards": 3}}}')
        expect = "ERROR manifest.json: lacks the expected"
    capsys.readouterr()
    assert cli_main(["verify-dataset", str(out), "--no-decode"]) == 1
    text = capsys.readouterr().out
    assert expect in text and "problem(s)" in text


def test_damaged_part_manifest_or_plan_is_a_one_line_error(raw, single, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(single, out)
    manifest = next((out / "_convert").glob("manifest-part-*.json"))
    for content in ('{"fingerprint": "x", "shards": ', '{"shards": {"train/a.arrow": {"bytes": "12"}}}'):
        manifest.write_text(content)
        for argv in (None, ["merge-shards", str(out)]):
            capsys.readouterr()
            if argv is None:
                convert(raw, out, "--shard-size-mb", "0.05", expect=2)
            else:
                assert cli_main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and str(manifest) in err and "part manifest" in err, err
    plan = out / "_convert" / "plan.json"
    plan.write_text("[1, 2")
    capsys.readouterr()
    convert(raw, out, "--shard-size-mb", "0.05", expect=2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plan) in err and "not valid JSON" in err
    # merge-shards with a part directory whose plan is damaged
    assert cli_main(["merge-shards", str(tmp_path / "dest"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plan) in err


def test_out_under_a_file_is_a_one_line_error(raw, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    convert(raw, blocker / "out", expect=2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "not a directory" in err
    assert cli_main(["make-synthetic-co3d", "--out", str(blocker / "syn"), "--frames", "2", "--sequences", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "not a directory" in err


def test_cli_turns_os_errors_into_one_line(monkeypatch, tmp_path, capsys):
    from vggt_train.data.shards import verify_cli

    def fail(*_a, **_k):
        raise PermissionError(13, "Permission denied", "/data/co3d_hf/train/data-00000-of-00001.arrow")

    monkeypatch.setattr(verify_cli, "verify_dataset", fail)
    monkeypatch.delenv("VGGT_TRAIN_DEBUG", raising=False)
    assert cli_main(["verify-dataset", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vggt-train verify-dataset: error: Permission denied: /data/co3d_hf/train/data-00000-of-00001.arrow")
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("VGGT_TRAIN_DEBUG", "1")  # for bug reports: the real traceback
    with pytest.raises(PermissionError):
        cli_main(["verify-dataset", str(tmp_path)])
    # Anything else is a bug and keeps its traceback.
    monkeypatch.delenv("VGGT_TRAIN_DEBUG")
    monkeypatch.setattr(verify_cli, "verify_dataset", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli_main(["verify-dataset", str(tmp_path)])


def test_unexpected_worker_error_names_the_sequence(raw, tmp_path, monkeypatch, capsys):
    from vggt_train.data.sources import co3d

    real = co3d.load_frame

    def buggy(co3d_dir, entry, *args, **kwargs):
        if entry["filepath"].endswith("frame000005.jpg"):
            raise KeyError("simulated bug")
        return real(co3d_dir, entry, *args, **kwargs)

    monkeypatch.setattr(co3d, "load_frame", buggy)
    monkeypatch.delenv("VGGT_TRAIN_DEBUG", raising=False)
    convert(raw, tmp_path / "out", "--workers", "1", "--splits", "test", "--categories", "apple", expect=2)
    err = capsys.readouterr().err.strip()
    seq = sorted(annotations(raw, "apple", "test"))[0]
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"test sequence apple/{seq}" in err and f"apple/{seq}/images/frame000005.jpg" in err and "KeyError" in err
    assert not list((tmp_path / "out" / "test").glob("*.tmp-*"))


def test_progress_lines_when_stderr_is_not_a_terminal(raw, tmp_path, monkeypatch, capsys):
    from vggt_train.data.shards.progress import PROGRESS_INTERVAL_ENV

    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "0")  # a line per finished sequence instead of every 30 s
    argv = ["convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir", raw["annotation_dir"],
            "--splits", "test", "--workers", "1"]
    assert cli_main(argv + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err  # capsys' stderr is not a TTY, like a Slurm log
    lines = [x for x in err.splitlines() if x.startswith("convert-co3d:")]
    assert lines[0] == "convert-co3d: 48 frames to convert"
    assert len(lines) == 3 and lines[-1].startswith("convert-co3d: 48/48 frames (100.0%), ")
    assert "frames/s" in lines[1] and "ETA" in lines[1] and "\r" not in err
    assert cli_main(argv + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
