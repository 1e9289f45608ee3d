"""Training on a weighted mixture of converted datasets (data.mix): config checks, the planner's per-sample draw of
the dataset (deterministic, world-size invariant, resumable, at the configured frequencies), batches that name
each sample's dataset, per-dataset validation losses, inspect-batch, and a single data.path left bit for bit as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_data import tiny_dataset
from vggt_train.cli import main as cli_main
from vggt_train.data.pipeline.finish import finish_batch
from vggt_train.data.pipeline.sampler import Mixture, StepPlanner, index_info_of
from vggt_train.data.sources.memory import InMemorySource
from vggt_train.data.sources.mixed import MixedSource
from vggt_train.train.config import ConfigError, load_config
from vggt_train.train.data import TrainData
from vggt_train.train.source_losses import select_samples, source_loss_means, source_loss_sums

REPO = Path(__file__).resolve().parents[1]
BASE = ["model.preset=tiny", "data.img_size=42", "data.img_nums=[2,3]", "data.max_img_per_gpu=6",
        "data.aspect_range=[0.5,1.0]", "data.resample_on=worker", "data.num_workers=0"]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    """Two tiny converted datasets: apple + tv (the pipeline tests' one) and bowl, made with another seed."""
    base = tmp_path_factory.getbasetemp()
    return {"a": tiny_dataset(base)["root"], "b": tiny_dataset(base, categories=("bowl",), seed=11, name="pipeline_data_bowl")["root"]}


def _mix(two, wa=0.5, wb=0.5, extra_b="") -> str:
    return f"data.mix=[{{path: {two['a']}, weight: {wa}, name: co3d}}, {{path: {two['b']}, weight: {wb}, name: bowls{extra_b}}}]"


def _digest(batches, skip=("sources", "has_depth")) -> str:
    """sha256 of the batches' keys and values; `skip`: keys newer than the recorded digests."""
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(set(b) - set(skip)):
            v = b[k]
            h.update(k.encode())
            h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
    return h.hexdigest()


def _plans_digest(planner) -> str:
    rows = [(p.step, p.num_images, p.aspect_ratio, [(s.sequence, s.frame_ids, s.aug_seed) for s in p.specs])
            for p in (planner.plan(t, 8) for t in range(20))]
    return hashlib.sha256(repr(rows).encode()).hexdigest()


# -- config -----------------------------------------------------------------------------------------------------
def test_mix_entries_are_typed_and_named(two, tmp_path):
    cfg_file = tmp_path / "mix.yaml"
    cfg_file.write_text(f"data:\n  mix:\n    - {{path: {two['a']}, weight: 0.6}}\n"
                        f"    - {{path: {two['b']}, weight: 0.4, name: bowls, categories: [bowl], val_split: test}}\n")
    cfg = load_config(str(cfg_file), [f"output_dir={tmp_path / 'out'}"])
    a, b = cfg.data.mix
    assert (a.path, a.weight, a.name, a.categories, b.name, b.categories, b.val_split) == (two["a"], 0.6, None, None, "bowls", ["bowl"], "test")
    assert cfg.data.path is None


@pytest.mark.parametrize("mix, field", [
    ("[]", "data.mix is empty"),
    ("[{weight: 1.0}]", "data.mix[0].path is required"),
    ("[{path: A, weight: 0}]", "data.mix[0].weight=0.0 must be"),
    ("[{path: A, weight: 1}, {path: A, weight: -2}]", "data.mix[1].weight=-2.0 must be"),
    ("[{path: A}, {path: /nowhere/x}]", "data.mix[1].path='/nowhere/x': directory not found"),
    ("[{path: A, name: x}, {path: B, name: x}]", "data.mix[1].name='x' is also the name of data.mix[0]"),
    ("[{path: A}, {path: B}]", "data.mix[1].name='hf' is also"),  # both default to their last path component
    ("[{path: A, name: a/b}]", "data.mix[0].name='a/b' must be"),
    ("[{path: A, wieght: 1}]", "unknown key(s) data.mix[0].wieght"),
])
def test_bad_mix_entries_name_the_field(two, mix, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"data.mix={mix.replace('A', two['a']).replace('B', two['b'])}"])
    assert field in str(err.value)


def test_path_and_mix_together_name_both_and_raw_layout_is_refused(two):
    with pytest.raises(ConfigError, match=r"data\.path=.* and data\.mix are both set"):
        load_config(None, [f"data.path={two['a']}", _mix(two)])
    with pytest.raises(ConfigError, match=r"data\.mix reads converted datasets only: data\.raw_annotation_dir"):
        load_config(None, [_mix(two), f"data.raw_annotation_dir={two['a']}"])


