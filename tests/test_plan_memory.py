"""`vggt-train plan-memory` and the trainer's start-up memory check (vggt_train.train.plan_memory): the plan's
parts, its accuracy against a real training step, the JSON, and the refusal of a plan that cannot fit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from vggt_train import cli, kernels
from vggt_train.errors import TrainingError
from vggt_train.train import activation_memory as am
from vggt_train.train import plan_memory as pm
from vggt_train.train.config import load_config

GIB = 2**30


def _cfg(*overrides):
    return load_config(None, ["data.path=/unused", *overrides])


@pytest.mark.skipif(am.unavailable() is not None, reason=str(am.unavailable()))
@pytest.mark.parametrize("kind,samples,frames", [("full_checkpointed", 1, 4), ("full_checkpointed", 1, 8),
                                                 ("frozen_aggregator", 1, 2), ("frozen_aggregator", 3, 2)])
def test_plan_is_within_15_percent_of_a_real_training_step(kind, samples, frames):
    """The plan (stored fits, analytic states) against a real step on the CPU: the trainer's loss, backward and an
    AdamW step, every live tensor counted by MemTracker. Both sides of the heads' knee (head_chunk_frames = 4
    images: all the heads' activations kept up to it, one chunk's at a time beyond)."""
    w = am.workload_of(kind, "tiny", samples, frames, 112)
    step = am.measure(w, fake=False, optimizer_step=True, real_loss=True)
    frozen = ["model.frozen=[aggregator*]", "model.allow_random_frozen=true"] if kind == "frozen_aggregator" else []
    cfg = _cfg("model.preset=tiny", "data.img_size=112", f"data.img_nums=[{frames},{frames}]",
               f"data.max_img_per_gpu={samples * frames}", *frozen)
    p = pm.plan(cfg, cards=1, card_gib=80)
    assert p.images == samples * frames and p.workload == kind
    assert p.weights == step.params and p.grads == step.grads
    assert p.total == pytest.approx(step.peak_total, rel=0.15)


def test_plan_parts_follow_the_strategy():
    cfg = _cfg("model.preset=vggt_1b", "data.img_nums=[24,24]", "data.max_img_per_gpu=24")
    ddp, z2, z3 = (pm.plan(cfg, 8, 80, s) for s in ("ddp", "zero2", "zero3"))
    assert ddp.weights == z2.weights > z3.weights and ddp.grads > z2.grads
    assert ddp.activations == z2.activations == z3.activations > 0
    assert ddp.buffers == pytest.approx(ddp.grads)  # DDP's buckets: a second copy of the gradients
    assert pm.plan(cfg, 1, 80, "ddp").buffers < 1e6  # one process: no buckets
    # a bigger card never fits fewer images
    assert all(pm.plan(cfg, 8, 141, s).max_img_per_gpu[s] >= ddp.max_img_per_gpu[s] for s in ("ddp", "zero3"))
    with pytest.raises(pm.PlanError, match="strategy"):
        pm.plan(cfg, 8, 80, "fsdp")
    with pytest.raises(pm.PlanError, match="bench/activation_memory.py"):
        pm.plan(cfg, 8, 80, fits={})


def test_deepspeed_bf16_mode_halves_weights_and_gradients_under_zero():
    base = ["model.preset=vggt_1b", "data.img_nums=[8,8]", "data.max_img_per_gpu=8"]
    fp32, bf16 = (pm.plan(_cfg(*base, f"train.deepspeed_bf16={v}"), 8, 80, "zero2") for v in ("false", "true"))
    assert bf16.weights == fp32.weights / 2 and bf16.grads == fp32.grads / 2
    assert bf16.optimizer == fp32.optimizer  # float32 master weights + Adam m, v either way
    assert bf16.activations == fp32.activations and any("deepspeed_bf16" in n for n in bf16.notes)


def test_vggt_1b_24_frames_on_4_cards_of_80_gb():
    """The README's answer: full fine-tuning, 24 frames per sample, 4 x 80 GB."""
    cfg = _cfg("model.preset=vggt_1b", "data.img_nums=[24,24]", "data.max_img_per_gpu=24")
    best = pm.plan(cfg, 4, 80, "zero2").max_img_per_gpu
    assert best["zero2"] >= 24  # ZeRO-2 (or 3) with checkpointing fits one 24-frame sample per card
    no_ckpt = pm.plan(_cfg("model.preset=vggt_1b", "data.img_nums=[24,24]", "data.max_img_per_gpu=24",
                           "model.gradient_checkpointing=false"), 4, 80, "zero2")
    assert not no_ckpt.fits


