"""Hostile input (issue #11): names never escape their directory, a tampered index or damaged shard is one line
naming the file (verify-dataset reports it, never crashes), converter inputs cannot exhaust memory or hang."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest

from vggt_train.cli import main as cli_main
from vggt_train.data.sources import co3d
from vggt_train.data.shards.reader import Co3DSplit
from vggt_train.data.synthetic import make_synthetic_co3d

HW = (24, 32)
FRAMES = 6


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return make_synthetic_co3d(str(root), ["apple"], sequences=3, test_sequences=0, frames=FRAMES, hw=HW, seed=3)


def convert(raw, out, *extra, expect=0):
    rc = cli_main(["convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir", raw["annotation_dir"],
                   "--out", str(out), "--quiet", "--splits", "train", "--min-frames", "2", "--workers", "1", *extra])
    assert rc == expect
    return out


@pytest.fixture(scope="module")
def dataset(raw, tmp_path_factory):
    # one sequence per shard: 3 shards
    return convert(raw, tmp_path_factory.mktemp("ds") / "out", "--shard-size-mb", "0.001")


@pytest.fixture
def copy(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "out")
    return tmp_path / "out"


def one_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    assert len(lines) == 1, text
    return lines[0]


def verify(out, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(["verify-dataset", str(out)])
    return rc, capsys.readouterr().out


def verify_subprocess(out) -> subprocess.CompletedProcess:
    """verify-dataset in a child: a crash (segfault) shows as a negative return code instead of killing pytest."""
    code = f"import sys; from vggt_train.cli import main; sys.exit(main(['verify-dataset', {str(out)!r}]))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------------------- 1. no escape
@pytest.mark.parametrize("bad", ["../victim.arrow", "ABS"])
def test_merge_refuses_part_manifest_key_outside_the_dirs(raw, tmp_path, capsys, bad):
    part = convert(raw, tmp_path / "p0", "--shard-size-mb", "0.001", "--part", "0/1")
    victim = tmp_path / "victim.arrow"
    victim.write_bytes(b"not yours")
    bad = str(victim) if bad == "ABS" else bad
    mpath = next((part / "_convert").glob("manifest-part-*.json"))
    m = json.loads(mpath.read_text())
    rel = sorted(m["shards"])[0]
    m["shards"][bad] = m["shards"].pop(rel)
    mpath.write_text(json.dumps(m))
    capsys.readouterr()
    assert cli_main(["merge-shards", str(tmp_path / "dest"), str(part)]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(mpath) in err and repr(bad) in err and "unsafe" in err, err
    assert victim.read_bytes() == b"not yours"
    assert not (tmp_path / "dest" / "train").exists() or not any((tmp_path / "dest" / "train").iterdir())


@pytest.mark.parametrize("bad", ["../../victim.arrow", "ABS"])
def test_state_json_name_outside_the_split(copy, tmp_path, capsys, bad):
    victim = tmp_path / "victim.arrow"
    shutil.copy(copy / "train" / "data-00000-of-00003.arrow", victim)  # a readable shard: only the check stops it
    bad = str(victim) if bad == "ABS" else bad
    state_path = copy / "train" / "state.json"
    state = json.loads(state_path.read_text())
    state["_data_files"][0]["filename"] = bad
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError) as exc:
        Co3DSplit(str(copy / "train"))
    msg = one_line(str(exc.value))
    assert str(state_path) in msg and repr(bad) in msg, msg
    from vggt_train.data.pipeline.dataset import MultiViewDataset

    with pytest.raises(ValueError, match="unsafe name"):
        MultiViewDataset(str(copy), "train", img_size=28, patch_size=14)
    rc, out = verify(copy, capsys)
    assert rc == 1 and f"train/state.json: unsafe name {bad!r}" in out, out


def test_manifest_json_name_outside_is_reported(copy, capsys):
    mpath = copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["splits"]["train"]["shards"][0]["filename"] = "../manifest.json"
    mpath.write_text(json.dumps(m))
    rc, out = verify(copy, capsys)
    assert rc == 1 and "manifest.json: unsafe shard name '../manifest.json'" in out, out


def test_safe_names_helper():
    from vggt_train.data.safe_names import UnsafeName, plain_name, safe_join

    assert plain_name("data-00000-of-00001.arrow", "x") == "data-00000-of-00001.arrow"
    for bad in ["", ".", "..", "a/b", "a\\b", "/etc/passwd", "C:x", "a\0b", None, 3]:
        with pytest.raises(UnsafeName, match="src.json"):
            plain_name(bad, "src.json")
    assert safe_join("/r", "train/a.arrow", "m") == "/r/train/a.arrow"
    for bad in ["../a", "train/../../a", "/abs", "train//a", "train/./a", "", "a\\..\\b"]:
        with pytest.raises(UnsafeName, match="m.json"):
            safe_join("/r", bad, "m.json")


# ----------------------------------------------------------------------------------------------- 2. index ranges
def _tamper_index(split_dir, fn):
    p = split_dir / "sequence_index.json"
    index = json.loads(p.read_text())
    fn(index["sequences"])
    p.write_text(json.dumps(index))
    return p


def _set(k, **kv):
    def fn(seqs):
        seqs[k].update(kv)
    return fn


def _shift_boundary(seqs):  # tiling kept, but the first row of entry 1 holds entry 0's sequence
    seqs[0]["num_frames"] -= 1
    seqs[1]["start"] -= 1
    seqs[1]["num_frames"] += 1


@pytest.mark.parametrize("tamper,expect", [
    (_set(2, start=10 ** 6), "start 1000000"),
    (_set(1, start=0), "start 0"),
    (_set(0, start=-1), "start -1"),
    (_set(0, num_frames=0), "num_frames 0"),
    (_set(2, num_frames=10 ** 9), "outside the split"),
    (_set(2, num_frames=1e9), "not {"),
    (_shift_boundary, "holds sequence"),
    (_set(0, shard=7), "shard 7"),
])
def test_tampered_index_is_one_line_error_and_verify_reports_it(copy, capsys, tamper, expect):
    p = _tamper_index(copy / "train", tamper)
    with pytest.raises(ValueError) as exc:
        Co3DSplit(str(copy / "train"))
    msg = one_line(str(exc.value))
    assert str(p) in msg and "entry" in msg and expect in msg, msg
    rc, out = verify(copy, capsys)
    assert rc == 1 and "sequence_index.json" in out, out


def test_untampered_index_opens(dataset):
    split = Co3DSplit(str(dataset / "train"))
    assert len(split.sequences) == 3 and len(split.get_frames(split.sequences[1])["depths"]) == FRAMES


# ----------------------------------------------------------------------------------------------- 3. damaged shards
def _damage_depth_offsets(shard, value=0x7FFFFFF0):
    """Overwrite one entry of the depth column's offsets ([0, n, 2n, ...] int32, n = H*W*2 bytes)."""
    data = bytearray(shard.read_bytes())
    n = HW[0] * HW[1] * 2
    at = data.find(struct.pack("<3i", 0, n, 2 * n))
    assert at >= 0
    data[at + 4:at + 8] = struct.pack("<i", value)
    shard.write_bytes(bytes(data))


