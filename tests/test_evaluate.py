"""`vggt-train evaluate`: the official frame draw, the crop preprocessing against hand computations, perfect
predictions scoring 100, eval.json's shape, one process vs two under accelerate launch, --compare, bad input."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port, run_command, write_accelerate_config
from pipeline_data import tiny_dataset
from vggt_train.cli import main
from vggt_train.data.sources.shards import ShardSource, resolve_split_dir
from vggt_train.evaluation import evaluate
from vggt_train.evaluation.protocol import (
    OFFICIAL_CATEGORIES, category_order, pad_views, plan_sequences, preprocess_depth, preprocess_image, resize_geometry,
)
from vggt_train.geometry import extri_intri_to_pose_encoding
from vggt_train.model import VGGT, export_official

REPO = Path(__file__).resolve().parents[1]
FRAMES, MIN_FRAMES, IMG = 4, 20, 56  # the test split: 1 sequence of 24 frames (72x96) in apple and in tv


# ---------------------------------------------------------------------------------------------- frame selection

def _official_draw(sequences_by_category, num_frames, frames, min_frames, seed, skip=()):
    """The official script's loop, re-derived: np.random.seed once, categories in its list order, sequences sorted,
    np.random.choice per sequence that passes the checks."""
    np.random.seed(seed)
    out = {}
    for category in [c for c in OFFICIAL_CATEGORIES if c in sequences_by_category]:
        for seq in sorted(sequences_by_category[category]):
            if num_frames[seq] < min_frames or seq in skip:
                continue
            out[seq] = np.random.choice(num_frames[seq], frames, replace=False).tolist()
    return out


def _toy_layout():
    cats = {"tv": ["t2", "t1"], "apple": ["a3", "a1", "a2"], "bench": ["b1"]}
    counts = {"t1": 80, "t2": 51, "a1": 50, "a2": 12, "a3": 200, "b1": 64}
    return cats, counts


def _camera(big=False):
    e = np.tile(np.hstack([np.eye(3), np.zeros((3, 1))]), (3, 1, 1))
    if big:
        e[1, 2, 3] = 2e5  # t_z: PyTorch3D T sums to 2e5 > 1e5
    return e


def test_frame_draw_matches_the_official_loop_and_is_deterministic():
    cats, counts = _toy_layout()
    plan = plan_sequences(cats, counts.__getitem__, lambda s: _camera(), 10, 50, seed=0)
    ours = {p.sequence: list(p.frames) for p in plan.sequences}
    assert ours == _official_draw(cats, counts, 10, 50, 0)
    # the official order: apple before bench before tv (its list), sequences sorted; a2 (12 frames) is skipped
    assert [p.sequence for p in plan.sequences] == ["a1", "a3", "b1", "t1", "t2"]
    assert [(s.sequence, s.reason) for s in plan.skipped] == [("a2", "12 frames < min_frames 50")]
    # pinned: the first draw of seed 0 (np.random.seed(0); np.random.choice(50, 10, replace=False))
    assert ours["a1"] == [28, 11, 10, 41, 2, 27, 38, 31, 22, 4]
    again = plan_sequences(cats, counts.__getitem__, lambda s: _camera(), 10, 50, seed=0)
    assert again == plan
    other = plan_sequences(cats, counts.__getitem__, lambda s: _camera(), 10, 50, seed=1)
    assert [p.frames for p in other.sequences] != [p.frames for p in plan.sequences]
    for p in plan.sequences:
        assert len(set(p.frames)) == 10 and all(0 <= f < counts[p.sequence] for f in p.frames)


def test_a_huge_translation_skips_the_sequence_before_its_draw():
    cats, counts = _toy_layout()
    plan = plan_sequences(cats, counts.__getitem__, lambda s: _camera(big=s == "a3"), 10, 50, seed=0)
    assert "a3" in [s.sequence for s in plan.skipped]
    assert {p.sequence: list(p.frames) for p in plan.sequences} == _official_draw(cats, counts, 10, 50, 0, skip={"a3"})


def test_categories_outside_the_official_list_come_after_it_sorted():
    assert category_order(["zebra", "tv", "apple", "keyboard"]) == ["apple", "tv", "keyboard", "zebra"]


# ---------------------------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("hw, target, expected", [
    ((72, 96), 56, (42, 56, 0, 42)),
    ((600, 800), 518, (392, 518, 0, 392)),     # 600 * 0.6475 / 14 = 27.75 -> 28 * 14
    ((800, 600), 518, (686, 518, 84, 518)),    # 49.33 -> 49 * 14 = 686, crop (686 - 518) // 2 = 84
    ((35, 56), 56, (28, 56, 0, 28)),           # 2.5 rounds half to even: 2
    ((49, 56), 56, (56, 56, 0, 56)),           # 3.5 -> 4
    ((100, 50), 56, (112, 56, 28, 56)),
])
def test_resize_geometry_by_hand(hw, target, expected):
    assert resize_geometry(*hw, target) == expected


def test_preprocess_image_is_pil_bicubic_then_centre_crop():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 50, 3), dtype=np.uint8)
    out = preprocess_image(pixels, 56)
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    by_hand = np.asarray(Image.fromarray(pixels).resize((56, 112), Image.BICUBIC), dtype=np.float32)[28:84] / 255
    assert torch.equal(out, torch.from_numpy(by_hand).permute(2, 0, 1))
    # encoded bytes decode to the same input
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert torch.equal(preprocess_image(buf.getvalue(), 56), out)


def test_preprocess_depth_is_nearest_on_the_same_grid():
    depth = np.arange(32, dtype=np.float16).reshape(8, 4)  # tall: 8x4 at width 14 -> 28 rows, rows 7..20 kept
    out = preprocess_depth(depth, 14)
    assert out.shape == (14, 14)
    for i in range(14):
        for j in range(14):
            src_row, src_col = int((i + 7 + 0.5) * 8 / 28), int((j + 0.5) * 4 / 14)
            assert out[i, j] == float(depth[src_row, src_col])


def test_pad_views_centres_with_white_images_and_invalid_depth():
    images, depths = pad_views([torch.zeros(3, 28, 56), torch.zeros(3, 14, 56)], [torch.ones(28, 56), torch.ones(14, 56)])
    assert images.shape == (2, 3, 28, 56) and depths.shape == (2, 28, 56)
    assert (images[1, :, :7] == 1).all() and (images[1, :, 7:21] == 0).all() and (images[1, :, 21:] == 1).all()
    assert (depths[1, :7] == 0).all() and (depths[1, 7:21] == 1).all()


# ---------------------------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return tiny_dataset(tmp_path_factory.mktemp("evaluate"))["root"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("eval_ckpt")
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(str(export_official(VGGT.from_preset("tiny"), root / f"tiny{i}.safetensors")))
    return tuple(paths)


def _args(data, ckpt, out, *extra):
    return ["evaluate", "--checkpoint", ckpt, "--data", data, "--preset", "tiny", "--frames", str(FRAMES),
            "--min-frames", str(MIN_FRAMES), "--img-size", str(IMG), "--out", str(out), "--no-progress", *extra]


def _options(data, **kw):
    return evaluate.EvalOptions(checkpoint="-", data=data, preset="tiny", frames=FRAMES, min_frames=MIN_FRAMES,
                                img_size=IMG, **kw)


class _GroundTruthModel:
    """Stands in for VGGT: returns the ground-truth pose encoding and 3x the ground-truth depth of the frames the
    plan feeds it, in call order."""

    def __init__(self, source, plan):
        self.queue = []
        for p in plan.sequences:
            frames = [source.read_frame(p.sequence, f) for f in p.frames]
            extri = torch.tensor(np.stack([f.extrinsic for f in frames]))[None]
            intri = torch.tensor(np.stack([f.intrinsic for f in frames]))[None]
            depth = torch.stack([preprocess_depth(f.depth, IMG) for f in frames])
            self.queue.append((extri, intri, depth))

    def __call__(self, images):
        extri, intri, depth = self.queue.pop(0)
        hw = images.shape[-2:]
        return {"pose_enc": extri_intri_to_pose_encoding(extri, intri, hw), "depth": 3.0 * depth[None, ..., None]}


def test_ground_truth_predictions_score_100(data):
    options = _options(data)
    source = ShardSource(resolve_split_dir(data, "test"))
    plan = evaluate.make_plan(source, options)
    assert [p.category for p in plan.sequences] == ["apple", "tv"]
    records = evaluate.evaluate_plan(_GroundTruthModel(source, plan), source, plan, options, torch.device("cpu"), progress=False)
    categories, mean = evaluate.aggregate(records)
    for row in list(categories.values()) + [mean]:
        for key in ("auc@30", "auc@15", "auc@5", "auc@3", "rra@15", "rta@15", "depth_delta_1.25"):
            assert row[key] == pytest.approx(100.0), (key, row)
        assert row["depth_abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_a_wrong_rotation_lowers_auc(data):
    options = _options(data)
    source = ShardSource(resolve_split_dir(data, "test"))
    plan = evaluate.make_plan(source, options)
    model = _GroundTruthModel(source, plan)
    for extri, _, _ in model.queue:  # frame 0 turned by 20 degrees about z: its 3 pairs of 6 are off by 20 degrees
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        extri[0, 0, :3, :3] = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=extri.dtype) @ extri[0, 0, :3, :3]
    categories, _ = evaluate.aggregate(evaluate.evaluate_plan(model, source, plan, options, torch.device("cpu"), progress=False))
    for row in categories.values():
        assert row["rra@15"] == pytest.approx(50.0)
        assert row["auc@15"] == pytest.approx(50.0)


def test_evaluate_writes_eval_json_of_the_documented_shape(data, checkpoints, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(_args(data, checkpoints[0], out)) == 0
    printed = capsys.readouterr().out
    assert "apple" in printed and "mean" in printed and "AUC@30" in printed
    doc = json.loads(out.read_text())
    assert set(doc) >= {"protocol", "categories", "mean", "sequences"}
    assert doc["protocol"]["frames"] == FRAMES and doc["protocol"]["seed"] == 0 and doc["protocol"]["img_size"] == IMG
    assert sorted(doc["categories"]) == ["apple", "tv"]
    for row in list(doc["categories"].values()) + [doc["mean"]]:
        assert list(row) == list(evaluate.METRIC_KEYS)
        assert all(isinstance(v, float) for v in row.values())
        assert 0 <= row["auc@30"] <= 100 and row["depth_abs_rel"] >= 0
    assert doc["mean"]["auc@30"] == pytest.approx(np.mean([r["auc@30"] for r in doc["categories"].values()]))
    source = ShardSource(resolve_split_dir(data, "test"))
    plan = evaluate.make_plan(source, _options(data))
    assert [(s["category"], s["sequence"], s["frames"]) for s in doc["sequences"]] == \
        [(p.category, p.sequence, list(p.frames)) for p in plan.sequences]
    for s in doc["sequences"]:
        assert np.asarray(s["pred_extrinsics"]).shape == (FRAMES, 3, 4)


def test_two_processes_give_the_numbers_of_one(data, checkpoints, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched rank (OMP_NUM_THREADS=1): the same float sums, bit for bit
    try:
        assert main(_args(data, checkpoints[0], one)) == 0
    finally:
        torch.set_num_threads(threads)
    config = write_accelerate_config(tmp_path / "accel.yaml", REPO / "ds_configs" / "zero2.json", 2, port=free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_command([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                          "-m", "vggt_train", *_args(data, checkpoints[0], two)], 300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("wrote ") == 1  # only rank 0 reports
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["sequences"] == b["sequences"]
    assert json.dumps(a["categories"]) == json.dumps(b["categories"]) and json.dumps(a["mean"]) == json.dumps(b["mean"])


def test_compare_prints_the_difference_per_category(data, checkpoints, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    assert main(_args(data, checkpoints[0], out, "--compare", checkpoints[1])) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["compare"]["checkpoint"] == checkpoints[1]
    assert [s["frames"] for s in doc["compare"]["sequences"]] == [s["frames"] for s in doc["sequences"]]
    diff_block = printed.split("difference (")[1]
    for category in ("apple", "tv"):
        a, b = doc["categories"][category], doc["compare"]["categories"][category]
        assert doc["compare"]["difference"]["categories"][category]["auc@30"] == pytest.approx(b["auc@30"] - a["auc@30"])
        line = next(l for l in diff_block.splitlines() if l.startswith(category))
        assert line.split()[1] == f"{b['auc@30'] - a['auc@30']:+.2f}"
        assert line.split()[7] == f"{b['depth_abs_rel'] - a['depth_abs_rel']:+.4f}"


def test_a_training_checkpoint_directory_loads_like_its_exported_file(checkpoints, tmp_path):
    from safetensors.torch import save_file

    from vggt_train.model import read_state_dict
    from vggt_train.train.checkpoints import STATE_FILE, step_dir

    ckpt = step_dir(tmp_path, 1)  # a run directory holding one complete checkpoint
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in read_state_dict(checkpoints[0]).items()}, str(ckpt / "model.safetensors"))
    (ckpt / STATE_FILE).write_text("{}")
    images = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        a = evaluate.load_model(checkpoints[0], "tiny", torch.device("cpu"))(images)["pose_enc"]
        b = evaluate.load_model(str(tmp_path), "tiny", torch.device("cpu"))(images)["pose_enc"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("change, message", [
    (("--checkpoint", "/nonexistent/model.pt"), "checkpoint not found: /nonexistent/model.pt"),
    (("--min-frames", "30"), "has at least --min-frames 30 frames"),
    (("--categories", "zebra"), "--categories: category not found: zebra"),
    (("--preset", "small"), "does not match"),
    (("--frames", "30"), "--min-frames (20) must be at least --frames (30)"),
])
def test_bad_input_is_one_line(data, checkpoints, tmp_path, capsys, change, message):
    args = _args(data, checkpoints[0], tmp_path / "bad.json")
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "bad.json").exists()


class _Rank1Of2:
    """Rank 1 of 2: gather hands back rank 0's share as a stand-in record set."""

    world, rank, local_rank = 2, 1, 1

    def gather(self, obj):
        return [{0: {"category": "apple", "sequence": "from rank 0"}}, obj]


def test_each_rank_runs_its_share_and_gathers_in_plan_order(data):
    options = _options(data)
    source = ShardSource(resolve_split_dir(data, "test"))
    plan = evaluate.make_plan(source, options)
    model = _GroundTruthModel(source, plan)
    model.queue = model.queue[1:]  # rank 1 of 2 evaluates plan index 1 only
    records = evaluate.evaluate_plan(model, source, plan, options, torch.device("cpu"), _Rank1Of2(), progress=False)
    assert not model.queue  # called exactly once
    assert records[0]["sequence"] == "from rank 0" and records[1]["sequence"] == plan.sequences[1].sequence
