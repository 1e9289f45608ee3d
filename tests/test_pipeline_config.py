"""The pipeline as the trainer configures and uses it: the lazy package exports, the typed data.aug / expand_ratio /
resample_on / raw_annotation_dir settings (validated by field name) and their wiring, and a training run on raw
Co3D with unusable sequences whose metrics.jsonl counts the replaced samples and the epoch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_data import tiny_dataset
from vggt_train.data.pipeline.transforms import AugmentConfig, ColorJitterConfig
from vggt_train.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.getbasetemp())


def test_the_data_package_exports_the_pipeline_lazily():
    code = ("import sys, vggt_train.data\n"
            "assert 'torch' not in sys.modules and 'vggt_train.data.pipeline.dataset' not in sys.modules, 'eager import'\n"
            "from vggt_train.data import MultiViewDataset, StepPlanner, RankBatchStream, make_loader, finish_batch\n"
            "assert MultiViewDataset.__module__ == 'vggt_train.data.pipeline.dataset' and callable(finish_batch)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_aug_defaults_mirror_the_recipe_and_overrides_reach_the_dataset(data):
    from vggt_train.train.data import TrainData, augment_config

    assert augment_config(load_config(None, ["data.path=/d"])) == AugmentConfig()
    cfg = load_config(None, [f"data.path={data['root']}", "data.img_size=28", "data.img_nums=[2,4]", "data.max_img_per_gpu=8",
                             "train.val_every=0", "data.aug.cojitter_ratio=0.0", "data.aug.color_jitter.hue=0.05",
                             "data.aug.scale_range=null", "data.aug.landscape_check=true", "data.frame_sampling=nearby",
                             "data.expand_ratio=0.5", "data.resample_on=device"])
    td = TrainData(cfg)
    assert td.train_set.aug == AugmentConfig(scale_range=None, landscape_check=True, cojitter_ratio=0.0,
                                             color_jitter=ColorJitterConfig(hue=0.05))
    assert td.train_set.resample == "device" and td.planner.expand_ratio == 0.5 and td.planner.frame_sampling == "nearby"
    assert augment_config(load_config(None, ["data.path=/d", "data.aug.color_jitter=null"])).color_jitter is None


def test_resample_auto_is_the_device_only_with_an_accelerator():
    from vggt_train.data.pipeline.loader import accelerator_present
    from vggt_train.train.data import resample_placement

    assert resample_placement(load_config(None, ["data.path=/d"])) == ("device" if accelerator_present() else "worker")
    assert resample_placement(load_config(None, ["data.path=/d", "data.resample_on=worker"])) == "worker"


@pytest.mark.parametrize("override,field", [
    ("data.aug.cojitter_ratio=1.5", "data.aug.cojitter_ratio"),
    ("data.aug.grayscale_p=-0.1", "data.aug.grayscale_p"),
    ("data.aug.scale_range=[1.2,0.8]", "data.aug.scale_range"),
    ("data.aug.color_jitter.hue=0.7", "data.aug.color_jitter.hue"),
    ("data.aug.color_jitter.brightness=2", "data.aug.color_jitter.brightness"),
    ("data.aug.color_jitter.p=1.5", "data.aug.color_jitter.p"),
    ("data.aug.jitter=0.5", "data.aug.jitter"),
    ("data.expand_ratio=0", "data.expand_ratio"),
    ("data.resample_on=gpu", "data.resample_on"),
    ("data.raw_annotation_dir=/nonexistent/annotations", "data.raw_annotation_dir"),
])
def test_bad_data_settings_are_named(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, ["data.path=/d", override])


def test_an_aspect_below_one_patch_row_is_rejected_before_any_worker_starts():
    # 518 x 0.02 = 10 px: not one 14 px patch row (it used to fail inside a DataLoader worker)
    with pytest.raises(ConfigError, match=r"data\.aspect_range=.*less than one patch high"):
        load_config(None, ["data.path=/d", "data.aspect_range=[0.02,1.0]"])
    assert load_config(None, ["data.path=/d", "data.aspect_range=[0.03,1.0]"]).data.aspect_range == [0.03, 1.0]


def test_raw_annotation_dir_trains_from_the_raw_layout(data):
    from vggt_train.data.sources.raw_co3d import RawCo3DSource
    from vggt_train.train.data import TrainData

    cfg = load_config(None, [f"data.path={data['co3d_dir']}", f"data.raw_annotation_dir={data['annotation_dir']}",
                             "data.img_size=28", "data.img_nums=[2,2]", "data.max_img_per_gpu=4", "train.val_every=5"])
    td = TrainData(cfg)
    assert isinstance(td.train_set.source, RawCo3DSource) and isinstance(td.val_set.source, RawCo3DSource)
    from vggt_train.data.pipeline.dataset import MultiViewDataset

    assert td.train_set.sequences == MultiViewDataset(data["root"], "train").sequences


def test_training_log_counts_replaced_samples_and_epochs(data, tmp_path):
    """Raw Co3D in which every train sequence but one lost its images: most samples move to another sequence,
    and each step's record in metrics.jsonl says how many (and the epoch, from data.len_train)."""
    co3d = tmp_path / "co3d"
    shutil.copytree(data["co3d_dir"], co3d)
    from vggt_train.data.sources.raw_co3d import RawCo3DSource

    sequences = RawCo3DSource(str(co3d), data["annotation_dir"], "train").sequences
    for seq in sequences[:-1]:
        for images in co3d.glob(f"*/{seq}/images"):
            shutil.rmtree(images)
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.path={co3d}", f"data.raw_annotation_dir={data['annotation_dir']}",
                 "model.preset=tiny", "model.gradient_checkpointing=false", "data.img_size=28", "data.augment=false",
                 "data.img_nums=[2,2]", "data.max_img_per_gpu=8", "data.num_workers=0", "data.len_train=16",
                 "train.max_steps=3", "train.mixed_precision=no", "train.log_every=1", "train.ckpt_every=0",
                 "train.val_every=0", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "vggt_train.train", *overrides], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(0 <= r["replaced_samples"] <= r["samples"] for r in train)
    assert sum(r["replaced_samples"] for r in train) >= 6  # 12 samples, each 3/4 likely to hit a broken sequence
    assert [r["epoch"] for r in train] == [0.25, 0.5, 0.75]  # 4 samples a step, len_train 16


def test_data_categories_keep_training_and_validation_to_those_categories(data):
    import pickle

    from vggt_train.data.pipeline.dataset import MultiViewDataset
    from vggt_train.train.data import TrainData

    everything = MultiViewDataset(data["root"], "train", img_size=28)
    categories = sorted({everything.source.category(s) for s in everything.sequences})
    assert len(categories) == 2
    wanted = categories[1]
    cfg = load_config(None, [f"data.path={data['root']}", f"data.categories=[{wanted}]", "data.img_size=28", "data.img_nums=[2,2]",
                             "data.max_img_per_gpu=2", "train.val_every=1"])
    td = TrainData(cfg)
    for dataset, planner in ((td.train_set, td.planner), (td.val_set, td.val_planner)):
        assert dataset.sequences and {dataset.source.category(s) for s in dataset.sequences} == {wanted}
        assert set(planner.info.sequences) == set(dataset.sequences)
    # DataLoader workers receive the dataset pickled: the filter must travel with it
    again = pickle.loads(pickle.dumps(td.train_set))
    assert again.sequences == td.train_set.sequences
    with pytest.raises(ConfigError, match="no sequences of category \\['nosuch'\\]"):
        TrainData(load_config(None, [f"data.path={data['root']}", "data.categories=[nosuch]", "data.img_size=28"]))