def test_verify_survives_damaged_offsets(copy):
    shard = copy / "train" / "data-00001-of-00003.arrow"
    _damage_depth_offsets(shard)
    res = verify_subprocess(copy)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "train/data-00001-of-00003.arrow: not a readable Arrow shard" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr


def test_training_names_shard_and_row_of_damaged_offsets(copy):
    from vggt_train.data.sources import ShardReadError, ShardSource

    shard = copy / "train" / "data-00001-of-00003.arrow"
    _damage_depth_offsets(shard, value=-5)
    src = ShardSource(str(copy / "train"))
    seq = src.sequences[1]
    src.read_frame(src.sequences[0], 0)  # other shards still read
    with pytest.raises(ShardReadError) as exc:
        src.read_frame(seq, 0)
    msg = one_line(str(exc.value))
    assert "data-00001-of-00003.arrow" in msg and f"row {FRAMES}" in msg, msg


def test_reader_names_shard_and_row_of_damaged_offsets(copy):
    from vggt_train.data.shards.reader import ShardError

    _damage_depth_offsets(copy / "train" / "data-00001-of-00003.arrow", value=-5)
    split = Co3DSplit(str(copy / "train"))
    assert len(split.get_frames(split.sequences[0], [0, 2])["depths"]) == 2
    with pytest.raises(ShardError) as exc:
        split.get_frames(split.sequences[1], [3, 0])
    msg = one_line(str(exc.value))
    assert "data-00001-of-00003.arrow" in msg and f"row {FRAMES + 3}," in msg, msg