def test_a_mix_entry_without_its_split_or_categories_is_named(two, tmp_path):
    cfg = load_config(None, [_mix(two, extra_b=", train_split: nope"), f"output_dir={tmp_path}", *BASE])
    with pytest.raises(ConfigError, match=r"data\.mix\[1\]\.path=.* / train_split='nope'"):
        TrainData(cfg)
    cfg = load_config(None, [_mix(two, extra_b=", categories: [tv]"), f"output_dir={tmp_path}", *BASE])
    with pytest.raises(ConfigError, match=r"data\.mix\[1\]\.path=.*no sequences of category"):
        TrainData(cfg)


# -- the planner ------------------------------------------------------------------------------------------------
INFO = index_info_of(["a/s0", "a/s1", "a/s2", "b/s0", "b/s1"], [24, 30, 20, 12, 40])
MIX = Mixture(("a", "b"), (0.7, 0.3), ((0, 3), (3, 5)))


def _planner(**kw):
    return StepPlanner(INFO, img_nums=(2, 6), aspect_range=(0.5, 1.0), seed=5, max_img_per_gpu=12, mixture=MIX, **kw)


def test_each_sample_draws_its_dataset_by_weight_and_a_sequence_within_it():
    p = _planner()
    specs = [s for t in range(600) for s in p.plan(t, 8).specs]
    share_a = np.mean([s.source == "a" for s in specs])
    assert abs(share_a - 0.7) < 0.03  # 4800 draws: the standard error is 0.0066
    assert all(s.sequence.startswith(s.source + "/") for s in specs)
    assert {s.sequence for s in specs} == set(INFO.sequences)  # every sequence of each dataset is reached
    mixed_batches = sum(len({s.source for s in p.plan(t, 8).specs}) > 1 for t in range(50))
    assert mixed_batches > 40  # the samples of one batch come from different datasets


def test_weights_need_not_sum_to_one_and_a_three_way_mixture_follows_them():
    info = index_info_of(["x/0", "y/0", "y/1", "z/0"], [5, 5, 5, 5])
    p = StepPlanner(info, img_nums=(2, 2), seed=1, max_img_per_gpu=2, mixture=Mixture(("x", "y", "z"), (2.0, 1.0, 1.0), ((0, 1), (1, 3), (3, 4))))
    sources = [p.sample_spec(t, i, 2).source for t in range(1000) for i in range(4)]
    for name, share in (("x", 0.5), ("y", 0.25), ("z", 0.25)):
        assert abs(sources.count(name) / len(sources) - share) < 0.03


def test_mixture_plans_are_deterministic_world_size_invariant_and_resumable():
    p = _planner()
    assert [p.plan(t, 8) for t in range(10)] == [_planner().plan(t, 8) for t in range(10)]
    for t in range(6):
        S, _ = p.step_shape(t)
        whole = p.plan(t, p.global_samples(S, 4)).specs
        for world, accum in ((1, 4), (2, 2), (4, 1)):
            got = [s for m in range(accum) for r in range(world) for s in p.rank_specs(t, r, world, m, accum).specs]
            assert tuple(got) == whole
        assert p.plan(t, 3).specs == whole[:3]  # a smaller global batch is a prefix
    p.advance(7)
    state = p.state_dict()
    assert state["config"]["mixture"] == {"a": 0.7, "b": 0.3}
    resumed = _planner()
    resumed.load_state_dict(state)
    assert resumed.step == 7 and [resumed.plan(t, 8) for t in range(7, 12)] == [p.plan(t, 8) for t in range(7, 12)]
    with pytest.warns(UserWarning, match="mixture"):
        StepPlanner(INFO, img_nums=(2, 6), aspect_range=(0.5, 1.0), seed=5, max_img_per_gpu=12,
                    mixture=Mixture(("a", "b"), (0.5, 0.5), ((0, 3), (3, 5)))).load_state_dict(state)