def test_unfused_attention_and_the_heads_chunks_change_the_plan():
    """The plan follows the kernels and the heads' checkpointing of the config, not only its sizes."""
    base = ["model.preset=vggt_1b", "data.img_nums=[24,24]", "data.max_img_per_gpu=24"]
    fused = pm.plan(_cfg(*base), 4, 80, "zero2")
    unfused = pm.plan(_cfg(*base, "kernels.attention=reference"), 4, 80, "zero2")
    # 24 x 1374 tokens: every global layer's score matrices on top, hundreds of GiB (measured: 205 GiB)
    assert unfused.activations > 10 * fused.activations and not unfused.fits and unfused.max_img_per_gpu["zero3"] == 0
    assert not any("not model" in n for n in unfused.notes)
    # at 2 views the score matrices are small: the plan of the reference workload barely moves
    ref = ["model.preset=vggt_1b", "model.frozen=[aggregator*]", "model.allow_random_frozen=true", "data.img_nums=[2,2]",
           "data.max_img_per_gpu=2"]
    assert pm.plan(_cfg(*ref, "kernels.attention=reference"), 1, 64).activations == pytest.approx(
        pm.plan(_cfg(*ref), 1, 64).activations, rel=0.05)
    # heads decoded 24 frames at a time keep them all for backward; without head checkpointing, the same
    whole = pm.plan(_cfg(*base, "model.head_chunk_frames=24"), 4, 80, "zero2")
    off = pm.plan(_cfg(*base, "model.head_checkpointing=false"), 4, 80, "zero2")
    assert whole.activations == off.activations > fused.activations + 5 * GIB
    assert not fused.notes
    # a point head doubles the heads' term
    points = pm.plan(_cfg(*base, "model.disable_heads=[track_head]", "loss.point.weight=1.0"), 4, 80, "zero2")
    assert points.activations > fused.activations and any("2 dense heads" in n for n in points.notes)
    # also with both heads kept whole: the whole heads' term (their own slope beyond the fit's chunk) twice
    points_whole = pm.plan(_cfg(*base, "model.disable_heads=[track_head]", "loss.point.weight=1.0",
                                "model.head_checkpointing=false"), 4, 80, "zero2")
    one_head_whole = pm.load_fits()["vggt_1b"]["full_checkpointed"]["per_head_token_whole"] * 24 * 1374
    assert points_whole.activations - off.activations == pytest.approx(one_head_whole)


def test_cli_json(capsys):
    assert cli.main(["plan-memory", "--card-gb", "64", "--cards", "8", "--zero", "2", "--frames", "8", "--json",
                     "model.preset=vggt_1b", "data.max_img_per_gpu=8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["per_card_gib"]) == {"weights", "grads", "optimizer", "activations", "buffers", "total"}
    assert out["card_gib"] == 64 and isinstance(out["fits"], bool)
    assert set(out["max_img_per_gpu"]) == {"ddp", "zero1", "zero2", "zero3"}
    parts = out["per_card_gib"]
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert cli.main(["plan-memory", "--card-gb", "80", "model.preset=tiny"]) == 0
    assert "largest data.max_img_per_gpu" in capsys.readouterr().out
    assert cli.main(["plan-memory", "--card-gb", "80", "model.preset=nope"]) != 0
    assert "model.preset" in capsys.readouterr().err


def test_card_memory_is_read_on_accelerators_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GIB))
    assert pm.device_memory_bytes(torch.device("cuda", 0)) == 80 * GIB
    assert pm.device_memory_bytes(torch.device("cpu")) is None
    monkeypatch.setattr(torch, "npu", SimpleNamespace(get_device_properties=lambda d: SimpleNamespace(total_memory=64 * GIB)), raising=False)
    assert pm.device_memory_bytes(torch.device("meta")) is None
    assert pm.device_memory_bytes(SimpleNamespace(type="npu")) == 64 * GIB


def _accelerator(device_type: str, processes: int = 1, zero_stage=None):
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    return SimpleNamespace(device=torch.device(device_type), num_processes=processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def test_a_plan_that_cannot_fit_is_refused_on_a_card_with_known_memory(monkeypatch):
    cfg = _cfg("model.preset=vggt_1b", "data.img_nums=[2,2]", "data.max_img_per_gpu=96")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=64 * 10**9))
    with pytest.raises(TrainingError) as exc:
        pm.refuse_unfit_plan(cfg, _accelerator("cuda", 8))
    message = str(exc.value)
    assert "\n" not in message and "does not fit" in message and "activations" in message
    assert "data.max_img_per_gpu<=" in message and "train.check_memory=false" in message
    pm.refuse_unfit_plan(cfg, _accelerator("cpu", 8))  # the CPU: no card to check against
    cfg.train.check_memory = False
    pm.refuse_unfit_plan(cfg, _accelerator("cuda", 8))
    small = _cfg("model.preset=vggt_1b", "data.img_nums=[2,2]", "data.max_img_per_gpu=2")
    pm.refuse_unfit_plan(small, _accelerator("cuda", 8, zero_stage=2))  # fits: no error
    # the attention kernel the run will use, not only the config's: 24 frames fit with a fused kernel, not without
    long = _cfg("model.preset=vggt_1b", "data.img_nums=[24,24]", "data.max_img_per_gpu=24")
    pm.refuse_unfit_plan(long, _accelerator("cuda", 1))
    monkeypatch.setenv(kernels.ENV_VAR, "attention=reference")
    try:
        with pytest.raises(TrainingError, match="a fused attention kernel"):
            pm.refuse_unfit_plan(long, _accelerator("cuda", 1))
    finally:
        monkeypatch.delenv(kernels.ENV_VAR)
        kernels.reset()


def test_the_trainer_checks_before_building_the_model(monkeypatch, tmp_path):
    from vggt_train.train import data as train_data
    from vggt_train.train import loop

    class Data:
        def __init__(self, cfg):
            pass

        def nominal_samples_per_rank(self):
            return 1

    built = []
    monkeypatch.setattr(train_data, "TrainData", Data)
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: built.append(1) or (_ for _ in ()).throw(RuntimeError("built")))
    monkeypatch.setattr(pm, "device_memory_bytes", lambda device: 2 * GIB)  # as if the CPU were a 2 GiB card
    cfg = load_config(None, [f"data.path={tmp_path}", f"output_dir={tmp_path}", "model.preset=small", "train.device=cpu"])
    with pytest.raises(TrainingError, match="does not fit"):
        loop.Trainer(cfg)
    assert not built
    cfg.train.check_memory = False
    with pytest.raises(RuntimeError, match="built"):
        loop.Trainer(cfg)
