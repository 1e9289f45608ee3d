"""Bad raw input: by default skipped and reported with path and reason; --strict stops at the first one."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from vggt_train.cli import main as cli_main
from vggt_train.data.shards.reader import Co3DSplit
from vggt_train.data.synthetic import make_synthetic_co3d

FRAMES = 26  # two spare frames above --min-frames 24, so one bad frame skips only that frame


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_synthetic_co3d(str(root), ["apple"], sequences=2, test_sequences=0, frames=FRAMES, hw=(24, 32), seed=2)
    return root


@pytest.fixture
def raw(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "raw")
    return tmp_path / "raw"


def _ann_path(raw, category="apple"):
    return raw / "annotations" / f"{category}_train.jgz"


def _annotation(raw, category="apple"):
    with gzip.open(_ann_path(raw, category)) as f:
        return json.loads(f.read())


def _save_annotation(raw, ann, category="apple"):
    with gzip.open(_ann_path(raw, category), "wb") as f:
        f.write(json.dumps(ann).encode())


def _first(raw, k=3):
    """(sequence name, filepath of frame k) of the first sequence (sorted, as the converter orders them)."""
    ann = _annotation(raw)
    seq = sorted(ann)[0]
    return seq, ann[seq][k]["filepath"]


def _convert(raw, out, *extra):
    return cli_main(["convert-co3d", "--co3d-dir", str(raw / "co3d"), "--annotation-dir", str(raw / "annotations"),
                     "--out", str(out), "--quiet", "--splits", "train", *extra])


def _clone_category(raw, category):
    """A copy of apple as `category`: same sequence names, files under co3d/<category>/, filepaths to match."""
    shutil.copytree(raw / "co3d" / "apple", raw / "co3d" / category)
    ann = _annotation(raw)
    for entries in ann.values():
        for e in entries:
            e["filepath"] = category + e["filepath"][len("apple"):]
    _save_annotation(raw, ann, category)


def _edit_entry(raw, k, fn):
    ann = _annotation(raw)
    seq = sorted(ann)[0]
    fn(ann[seq][k])
    _save_annotation(raw, ann)
    return ann[seq][k]["filepath"] if isinstance(ann[seq][k].get("filepath"), str) else None


def _img(raw, fp):
    return raw / "co3d" / fp


def _depth(raw, fp):
    return raw / "co3d" / (fp.replace("/images", "/depths") + ".geometric.png")


def _mask(raw, fp):
    return raw / "co3d" / fp.replace("/images", "/depth_masks").replace(".jpg", ".png")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def case_truncated_jpeg(raw):
    _, fp = _first(raw)
    _truncate(_img(raw, fp))
    return "corrupt_image", str(_img(raw, fp))


def case_garbage_jpeg(raw):
    _, fp = _first(raw)
    _img(raw, fp).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    return "corrupt_image", str(_img(raw, fp))


def case_not_an_image(raw):
    # no image signature at all: PIL's message names its in-memory stream (and its address)
    _, fp = _first(raw)
    _img(raw, fp).write_bytes(b"plain text, not an image " * 10)
    return "corrupt_image", str(_img(raw, fp))


def case_missing_image(raw):
    _, fp = _first(raw)
    os.remove(_img(raw, fp))
    return "missing_image", str(_img(raw, fp))


def case_truncated_depth(raw):
    _, fp = _first(raw)
    _truncate(_depth(raw, fp), 0.9)
    return "corrupt_depth", str(_depth(raw, fp))


def case_8bit_depth(raw):
    _, fp = _first(raw)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(_depth(raw, fp))
    return "corrupt_depth", str(_depth(raw, fp))


def case_missing_depth(raw):
    _, fp = _first(raw)
    os.remove(_depth(raw, fp))
    return "missing_depth", str(_depth(raw, fp))


def case_missing_mask(raw):
    _, fp = _first(raw)
    os.remove(_mask(raw, fp))
    return "missing_mask", str(_mask(raw, fp))


def case_truncated_mask(raw):
    _, fp = _first(raw)
    _truncate(_mask(raw, fp), 0.6)
    return "corrupt_mask", str(_mask(raw, fp))


def case_size_mismatch(raw):
    _, fp = _first(raw)
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(_depth(raw, fp))
    return "size_mismatch", str(_img(raw, fp))


def case_nonfinite_camera(raw):
    fp = _edit_entry(raw, 3, lambda e: e["extri"][0].__setitem__(3, float("nan")))
    return "bad_camera", fp


def case_singular_intrinsic(raw):
    fp = _edit_entry(raw, 3, lambda e: e["intri"][0].__setitem__(0, 0.0))
    return "bad_camera", fp


def case_singular_rotation(raw):
    fp = _edit_entry(raw, 3, lambda e: e["extri"].__setitem__(0, [0.0, 0.0, 0.0, 1.0]))
    return "bad_camera", fp


def case_absolute_filepath(raw):
    fp = _edit_entry(raw, 3, lambda e: e.__setitem__("filepath", "/etc/apple/x/images/frame000004.jpg"))
    return "unsafe_filepath", fp


def case_dotdot_filepath(raw):
    fp = _edit_entry(raw, 3, lambda e: e.__setitem__("filepath", "apple/../../outside/images/frame000004.jpg"))
    return "unsafe_filepath", fp


def case_entry_without_intri(raw):
    fp = _edit_entry(raw, 3, lambda e: e.pop("intri"))
    return "bad_annotation", fp


def case_nul_in_filepath(raw):
    # open() raises ValueError (not OSError) on a NUL byte; it must be a skipped frame, not an aborted run.
    fp = _edit_entry(raw, 3, lambda e: e.__setitem__("filepath", e["filepath"].replace("/images/", "\0/images/")))
    return "unsafe_filepath", fp


def case_other_category_filepath(raw):
    # A frame of tv/ listed in apple's annotations would be stored with the wrong category.
    seq, _ = _first(raw)
    src = raw / "co3d" / "apple" / seq
    shutil.copytree(src, raw / "co3d" / "tv" / seq)
    fp = _edit_entry(raw, 3, lambda e: e.__setitem__("filepath", "tv" + e["filepath"][len("apple"):]))
    return "unsafe_filepath", fp


CASES = {f.__name__[5:]: f for f in [
    case_truncated_jpeg, case_garbage_jpeg, case_not_an_image, case_missing_image, case_truncated_depth, case_8bit_depth,
    case_missing_depth, case_missing_mask, case_truncated_mask, case_size_mismatch, case_nonfinite_camera,
    case_singular_intrinsic, case_singular_rotation, case_absolute_filepath, case_dotdot_filepath,
    case_entry_without_intri, case_nul_in_filepath, case_other_category_filepath]}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_frame_is_skipped_and_reported(raw, tmp_path, name, capsys):
    reason, path = CASES[name](raw)
    out = tmp_path / "out"
    assert _convert(raw, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["reason"], r["path"], r["frame"]) for r in report["skipped"]] == [(reason, path, 3)]
    assert report["skipped_by_reason"] == {reason: 1}
    assert " at 0x" not in json.dumps(report)  # no object address: the same input gives the same report
    seq, _ = _first(raw)
    sp = Co3DSplit(str(out / "train"))
    assert len(sp) == 2 * FRAMES - 1 and sp.num_frames(seq) == FRAMES - 1
    assert 3 not in sp.get_frames(seq, decode_images=False)["frames"].tolist()  # frame index keeps its meaning

    # --strict: stops at the first bad input with one line naming the file and the reason, leaves nothing finished.
    strict_out = tmp_path / "strict"
    capsys.readouterr()
    assert _convert(raw, strict_out, "--strict") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err and reason in err and "Traceback" not in err
    assert not (strict_out / "train" / "state.json").exists()
    assert not list((strict_out / "train").glob("*.tmp-*"))


def test_sequence_below_min_frames_after_skips_is_dropped(raw, tmp_path):
    seq, _ = _first(raw)
    ann = _annotation(raw)
    for k in (0, 1, 2):  # 26 - 3 = 23 < 24
        os.remove(_depth(raw, ann[seq][k]["filepath"]))
    out = tmp_path / "out"
    assert _convert(raw, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_by_reason"] == {"missing_depth": 3, "too_few_frames": 1}
    sp = Co3DSplit(str(out / "train"))
    assert seq not in sp.sequences and len(sp) == FRAMES


def test_short_sequences_are_filtered_not_reported(raw, tmp_path):
    assert _convert(raw, tmp_path / "out", "--min-frames", "27") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["splits"]["train"]["frames"] == 0 and report["splits"]["train"]["sequences_below_min_frames"] == 2
    assert report["skipped"] == []


def test_malformed_annotation_file(raw, tmp_path, capsys):
    _clone_category(raw, "tv")
    _ann_path(raw).write_bytes(gzip.compress(b"{not json"))
    out = tmp_path / "out"
    assert _convert(raw, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["reason"], r["path"]) for r in report["skipped"]] == [("malformed_annotation_file", str(_ann_path(raw)))]
    assert len(Co3DSplit(str(out / "train"))) == 2 * FRAMES  # tv (a copy of apple) still converted
    capsys.readouterr()
    assert _convert(raw, tmp_path / "strict", "--strict") == 2
    err = capsys.readouterr().err
    assert str(_ann_path(raw)) in err and "malformed_annotation_file" in err


def test_truncated_annotation_file(raw, tmp_path):
    _truncate(_ann_path(raw), 0.5)
    assert _convert(raw, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped_by_reason"] == {"malformed_annotation_file": 1}


def test_absent_category_is_an_error(raw, tmp_path, capsys):
    assert _convert(raw, tmp_path / "out", "--categories", "apple,teddybear") == 2
    err = capsys.readouterr().err
    assert "teddybear" in err and "not found" in err and len(err.strip().splitlines()) == 1


def test_duplicate_sequence_names_across_categories(raw, tmp_path, capsys):
    # Rows, sequence_index.json and Co3DSplit are keyed by sequence name, so a name may appear once per split:
    # the later category's copy (tv, after apple) is skipped and reported with both annotation files named.
    _clone_category(raw, "tv")
    out = tmp_path / "out"
    assert _convert(raw, out) == 0
    report = json.loads((out / "report.json").read_text())
    names = sorted(_annotation(raw))
    assert report["skipped_by_reason"] == {"duplicate_sequence": 2}
    assert [(r["category"], r["sequence"], r["path"]) for r in report["skipped"]] == [
        ("tv", n, str(_ann_path(raw, "tv"))) for n in names]
    assert all(str(_ann_path(raw)) in r["detail"] for r in report["skipped"])
    sp = Co3DSplit(str(out / "train"))
    assert sp.sequences == names and {sp.category(n) for n in names} == {"apple"} and len(sp) == 2 * FRAMES
    assert cli_main(["verify-dataset", str(out)]) == 0
    capsys.readouterr()
    assert _convert(raw, tmp_path / "strict", "--strict") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "duplicate_sequence" in err
    assert str(_ann_path(raw, "tv")) in err and str(_ann_path(raw)) in err
