"""Validation in training: the fixed draw, the pooled metrics (AUC@30, RRA/RTA@15, depth) across ranks, the image of
a validation sample in the trackers, train.log_with, and plot-metrics' AUC panel."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import free_port, write_accelerate_config
from vggt_train.cli import main as cli_main
from vggt_train.evaluation import pose_auc, rra_rta
from vggt_train.train import config as train_config
from vggt_train.train import val_metrics, visuals
from vggt_train.train.config import ConfigError, load_config
from vggt_train.train.data import TrainData
from vggt_train.train.trackers import tracker_names

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 540  # a launch of 2 DeepSpeed processes takes minutes on a busy 2-core machine
VAL_STEPS = 3
METRICS = ("auc@30", "rra@15", "rta@15", "depth_abs_rel", "depth_delta_1.25")


def _overrides(dataset: Path, out: Path) -> list:
    # a learning rate too small to move any float32 weight: every validation sees the initial model, so runs on
    # one and two processes validate the same weights
    return [f"output_dir={out}", f"data.path={dataset}", "model.preset=tiny", "model.gradient_checkpointing=false",
            "data.img_size=28", "data.augment=false", "data.img_nums=[2,3]", "data.max_img_per_gpu=6", "data.num_workers=0",
            "optim.lr=1e-30", "optim.start_lr=0", "optim.end_lr=0", "optim.clip_mode=global", "train.max_steps=2",
            "train.val_every=1", f"train.val_steps={VAL_STEPS}", "train.mixed_precision=no", "train.log_every=1",
            "train.ckpt_every=0", "train.progress=false", "train.seed=5"]


def _run(cmd: list, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _val_records(out: Path) -> list:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r["split"] == "val"]


@pytest.fixture(scope="module")
def single_run(train_shards, tmp_path_factory) -> SimpleNamespace:
    """One tiny single-process run with validation at each of its 2 steps and the default tracker (TensorBoard)."""
    out = tmp_path_factory.mktemp("val_single") / "run"
    _run([sys.executable, "-m", "vggt_train.train", *_overrides(train_shards, out)])
    return SimpleNamespace(out=out, dataset=train_shards)


# -- the pooled metrics ---------------------------------------------------------------------------------------
def _record(index, rot, trans, depth=(), losses=None):
    return {"index": index, "losses": losses or {"objective": float(index)}, "terms": ["objective"], "sources": None,
            "rot": np.asarray(rot, dtype=np.float64), "trans": np.asarray(trans, dtype=np.float64), "depth": list(depth)}


def test_auc_is_pose_auc_of_the_errors_pooled_over_all_ranks():
    rng = np.random.default_rng(0)
    errors = [(rng.uniform(0, 40, n), rng.uniform(0, 40, n)) for n in (6, 3, 10, 1)]
    records = [_record(i, r, t, depth=[(0.1 * (i + 1), 0.5)]) for i, (r, t) in enumerate(errors)]
    rot, trans = np.concatenate([e[0] for e in errors]), np.concatenate([e[1] for e in errors])
    out = val_metrics.merge(records)
    assert out["auc@30"] == pose_auc(rot, trans, 30, percent=True)
    assert (out["rra@15"], out["rta@15"]) == tuple(100 * x for x in rra_rta(rot, trans, 15))
    assert out["depth_abs_rel"] == pytest.approx(0.25) and out["depth_delta_1.25"] == pytest.approx(50.0)
    assert out["objective"] == pytest.approx(1.5)
    # the mean of per-rank AUCs is not the pooled AUC: the helper must pool, not average
    halves = [val_metrics.merge(records[:2])["auc@30"], val_metrics.merge(records[2:])["auc@30"]]
    assert out["auc@30"] != pytest.approx(np.mean(halves))
    # two ranks' records gathered in either order merge to exactly the single process's result
    rank0, rank1 = records[0::2], records[1::2]
    assert val_metrics.merge(rank1 + rank0) == out == val_metrics.merge(rank0 + rank1)
    assert val_metrics.merge([]) is None
    assert "auc@30" not in val_metrics.merge([_record(0, [], [])])  # no pairs (one image per sample): no AUC


def test_gather_on_one_process_is_its_own_records():
    records = [_record(0, [1.0], [2.0])]
    assert val_metrics.gather(SimpleNamespace(num_processes=1), records) == records


def test_the_draw_is_the_same_items_at_every_validation_and_on_any_number_of_processes(train_shards, tmp_path):
    cfg = load_config(None, _overrides(train_shards, tmp_path / "run") + ["train.val_steps=5"])
    data = TrainData(cfg)

    def items(world):
        per_rank = [[(i, b.seq_names, [list(f) for f in b.frame_ids], c) for i, b, c in data.val_draw(r, world)] for r in range(world)]
        assert len({len(p) for p in per_rank}) == 1  # every rank runs the same number of forwards
        return {i: (names, frames) for part in per_rank for i, names, frames, counted in part if counted}

    one = items(1)
    assert sorted(one) == list(range(5))
    assert items(2) == one == items(3) == items(1)


def test_the_sample_grid_has_a_row_per_frame_and_four_columns():
    B, S, H, W = 2, 6, 14, 21
    depth = torch.rand(B, S, H, W) + 1
    batch = {"images": torch.rand(B, S, 3, H, W), "depths": depth, "point_masks": torch.ones(B, S, H, W, dtype=torch.bool)}
    preds = {"depth": 3 * depth[..., None], "depth_conf": torch.rand(B, S, H, W) + 1}
    grid = visuals.sample_grid(batch, preds)
    assert grid.shape == (4 * H, 4 * W, 3) and grid.dtype == np.uint8
    # the prediction is scaled to the truth before colouring: a prediction 3x the truth looks the same
    assert np.array_equal(grid[:, W:2 * W], grid[:, 2 * W:3 * W])
    assert np.array_equal(grid[:H, :W], (batch["images"][0, 0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    batch["point_masks"][0, 0, :, :3] = False  # invalid true depth is black, the prediction is still drawn
    grid = visuals.sample_grid(batch, preds)
    assert (grid[:H, 2 * W:2 * W + 3] == 0).all() and (grid[:H, W:W + 3] != 0).any()


# -- train.log_with ---------------------------------------------------------------------------------------------
def test_log_with_is_checked_and_names_the_field(tmp_path, monkeypatch):
    assert [tracker_names(k) for k in ("tensorboard", "wandb", "all", "none")] == [["tensorboard"], ["wandb"], ["tensorboard", "wandb"], []]
    base = [f"output_dir={tmp_path}", "data.path=x"]
    with pytest.raises(ConfigError, match=r"train.log_with='mlflow'; choose from tensorboard, wandb, all, none"):
        load_config(None, base + ["train.log_with=mlflow"])
    monkeypatch.setattr(train_config.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.log_with=all needs the wandb package"):
        load_config(None, base + ["train.log_with=all"])
    assert load_config(None, base + ["train.log_with=none"]).train.log_with == "none"


# -- a real run -------------------------------------------------------------------------------------------------
def test_a_run_logs_validation_metrics_and_the_sample_image(single_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val = _val_records(single_run.out)
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        for key in METRICS + ("objective", "loss_camera", "loss_conf_depth"):
            assert isinstance(r[key], float), (key, r)
        assert 0 <= r["auc@30"] <= 100 and 0 <= r["rta@15"] <= 100 and 0 <= r["depth_delta_1.25"] <= 100
    # the weights do not move (lr 1e-30) and the draw is fixed: both validations are the same numbers
    assert {k: v for k, v in val[0].items() if k != "step"} == {k: v for k, v in val[1].items() if k != "step"}
    events = glob.glob(str(single_run.out / "tensorboard" / "events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(events[0], size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images = acc.Images("val/sample")
    assert [i.step for i in images] == [1, 2]
    S = TrainData(load_config(None, _overrides(single_run.dataset, single_run.out))).val_planner.step_shape(0)[0]
    assert (images[0].height, images[0].width) == (min(S, 4) * 28, 4 * 28)
    assert {"val/auc@30", "val/rra@15", "val/depth_abs_rel"} <= set(acc.Tags()["scalars"])


def test_plot_metrics_plots_and_summarises_the_validation_auc(single_run, tmp_path, capsys):
    from PIL import Image

    val = _val_records(single_run.out)
    assert cli_main(["plot-metrics", str(single_run.out), "--out", str(tmp_path / "with_auc.png")]) == 0
    printed = capsys.readouterr().out
    assert f"validation AUC@30 {val[0]['auc@30']:.2f} -> {val[-1]['auc@30']:.2f}" in printed
    # without AUC in the log: one panel, a shorter figure
    lines = [json.loads(line) for line in (single_run.out / "metrics.jsonl").read_text().splitlines()]
    plain = tmp_path / "plain" / "metrics.jsonl"
    plain.parent.mkdir()
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "auc@30"}) + "\n" for r in lines))
    assert cli_main(["plot-metrics", str(plain), "--out", str(tmp_path / "plain.png")]) == 0
    assert "AUC@30" not in capsys.readouterr().out
    assert Image.open(tmp_path / "with_auc.png").height > Image.open(tmp_path / "plain.png").height


def test_two_processes_validate_exactly_as_one(single_run, tmp_path):
    """ZeRO-2 on 2 CPU processes, no tracker: the same validation records as the single process (the draw of 3
    items splits 2 + 1, plus one uncounted repeat)."""
    out = tmp_path / "run"
    accel = write_accelerate_config(tmp_path / "accel.yaml", REPO / "ds_configs" / "zero2.json", 2, port=free_port())
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accel), "-m", "vggt_train.train",
          *_overrides(single_run.dataset, out), "train.max_steps=1", "train.log_with=none"])
    assert not (out / "tensorboard").exists()
    one, two = _val_records(single_run.out), _val_records(out)
    assert [r["step"] for r in two] == [1]
    for a, b in zip(one[:1], two):
        assert sorted(a) == sorted(b)
        for key, value in a.items():  # the same forwards, summed in item order: equal up to rounding (here: bit-equal)
            assert b[key] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value), key


def test_log_with_wandb_runs_offline(train_shards, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    _run([sys.executable, "-m", "vggt_train.train", *_overrides(train_shards, out), "train.max_steps=1", "train.log_with=wandb"],
         env_extra={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true"})
    runs = list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert not (out / "tensorboard").exists()
    media = list(runs[0].rglob("val/sample_*.png"))
    assert media, sorted(str(p.relative_to(runs[0])) for p in runs[0].rglob("*"))
