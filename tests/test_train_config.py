"""Training config, schedule, freezing, clipping and checkpoint bookkeeping (unit level, no processes launched)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vggt_train.train import checkpoints
from vggt_train.train.config import ConfigError, OptimConfig, load_config
from vggt_train.train.optim import clip_by_group, clip_gradients, freeze_modules, lr_at, param_groups

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["finetune_co3d", "ascend_reference", "demo_cpu"])
def test_shipped_configs_load(name):
    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"), ["data.path=/data"])
    assert cfg.data.path == "/data"


def test_ascend_reference_is_the_reference_workload():
    cfg = load_config(str(REPO / "configs" / "ascend_reference.yaml"), ["data.path=/data"])
    assert cfg.data.img_nums == [2, 2] and cfg.data.max_img_per_gpu // 2 == 15 and cfg.data.img_size == 518
    assert cfg.model.frozen == ["aggregator*"] and cfg.data.aspect_range == [1.0, 1.0]


def test_official_recipe_defaults():
    cfg = load_config(str(REPO / "configs" / "finetune_co3d.yaml"), ["data.path=/data"])
    assert cfg.optim.lr == 5e-5 and cfg.optim.weight_decay == 0.05 and cfg.optim.warmup_ratio == 0.05
    assert cfg.data.img_nums == [2, 24] and cfg.data.max_img_per_gpu == 48 and cfg.data.img_size == 518
    assert cfg.loss.camera["weight"] == 5.0 and cfg.loss.depth["weight"] == 1.0
    assert cfg.train.mixed_precision == "bf16"


def test_overrides_are_typed_and_merge_into_sections():
    cfg = load_config(None, ["data.path=/d", "train.max_steps=7", "data.img_nums=[2,4]", "loss.depth.weight=2.5",
                             "kernels.attention=npu", "model.frozen=[aggregator*]", "model.allow_random_frozen=true",
                             "resume=auto"])
    assert cfg.train.max_steps == 7 and cfg.data.img_nums == [2, 4]
    assert cfg.loss.depth == {"weight": 2.5, "gradient_loss_fn": "grad", "valid_range": 0.98}
    assert cfg.kernels == {"attention": "npu"} and cfg.model.frozen == ["aggregator*"] and cfg.resume == "auto"


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.presett=tiny", "model.presett"),
        ("bogus=1", "bogus"),
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.img_size=500", "data.img_size"),
        ("data.img_nums=[4,2]", "data.img_nums"),
        ("data.max_img_per_gpu=3", "data.max_img_per_gpu"),
        ("optim.lr=-1", "optim.lr"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("model.preset=huge", "model.preset"),
        ("model.disable_heads=[camera_head]", "loss.camera"),
        ("model.disable_heads=[track_head]", "model builds point_head but loss.point is off"),
        ("model.checkpoint=/nope.pt", "model.checkpoint"),
        ("data.frame_sampling=sorted", "data.frame_sampling"),
        ("train.mixed_precision=fp16", "train.mixed_precision=fp16 is not supported"),
        ("optim.clip_mode=norm", "optim.clip_mode"),
        ("loss.camera.wieght=3", "loss: camera loss: unknown option.*wieght"),
        ("loss.depth.weight=heavy", "loss:"),
        ("optim.lr=.inf", "optim.lr=inf must be a finite number > 0"),
        ("optim.lr=.nan", "optim.lr=nan must be a finite number > 0"),
        ("optim.end_lr=-1", "optim.end_lr=-1.0 must be a finite number >= 0"),
        ("optim.start_lr=-1", "optim.start_lr=-1.0 must be a finite number >= 0"),
        ("optim.eps=-1", "optim.eps=-1.0 must be a finite number > 0"),
        ("optim.eps=0", "optim.eps=0.0 must be a finite number > 0"),
        ("train.seed=-1", "train.seed=-1 must be in"),
        ("train.peak_tflops=-3", "train.peak_tflops=-3.0 must be"),
        ("data.patch_size=16", "data.patch_size=16 must be the model's patch size"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace(r"\.*", ".*")):
        load_config(None, ["data.path=/d", override])


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: .*max_steps"):
        load_config(None, ["data.path=/d", "train.max_step=3"])


def test_missing_data_path_is_named():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(None, [])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: runs/x\ntrain: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3:1: not valid YAML: expected ',' or ']'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "none.yaml"))


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=5e-5, warmup_ratio=0.05, start_lr=1e-8, end_lr=1e-8)
    assert lr_at(0, 1000, cfg) == pytest.approx(1e-8)
    assert lr_at(25, 1000, cfg) == pytest.approx((1e-8 + 5e-5) / 2, rel=1e-6)
    assert lr_at(50, 1000, cfg) == pytest.approx(5e-5)
    assert lr_at(525, 1000, cfg) == pytest.approx((5e-5 + 1e-8) / 2, rel=1e-6)
    assert lr_at(1000, 1000, cfg) == pytest.approx(1e-8)
    values = [lr_at(s, 1000, cfg) for s in range(50, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_freeze_by_glob_and_param_groups():
    from vggt_train.model import VGGT

    model = VGGT.from_preset("tiny", track_head=None)
    frozen = freeze_modules(model, ["aggregator*"])
    assert frozen and all(n.startswith("aggregator") for n in frozen)
    assert not any(p.requires_grad for p in model.aggregator.parameters())
    groups = param_groups(model, 0.05)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = [names[id(p)] for p in groups[1]["params"]]
    assert groups[1]["weight_decay"] == 0.0 and "camera_head.empty_pose_tokens" in undecayed
    assert all(n.endswith(("bias", "weight", "gamma", "tokens")) for n in undecayed)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.05
    with pytest.raises(ConfigError, match="matches no parameter"):
        freeze_modules(model, ["agregator*"])


def test_clip_by_group_clips_each_group_to_its_norm():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)})
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    norms = clip_by_group(model, {"a": 1.0})
    a_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model["a"].parameters()]))
    assert norms["a"] > 1.0 and a_norm == pytest.approx(1.0, rel=1e-4)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model["b"].parameters()])) > 5
    model["b"].weight.grad[0, 0] = float("nan")
    assert not math.isfinite(clip_by_group(model, {"a": 1.0})["total"])


def test_global_clip_mode_clips_all_gradients_together_at_the_smallest_norm():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)})
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    before = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    norms = clip_gradients(model, OptimConfig(clip_groups={"a": 2.0, "b": 0.5}, clip_mode="global"))
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norms["total"] == pytest.approx(float(before), rel=1e-5) and float(after) == pytest.approx(0.5, rel=1e-4)
    # per_group is the default and clips "b" alone to 0.5 and "a" to 2
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    clip_gradients(model, OptimConfig(clip_groups={"a": 2.0, "b": 0.5}))
    group_norm = lambda m: float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])))  # noqa: E731
    assert group_norm(model["a"]) == pytest.approx(2.0, rel=1e-4) and group_norm(model["b"]) == pytest.approx(0.5, rel=1e-4)


def test_metrics_log_is_strict_json_and_resume_drops_a_cut_line(tmp_path):
    import json

    from vggt_train.train.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"step": step, "split": "train", "loss": float("nan") if step == 2 else 0.5, "grad_norm": float("inf")})
    with log.path.open("a") as f:
        f.write('{"step": 4, "split": "tr')  # a crash in the middle of a write
    lines = log.path.read_text().splitlines()
    assert json.loads(lines[1], parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))["loss"] is None
    log.truncate_after(2)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]


def test_checkpoint_files_are_synced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = checkpoints.os.fsync
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    tmp = checkpoints.temporary_dir(tmp_path, 1)
    (tmp / "shard").mkdir(parents=True)
    (tmp / "shard" / "a.bin").write_bytes(b"x" * 10)
    checkpoints.finalize(tmp, checkpoints.step_dir(tmp_path, 1), {"step": 1})
    assert len(synced) >= 5  # a.bin, trainer_state.json, their two directories, the checkpoints root


def test_checkpoint_bookkeeping(tmp_path):
    out = tmp_path / "run"
    for step in (1, 2, 3):
        tmp = checkpoints.temporary_dir(out, step)
        tmp.mkdir(parents=True)
        (tmp / "weights").write_text(str(step))
        checkpoints.finalize(tmp, checkpoints.step_dir(out, step), {"step": step})
    partial = checkpoints.temporary_dir(out, 4)
    partial.mkdir()
    incomplete = checkpoints.step_dir(out, 5)
    incomplete.mkdir()  # no trainer_state.json: never taken for a checkpoint
    assert checkpoints.latest_complete(out).name == "step_00000003"
    removed = checkpoints.prune(out, keep_last=2)
    assert [p.name for p in removed] == ["step_00000001"]
    assert [p.name for p in checkpoints.list_complete(out)] == ["step_00000002", "step_00000003"]
    assert not partial.exists()


def test_a_data_path_without_shards_is_a_config_error(tmp_path):
    from vggt_train.train.data import TrainData

    cfg = load_config(None, [f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match="data.path=.*convert-co3d"):
        TrainData(cfg)


def test_an_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="output_dir=.*out' exists and is not a directory"):
        load_config(None, ["data.path=/d", f"output_dir={tmp_path / 'out'}"])


def test_the_finite_check_reads_a_zero3_partition_without_its_padding():
    """ZeRO-3 pads every rank's partition to one size and never writes the padding (it may hold NaN): only the
    real elements decide whether the weights are finite."""
    from vggt_train.train.loop import _params_finite

    model = torch.nn.Linear(3, 1, bias=False)  # 3 weights, partition of 4: one element of padding
    p = model.weight
    p.ds_numel = 3
    p.ds_tensor = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    assert _params_finite(model)
    p.ds_tensor[1] = float("inf")
    assert not _params_finite(model)