def test_the_plain_planner_is_unchanged_and_a_one_dataset_mixture_draws_the_same():
    # digests of the planner's output before data.mix existed (the same on numpy 1.26 and 2.x)
    info = index_info_of(["apple_000", "apple_001", "tv_000", "tv_001"], [24, 24, 20, 30])
    plain = StepPlanner(info, img_nums=(2, 6), aspect_range=(0.5, 1.0), seed=7, max_img_per_gpu=12)
    assert _plans_digest(plain) == "81623010475cf23bf12b60a96d64ad34b847a5890fc8670823d9b2af826c19d7"
    nearby = StepPlanner(info, img_nums=(2, 6), seed=7, frame_sampling="nearby", max_img_per_gpu=12)
    assert _plans_digest(nearby) == "fa94b110c7737b8deab6c81c35a4bbe964e968e2ed65ced191b3b896b64744a0"
    assert "mixture" not in plain.state_dict()["config"]
    one = StepPlanner(info, img_nums=(2, 6), aspect_range=(0.5, 1.0), seed=7, max_img_per_gpu=12,
                      mixture=Mixture(("only",), (3.0,), ((0, 4),)))
    assert _plans_digest(one) == _plans_digest(plain)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="weight 0"):
        Mixture(("a",), (0.0,), ((0, 1),))
    with pytest.raises(ValueError, match="no sequences"):
        Mixture(("a",), (1.0,), ((2, 2),))
    with pytest.raises(ValueError, match="exceed"):
        StepPlanner(INFO, mixture=Mixture(("a",), (1.0,), ((0, 9),)))
    src = InMemorySource({"s": [{"image": np.zeros((4, 4, 3), np.uint8), "depth": np.ones((4, 4), np.float32),
                                 "extrinsic": np.eye(4)[:3], "intrinsic": np.eye(3)}]})
    for parts, match in (([], "at least one"), ([("a", src), ("a", src)], "unique"), ([("a/b", src)], "without")):
        with pytest.raises(ValueError, match=match):
            MixedSource(parts)


# -- batches ----------------------------------------------------------------------------------------------------
def test_mixed_batches_name_each_samples_dataset_and_are_world_size_invariant_and_resumable(two, tmp_path):
    cfg = load_config(None, [_mix(two, 0.5, 0.5), f"output_dir={tmp_path}", *BASE])
    data = TrainData(cfg)
    assert data.train_sources == ("co3d", "bowls") and data.val_sources == ()
    one = [finish_batch(b) for _, b in zip(range(4), data.train_stream(0, 1))]
    seen = set()
    for b in one:
        assert len(b["sources"]) == b["images"].shape[0]
        for src, seq, cat in zip(b["sources"], b["seq_names"], b["categories"]):
            assert seq.startswith(src + "/") and (cat == "bowl") == (src == "bowls")
        seen.update(b["sources"])
        if len(set(b["sources"])) > 1:
            seen.add("mixed batch")
    assert seen == {"co3d", "bowls", "mixed batch"}
    two_ranks = []
    streams = [data.train_stream(r, 2) for r in range(2)]
    for _ in range(2):
        parts = [finish_batch(next(s)) for s in streams]
        two_ranks.append({k: (torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], torch.Tensor) else
                              parts[0][k] + parts[1][k] if isinstance(parts[0][k], list) else parts[0][k]) for k in parts[0]})
    # with max_img_per_gpu fixed, 2 ranks hold 2 x B samples: compare with 1 rank x 2 micro-steps
    cfg_acc = load_config(None, [_mix(two, 0.5, 0.5), f"output_dir={tmp_path}", "train.grad_accum_steps=2", *BASE])
    acc = TrainData(cfg_acc).train_stream(0, 1)
    for merged in two_ranks:
        parts = [finish_batch(next(acc)) for _ in range(2)]
        for k, v in merged.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, torch.cat([p[k] for p in parts])), k
            elif k in ("sources", "seq_names", "categories"):
                assert v == parts[0][k] + parts[1][k]
    resumed = [finish_batch(b) for _, b in zip(range(2), TrainData(cfg).train_stream(0, 1, start_step=2))]
    assert _digest(resumed) == _digest(one[2:]) and [b["sources"] for b in resumed] == [b["sources"] for b in one[2:]]


def test_per_entry_categories_and_validation_splits(two, tmp_path):
    cfg = load_config(None, [_mix(two, 1, 1, extra_b=", categories: [bowl]").replace("name: co3d}", "name: co3d, categories: [tv]}"),
                             f"output_dir={tmp_path}", "train.val_every=1", *BASE])
    data = TrainData(cfg)
    assert {data.train_set.source.category(s) for s in data.train_set.sequences} == {"tv", "bowl"}
    assert data.val_sources == ("co3d", "bowls")
    assert {data.val_set.source.category(s) for s in data.val_set.sequences} == {"tv", "bowl"}
    cfg = load_config(None, [_mix(two, extra_b=", val_split: nope"), f"output_dir={tmp_path}", "train.val_every=1", *BASE])
    with pytest.warns(UserWarning, match=r"validation leaves out data\.mix\[1\] \(bowls\)"):
        data = TrainData(cfg)
    assert data.val_sources == ("co3d",)


