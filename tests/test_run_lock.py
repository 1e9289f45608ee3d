"""One run per directory: the lock refuses a second holder in one line, survives nothing but a live holder
(a killed one is broken with a message), and guards training, conversion parts and merges."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vggt_train import run_lock
from vggt_train.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]

_HOLDER = """
import sys, time
from vggt_train import run_lock
with run_lock.hold(sys.argv[1], "training (test holder)"):
    print("held", flush=True)
    time.sleep(600)
"""


def _start_holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_is_broken(tmp_path):
    lock = tmp_path / "run" / run_lock.LOCK_FILE
    proc = _start_holder(lock)
    try:
        with pytest.raises(run_lock.LockHeldError) as info:
            with run_lock.hold(lock, "training"):
                pass
        text = str(info.value)
        assert f"{lock.parent} is in use by training (test holder) (host {socket.gethostname()}, pid {proc.pid}" in text
        assert str(lock) in text and "\n" not in text
        assert run_lock.holder_of(lock)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid  # what a kill -9 leaves: a free lock that is not empty
    said = []
    with run_lock.hold(lock, "training", say=said.append) as me:
        assert me["pid"] == os.getpid() and run_lock.holder_of(lock)["pid"] == os.getpid()
    assert len(said) == 1 and f"stale lock of training (test holder) (host {socket.gethostname()}, pid {proc.pid}" in said[0]
    assert lock.read_text() == "" and run_lock.holder_of(lock) is None  # a clean exit leaves it empty
    with run_lock.hold(lock, "training", say=said.append):
        pass
    assert len(said) == 1  # nothing stale the second time


def test_without_flock_the_holder_record_decides(tmp_path, monkeypatch):
    """On a filesystem without file locks: a live pid here refuses, a dead one is stale, another host's holder
    cannot be checked, so the message says which file to delete."""
    monkeypatch.setattr(run_lock, "_try_flock", lambda fd: None)
    lock = tmp_path / "vggt-train.lock"
    here = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for holder, outcome in [({"host": here, "pid": os.getppid()}, "in use"),
                            ({"host": "node-7", "pid": 1}, f"if that run is gone, delete {lock}"),
                            ({"host": here, "pid": int(dead.stdout)}, "stale")]:
        lock.write_text(json.dumps(dict(holder, purpose="training", since="t0")))
        said = []
        if outcome == "stale":
            with run_lock.hold(lock, "training", say=said.append):
                assert run_lock.holder_of(lock)["pid"] == os.getpid()
            assert "was broken" in said[0]
        else:
            with pytest.raises(run_lock.LockHeldError, match=outcome):
                with run_lock.hold(lock, "training", say=said.append):
                    pass
            assert json.loads(lock.read_text())["pid"] == holder["pid"]  # the holder's record is untouched


def test_a_second_training_into_the_same_output_dir_is_refused_and_leaves_the_first_alone(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "error.txt").write_text("the first run's own error\n")
    proc = _start_holder(out / run_lock.LOCK_FILE)
    try:
        rc = cli_main(["train", "--config", str(REPO / "configs" / "demo_cpu.yaml"), f"output_dir={out}"])
        err = capsys.readouterr().err.strip()
    finally:
        proc.kill()
        proc.wait()
    assert rc == 2
    assert err.startswith(f"vggt-train train: error: {out} is in use by training (test holder)") and "\n" not in err
    assert (out / "error.txt").read_text() == "the first run's own error\n"  # not cleared, not overwritten
    assert sorted(p.name for p in out.iterdir()) == ["error.txt", run_lock.LOCK_FILE]


# -- conversion and merge -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from vggt_train.data.synthetic import make_synthetic_co3d

    return make_synthetic_co3d(str(tmp_path_factory.mktemp("raw")), ["apple"], sequences=2, test_sequences=1,
                               frames=6, hw=(16, 24), seed=3)


def _convert(raw, out, *extra):
    return cli_main(["convert-co3d", "--co3d-dir", raw["co3d_dir"], "--annotation-dir", raw["annotation_dir"],
                     "--out", str(out), "--quiet", "--shard-size-mb", "0.01", *extra])


def test_conversion_parts_and_merge_exclude_each_other(raw, tmp_path, capsys):
    from vggt_train.data.shards.convert import lock_path

    out = tmp_path / "out"
    holder = _start_holder(Path(lock_path(str(out), "part-00001-of-00002")))
    try:
        assert _convert(raw, out, "--part", "1/2") == 2  # the same part twice
        assert f"{out} is in use by training (test holder)" in capsys.readouterr().err
        assert _convert(raw, out, "--part", "0/2") == 0  # another part of the same plan runs beside it
        assert cli_main(["merge-shards", str(out)]) == 2  # not while a part is being written
        assert "is still being written by training (test holder)" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    merger = _start_holder(Path(lock_path(str(out), "merge")))
    try:
        assert _convert(raw, out, "--part", "1/2") == 2
        assert "is being merged by training (test holder)" in capsys.readouterr().err
    finally:
        merger.kill()
        merger.wait()
    assert _convert(raw, out, "--part", "1/2") == 0
    assert cli_main(["merge-shards", str(out)]) == 0
    assert cli_main(["verify-dataset", str(out), "--no-decode"]) == 0


def test_two_converters_with_other_options_cannot_both_pass_the_plan_check(raw, tmp_path, monkeypatch, capsys):
    """Both started before either wrote its plan: the check-and-create is one atomic step, so the second is
    refused with the plan mismatch rather than failing later."""
    from vggt_train.data.shards import plan as conv

    out = tmp_path / "race"
    assert _convert(raw, out, "--part", "0/2") == 0
    real_exists = os.path.exists
    monkeypatch.setattr(conv.os.path, "exists", lambda p: False if str(p).endswith("plan.json") else real_exists(p))
    assert _convert(raw, out, "--part", "1/2", "--max-side", "12") == 2
    assert "other inputs or options" in capsys.readouterr().err
    assert not [p for p in (out / "_convert").iterdir() if ".tmp-" in p.name]