def test_truncated_shard_is_named(copy, capsys):
    shard = copy / "train" / "data-00002-of-00003.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    rc, out = verify(copy, capsys)
    assert rc == 1 and "train/data-00002-of-00003.arrow: not a readable Arrow shard" in out, out
    with pytest.raises(ValueError) as exc:
        Co3DSplit(str(copy / "train"))
    assert str(shard) in one_line(str(exc.value))


def test_damaged_schema_is_named(copy, capsys):
    shard = copy / "train" / "data-00000-of-00003.arrow"
    data = bytearray(shard.read_bytes())
    data[8:400] = b"\xff" * 392  # the schema message at the start of the stream
    shard.write_bytes(bytes(data))
    res = verify_subprocess(copy)
    assert res.returncode == 1 and "train/data-00000-of-00003.arrow: " in res.stdout, (res.stdout, res.stderr)
    with pytest.raises(ValueError) as exc:
        Co3DSplit(str(copy / "train"))
    assert str(shard) in one_line(str(exc.value))


# -- per-row checksums: bit rot inside a row becomes a reported, replaced frame -----------------------------------
def _flip_depth_byte(copy, seq_index=1, position=2):
    """Flip one byte inside the depth of one row (structure intact: only a checksum can notice)."""
    from vggt_train.data.sources import ShardSource

    src = ShardSource(str(copy / "train"))
    seq = src.sequences[seq_index]
    depth = bytes(src.read_frame(seq, position).depth.tobytes())
    shard = copy / "train" / f"data-{seq_index:05d}-of-00003.arrow"
    data = bytearray(shard.read_bytes())
    at = data.find(depth)
    assert at >= 0 and data.find(depth, at + 1) < 0
    data[at + len(depth) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    return seq, shard


def test_a_flipped_byte_inside_a_row_is_a_bad_frame_named_by_shard_and_row(copy, capsys, caplog):
    import logging

    from vggt_train.data.pipeline.dataset import MultiViewDataset
    from vggt_train.data.sources import BadFrame, ShardSource

    seq, shard = _flip_depth_byte(copy)
    src = ShardSource(str(copy / "train"))
    src.read_frame(seq, 1)  # the row beside it is intact
    with pytest.raises(BadFrame) as exc:
        src.read_frame(seq, 2)
    msg = one_line(str(exc.value))
    assert f"{shard} (sequence {seq}, frame position 2, row {FRAMES + 2})" in msg and "field 'checksum'" in msg, msg
    ds = MultiViewDataset(str(copy), "train", img_size=28, augment=False)
    with caplog.at_level(logging.WARNING, logger="vggt_train.data"):
        sample = ds.get_sample(seq, [0, 2], 1.0)
    assert sample["replaced"] == [f"{seq}/2 -> {seq}/3"] and ds.bad_frames == 1  # replaced per the policy
    rc, out = verify(copy, capsys)
    assert rc == 1 and f"train/data-00001-of-00003.arrow: row 2 ({seq} frame" in out and "checksum mismatch" in out, out


def _drop_checksums(out):
    """Rewrite a dataset as schema 1 wrote it (no checksum column), manifest updated to match."""
    import hashlib

    import pyarrow as pa

    from vggt_train.data.shards.reader import open_shard
    from vggt_train.data.shards.schema import arrow_schema, features

    manifest = json.loads((out / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        for f in info["shards"]:
            path = out / split / f["filename"]
            open_shard(str(path))  # registers the extension types
            table = pa.ipc.open_stream(pa.py_buffer(path.read_bytes())).read_all().drop(["checksum"])  # in memory: the file is rewritten
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema(with_checksum=False)) as w:
                for batch in table.to_batches(max_chunksize=64):
                    w.write_batch(batch)
            data = path.read_bytes()
            f.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        info_path = out / split / "dataset_info.json"
        info_json = json.loads(info_path.read_text())
        info_json["features"] = features(with_checksum=False).to_dict()
        info_path.write_text(json.dumps(info_json))
    manifest["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_dataset_without_checksums_still_loads_with_a_note(copy, capsys, caplog):
    import logging

    from vggt_train.data.pipeline.dataset import MultiViewDataset

    _drop_checksums(copy)
    with caplog.at_level(logging.WARNING, logger="vggt_train.data"):
        ds = MultiViewDataset(str(copy), "train", img_size=28, augment=False)
    assert not ds.source.has_checksums
    assert "no per-row checksums (converted before schema 2)" in caplog.text
    assert ds.get_sample(ds.sequences[0], [0, 1], 1.0)["images"].shape[0] == 2
    rc, out = verify(copy, capsys)
    assert rc == 0 and "WARNING train: no per-row checksums" in out, out


# ----------------------------------------------------------------------------------------------- 4. converter
@pytest.fixture
def rawcopy(raw, tmp_path):
    root = os.path.dirname(raw["co3d_dir"])
    shutil.copytree(root, tmp_path / "raw")
    return {"co3d_dir": str(tmp_path / "raw" / "co3d"), "annotation_dir": str(tmp_path / "raw" / "annotations")}


@pytest.fixture
def alarm():
    """Fail instead of hanging forever (a FIFO read)."""
    def fail(*_):
        raise TimeoutError("hung")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _frame_file(raw, k=1, kind="images"):
    with gzip.open(os.path.join(raw["annotation_dir"], "apple_train.jgz")) as f:
        ann = json.loads(f.read())
    fp = ann[sorted(ann)[0]][k]["filepath"]
    image, depth, mask = co3d.frame_paths(raw["co3d_dir"], fp)
    return {"images": image, "depths": depth, "masks": mask}[kind]


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_gzip_bomb_annotation_is_capped(rawcopy, tmp_path, monkeypatch, capsys):
    bomb = os.path.join(rawcopy["annotation_dir"], "bomb_train.jgz")
    with gzip.open(bomb, "wb") as f:
        f.write(b'{"s": ["' + b"0" * (8 << 20) + b'"]}')  # 8 MB from ~8 KB
    assert os.path.getsize(bomb) < 100_000
    with pytest.raises(co3d.BadInput) as exc:
        co3d.load_annotation_file(bomb, max_bytes=1 << 20)
    assert exc.value.reason == "annotation_too_large"
    monkeypatch.setenv(co3d.MAX_ANNOTATION_ENV, "1")  # 1 MiB: the real annotation fits, the bomb does not
    out = convert(rawcopy, tmp_path / "out")
    reasons = {r["path"]: r["reason"] for r in _report(out)["skipped"]}
    assert reasons[bomb] == "annotation_too_large"
    capsys.readouterr()
    convert(rawcopy, tmp_path / "strict", "--strict", expect=2)
    err = one_line(capsys.readouterr().err)
    assert bomb in err and "annotation_too_large" in err


@pytest.mark.parametrize("kind", ["fifo", "devzero", "dir"])
def test_special_file_as_image_is_not_read(rawcopy, tmp_path, alarm, capsys, kind):
    image = _frame_file(rawcopy)
    os.remove(image)
    if kind == "fifo":
        os.mkfifo(image)
    elif kind == "devzero":
        os.symlink("/dev/zero", image)
    else:
        os.mkdir(image)
    with pytest.raises(co3d.BadInput) as exc:
        co3d._read_bytes(image, "missing_image")
    assert exc.value.reason == "not_a_regular_file"
    out = convert(rawcopy, tmp_path / "out")
    assert [r["reason"] for r in _report(out)["skipped"] if r["path"] == image] == ["not_a_regular_file"]
    capsys.readouterr()
    convert(rawcopy, tmp_path / "strict", "--strict", expect=2)
    err = one_line(capsys.readouterr().err)
    assert image in err and "not_a_regular_file" in err


def test_symlink_to_regular_file_is_fine(rawcopy, tmp_path):
    image = _frame_file(rawcopy)
    os.rename(image, image + ".real")
    os.symlink(os.path.basename(image) + ".real", image)
    out = convert(rawcopy, tmp_path / "out")
    assert not _report(out)["skipped"]


def test_fifo_annotation_and_mask_do_not_hang(rawcopy, tmp_path, alarm):
    mask = _frame_file(rawcopy, 2, "masks")
    os.remove(mask)
    os.mkfifo(mask)
    fifo_ann = os.path.join(rawcopy["annotation_dir"], "pipe_train.jgz")
    os.mkfifo(fifo_ann)
    out = convert(rawcopy, tmp_path / "out")
    reasons = {r["path"]: r["reason"] for r in _report(out)["skipped"]}
    assert reasons[mask] == "not_a_regular_file" and reasons[fifo_ann] == "not_a_regular_file"


def test_oversized_frame_file(rawcopy, tmp_path, monkeypatch):
    depth = _frame_file(rawcopy, 1, "depths")
    with open(depth, "ab") as f:
        f.write(b"\0" * 300_000)
    monkeypatch.setenv(co3d.MAX_FRAME_FILE_ENV, "0.25")  # 256 KiB
    out = convert(rawcopy, tmp_path / "out")
    assert [r["reason"] for r in _report(out)["skipped"] if r["path"] == depth] == ["file_too_large"]


# -- 10. smaller items: orphaned workers, a full disk during the manifest write --------------------------------------
def _processes_with(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(d))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the workers")
def test_killing_the_converter_leaves_no_worker_behind(raw, tmp_path):
    """The converter's main process dies abruptly (os._exit, as kill -9) with 2 workers busy: they and
    multiprocessing's resource tracker end too, within seconds."""
    import time
    import uuid

    from vggt_train.data.shards.convert import EXIT_HOOK_ENV

    marker = f"VGGT_TEST_ORPHAN_{uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "vggt_train", "convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir",
           raw["annotation_dir"], "--out", str(tmp_path / "out"), "--quiet", "--splits", "train", "--min-frames", "2",
           "--workers", "2", "--shard-size-mb", "0.001"]
    log = tmp_path / "log"
    with open(log, "w") as f:  # a file, not a pipe: a surviving worker would hold a pipe open forever
        proc = subprocess.run(cmd, env=dict(os.environ, **{EXIT_HOOK_ENV: "1", marker: "1"}), stdout=f, stderr=f, timeout=300)
    assert proc.returncode == 75, log.read_text()
    deadline = time.time() + 15
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    left = _processes_with(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} process(es) of the killed converter still running"


def test_a_full_disk_during_the_manifest_write_names_the_file(raw, tmp_path, monkeypatch, capsys):
    import errno
    import json as json_module

    from vggt_train.data.shards import layout as conv

    real_dump = json_module.dump

    def dump(obj, f, **kw):
        if "manifest-part-" in f.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, f, **kw)

    monkeypatch.setattr(conv.json, "dump", dump)
    out = tmp_path / "full"
    convert(raw, out, expect=2)
    err = one_line(capsys.readouterr().err)
    assert "No space left on device: " in err and f"{out}/_convert/manifest-part-00000-of-00001.json" in err, err
    assert not [p for p in (out / "_convert").iterdir() if ".tmp-" in p.name]  # no half-written temp left