def test_a_single_data_path_gives_the_batches_it_always_gave(two, tmp_path):
    # digest of 3 micro-batches of rank 0 of 2 made by the code before data.mix existed (equal on torch 2.1 and 2.x)
    cfg = load_config(None, [f"data.path={two['a']}", f"output_dir={tmp_path}", *BASE])
    batches = [finish_batch(b) for _, b in zip(range(3), TrainData(cfg).train_stream(0, 2))]
    assert _digest(batches) == "741e0a3adb261d7abb260b82f9e827ebb0346f6beff63fb5a3375468b977a4b7"
    assert all(b["sources"] == [""] * len(b["seq_names"]) for b in batches)
    # a mixture of that one dataset draws the same frames (only the names carry the dataset's)
    mixed = load_config(None, [f"data.mix=[{{path: {two['a']}, weight: 2.0, name: co3d}}]", f"output_dir={tmp_path}", *BASE])
    again = [finish_batch(b) for _, b in zip(range(3), TrainData(mixed).train_stream(0, 2))]
    assert _digest(again, skip=("sources", "has_depth", "seq_names")) == _digest(batches, skip=("sources", "has_depth", "seq_names"))
    assert all(s == "co3d" for b in again for s in b["sources"])


# -- per-dataset validation ----------------------------------------------------------------------------------
def test_source_losses_are_each_datasets_samples_on_their_own():
    B = 5
    preds = {"x": torch.arange(B, dtype=torch.float32)[:, None].repeat(1, 3), "x_list": [torch.ones(B, 2)] * 2}
    batch = {"images": torch.zeros(B, 1, 3, 2, 2), "sources": ["a", "b", "a", "a", "b"], "seq_names": list("vwxyz"), "step": 3}

    def loss_fn(p, b):
        assert p["x_list"][0].shape[0] == p["x"].shape[0] == len(b["seq_names"]) == b["images"].shape[0]
        return {"objective": p["x"].mean(), "count": torch.tensor(float(len(b["seq_names"])))}

    sums = source_loss_sums(loss_fn, preds, batch, ("a", "b", "c"), ["count", "objective"])
    assert sums.tolist() == [[3, 9, 3 * (0 + 2 + 3) / 3], [2, 4, 2 * (1 + 4) / 2], [0, 0, 0]]
    means = source_loss_means(sums + sums, ("a", "b", "c"), ["count", "objective"])
    assert means == {"a/count": 3.0, "a/objective": 5 / 3, "b/count": 2.0, "b/objective": 2.5}
    picked = select_samples(batch, torch.tensor([4, 0]), B)
    assert picked["seq_names"] == ["z", "v"] and picked["step"] == 3 and picked["images"].shape[0] == 2


def test_a_mixed_training_run_logs_validation_per_dataset(two, tmp_path):
    out = tmp_path / "run"
    overrides = [_mix(two, 0.5, 0.5), f"output_dir={out}", *BASE, "data.img_size=28", "data.augment=false",
                 "model.gradient_checkpointing=false", "train.max_steps=1", "train.val_every=1", "train.val_steps=2",
                 "train.mixed_precision=no", "train.log_every=1", "train.ckpt_every=0", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "vggt_train.train", *overrides], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"][-1]
    for source in ("co3d", "bowls"):
        for term in ("objective", "loss_camera", "loss_conf_depth"):
            assert isinstance(val[f"{source}/{term}"], float), (source, term, sorted(val))
    assert val["co3d/objective"] != val["bowls/objective"]


# -- inspect-batch ----------------------------------------------------------------------------------------------
def test_inspect_batch_draws_from_a_mixture_and_names_each_samples_dataset(two, tmp_path, capsys):
    a, b = Path(two["a"]), tmp_path / "bowls"
    b.symlink_to(two["b"])
    rc = cli_main(["inspect-batch", str(a), str(b), "--weights", "1", "1", "--img-size", "28", "--num-images", "2",
                   "--samples", "6", "--out", str(tmp_path / "out"), "--max-points", "100"])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.strip().startswith("sample ")]
    assert len(lines) == 6 and all(" source hf: hf/" in line or " source bowls: bowls/" in line for line in lines), printed
    assert any("source bowls: bowls/" in line and "(bowl)" in line for line in lines) and any("source hf: hf/" in line for line in lines)
    assert cli_main(["inspect-batch", str(a), str(b), "--weights", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--weights needs one number > 0 per PATH (2)" in capsys.readouterr().err
