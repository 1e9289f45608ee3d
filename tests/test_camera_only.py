"""Camera-only data (frames without depth): stored with an empty depth, read as all-invalid depth with has_depth
False, normalised by the cameras, supervised by the camera term only (never NaN), and counted per term in the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vggt_train.cli import main as cli_main
from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.sampler import SampleSpec
from vggt_train.data.sources.memory import InMemorySource
from vggt_train.data.synthetic_colmap import make_synthetic_colmap
from vggt_train.losses import MultitaskLoss, term_sample_counts
from vggt_train.losses.camera import camera_loss

REPO = Path(__file__).resolve().parents[1]


def _frames(depth_of, n=4, seed=0):
    """n frames of a camera moving along x; depth_of(i) -> True to give frame i a depth map."""
    rng = np.random.default_rng(seed)
    K = np.array([[40.0, 0, 31.5], [0, 40, 23.5], [0, 0, 1]])
    out = []
    for i in range(n):
        E = np.concatenate([np.eye(3), [[-0.5 * i], [0.0], [0.0]]], 1)  # camera centre at x = 0.5 i
        depth = rng.uniform(2, 4, (48, 64)).astype(np.float32) if depth_of(i) else None
        out.append({"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "depth": depth, "extrinsic": E, "intrinsic": K})
    return out


def test_a_camera_only_sample_is_marked_masked_and_scaled_by_its_cameras():
    src = InMemorySource({"cams": _frames(lambda i: False), "mixed": _frames(lambda i: i % 2 == 0, seed=1)})
    ds = MultiViewDataset.from_source(src, img_size=28, augment=False)
    batch = ds.load_batch([SampleSpec("cams", (0, 1, 2, 3), 0), SampleSpec("mixed", (0, 1, 2, 3), 0)], 1.0, normalize=True)
    assert batch["has_depth"].tolist() == [[False] * 4, [True, False, True, False]]
    assert not batch["point_masks"][0].any() and batch["point_masks"][1, 0].any() and not batch["point_masks"][1, 1].any()
    assert torch.equal(batch["depths"][0], torch.zeros_like(batch["depths"][0]))
    for k in ("extrinsics", "world_points", "cam_points", "depths"):
        assert torch.isfinite(batch[k]).all(), k
    # the camera-only sample: centres 0, 0.5, 1, 1.5 from camera 0 -> mean 0.75 -> unit mean after scaling
    centres = -(batch["extrinsics"][0, :, :, :3].transpose(-1, -2) @ batch["extrinsics"][0, :, :, 3:])[..., 0]
    torch.testing.assert_close(centres.norm(dim=-1).mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    # the mixed sample is still scaled by its points (unit mean distance of the valid world points)
    m = batch["point_masks"][1]
    torch.testing.assert_close(batch["world_points"][1][m].norm(dim=-1).mean(), torch.tensor(1.0), atol=1e-3, rtol=0)


def test_camera_only_samples_get_the_camera_loss_and_no_dense_loss():
    src = InMemorySource({"cams": _frames(lambda i: False), "depth": _frames(lambda i: True, seed=2)})
    ds = MultiViewDataset.from_source(src, img_size=28, augment=False)
    batch = ds.load_batch([SampleSpec("cams", (0, 1, 2), 0), SampleSpec("depth", (0, 1, 2), 0)], 1.0, normalize=True)
    assert term_sample_counts(batch) == {"camera": 2, "depth": 1, "point": 1}
    B, S, H, W = batch["depths"].shape
    torch.manual_seed(0)
    preds = {"pose_enc_list": [torch.randn(B, S, 9)], "depth": torch.rand(B, S, H, W, 1) + 0.5, "depth_conf": torch.rand(B, S, H, W) + 1,
             "world_points": torch.randn(B, S, H, W, 3), "world_points_conf": torch.rand(B, S, H, W) + 1}
    with_cams = camera_loss(preds, batch)["loss_camera"]
    without = camera_loss(preds, {**batch, "has_depth": torch.ones(B, S, dtype=torch.bool)})["loss_camera"]
    assert not torch.isclose(with_cams, without)  # the camera-only sample is in the camera term
    only_cams = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    only_preds = {k: ([p[:1] for p in v] if isinstance(v, list) else v[:1]) for k, v in preds.items()}
    losses = MultitaskLoss(camera={"weight": 5.0}, depth={"weight": 1.0}, point={"weight": 1.0})(only_preds, only_cams)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_reg_depth"]) == 0.0 and float(losses["loss_camera"]) > 0.0
    assert term_sample_counts(only_cams) == {"camera": 1, "depth": 0, "point": 0}


@pytest.fixture(scope="module")
def camera_only_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("camera_only")
    make_synthetic_colmap(str(base / "raw"), workspaces=2, frames=6, size=(42, 56), seed=3, dense_depth=False)
    assert cli_main(["convert-colmap", "--input", str(base / "raw"), "--out", str(base / "out"), "--workers", "1", "--quiet"]) == 0
    return base / "out"


def test_camera_only_rows_verify_and_read_without_depth(camera_only_shards, capsys):
    assert cli_main(["verify-dataset", str(camera_only_shards)]) == 0
    ds = MultiViewDataset(str(camera_only_shards), "train", img_size=28)
    sample = ds.get_sample(ds.sequences[0], [0, 2, 4], 1.0, aug_seed=1)
    assert not sample["has_depth"].any() and not sample["point_masks"].any()
    assert ds.bad_frames == 0


def test_training_on_camera_only_data_logs_the_samples_each_term_saw(camera_only_shards, tmp_path):
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.path={camera_only_shards}", "model.preset=tiny", "model.gradient_checkpointing=false",
                 "data.img_size=28", "data.img_nums=[2,2]", "data.max_img_per_gpu=4", "data.num_workers=0", "data.len_train=16",
                 "train.max_steps=2", "train.mixed_precision=no", "train.log_every=1", "train.ckpt_every=0", "train.val_every=0",
                 "train.progress=false"]
    result = subprocess.run([sys.executable, "-m", "vggt_train.train", *overrides], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2
    for r in train:
        assert r["samples_camera"] == r["samples"] == 2 and r["samples_depth"] == 0 and r.get("samples_point", 0) == 0
        assert np.isfinite(r["loss"]) and not r["skipped"]


def test_evaluation_reads_camera_only_frames_with_no_depth_to_score(camera_only_shards):
    from vggt_train.data.sources.shards import ShardSource, resolve_split_dir
    from vggt_train.evaluation.evaluate import _read_views
    from vggt_train.evaluation.protocol import SequencePlan

    source = ShardSource(resolve_split_dir(str(camera_only_shards), "train"))
    seq = source.sequences[0]
    images, depths, extrinsics = _read_views(source, SequencePlan("c", seq, source.num_frames(seq), (0, 3)), 56)
    assert images.shape[0] == depths.shape[0] == extrinsics.shape[0] == 2
    assert depths.shape[-2:] == images.shape[-2:] and not depths.any()
