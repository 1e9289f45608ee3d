"""The training objective: parity with the official VGGT loss, composition, degenerate batches, track loss."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import PARITY_DIR
from vggt_train.geometry import extri_intri_to_pose_encoding
from vggt_train.losses import MultitaskLoss, filter_by_quantile, torch_quantile, track_loss

LOSS_FIXTURE = PARITY_DIR / "loss"
CAMERA_KEYS = {"loss_camera", "loss_T", "loss_R", "loss_FL"}
DEPTH_KEYS = {"loss_conf_depth", "loss_reg_depth", "loss_grad_depth"}
POINT_KEYS = {"loss_conf_point", "loss_reg_point", "loss_grad_point"}


@pytest.fixture(scope="module")
def fixture():
    if not LOSS_FIXTURE.is_dir():
        pytest.fail(f"loss fixture not found at {LOSS_FIXTURE}: the checkout is incomplete")
    from safetensors.torch import load_file

    tensors = load_file(str(LOSS_FIXTURE / "tensors.safetensors"))
    config = json.loads((LOSS_FIXTURE / "loss_config.json").read_text())
    expected = json.loads((LOSS_FIXTURE / "expected_losses.json").read_text())
    return tensors, config, expected


def _predictions(tensors):
    pred = {k[len("pred."):]: v.clone() for k, v in tensors.items() if k.startswith("pred.") and ".pose_enc_list." not in k}
    n = sum(1 for k in tensors if k.startswith("pred.pose_enc_list."))
    pred["pose_enc_list"] = [tensors[f"pred.pose_enc_list.{i}"].clone() for i in range(n)]
    return pred


def _batch(tensors):
    return {k[len("batch."):]: v.clone() for k, v in tensors.items() if k.startswith("batch.")}


# -- parity ----------------------------------------------------------------------------------------------------
def test_loss_matches_official(fixture):
    tensors, config, expected = fixture
    losses = MultitaskLoss(**config)(_predictions(tensors), _batch(tensors))
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].ndim == 0
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key


def test_objective_is_the_weighted_sum_of_enabled_terms(fixture):
    tensors, config, _ = fixture
    config = copy.deepcopy(config)
    config["camera"]["weight"], config["depth"]["weight"], config["point"]["weight"] = 2.0, 0.5, 3.0
    losses = MultitaskLoss(**config)(_predictions(tensors), _batch(tensors))
    expected = (
        2.0 * losses["loss_camera"]
        + 0.5 * sum(losses[k] for k in DEPTH_KEYS)
        + 3.0 * sum(losses[k] for k in POINT_KEYS)
    )
    assert losses["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    camera = losses["loss_T"] * 1.0 + losses["loss_R"] * 1.0 + losses["loss_FL"] * 0.5
    assert losses["loss_camera"].item() == pytest.approx(camera.item(), rel=1e-6)


def test_disabled_heads_have_no_terms(fixture):
    tensors, config, expected = fixture
    losses = MultitaskLoss(camera=None, depth=config["depth"], point=None)(_predictions(tensors), _batch(tensors))
    assert set(losses) == DEPTH_KEYS | {"objective"}
    assert losses["loss_reg_depth"].item() == pytest.approx(expected["loss_reg_depth"], rel=1e-4)
    depth_sum = sum(expected[k] for k in DEPTH_KEYS)
    assert losses["objective"].item() == pytest.approx(depth_sum, rel=1e-4)
    # an enabled term whose prediction is missing (a model built without that head) is an error, not a silent no-op
    pred = _predictions(tensors)
    del pred["world_points"], pred["world_points_conf"]
    with pytest.raises(ValueError, match="loss.point is enabled but the model predicted no 'world_points'.*point_head"):
        MultitaskLoss(**config)(pred, _batch(tensors))


def test_an_enabled_term_without_its_ground_truth_is_an_error(fixture):
    tensors, config, _ = fixture
    batch = _batch(tensors)
    with pytest.raises(ValueError, match="loss.track is enabled but the batch has no tracks, track_vis_mask"):
        MultitaskLoss(**config, track={"weight": 1.0})(_predictions(tensors), batch)
    del batch["world_points"]
    with pytest.raises(ValueError, match="loss.point is enabled but the batch has no world_points"):
        MultitaskLoss(**config)(_predictions(tensors), batch)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="gamme"):
        MultitaskLoss(camera={"weight": 1.0, "gamme": 0.6})


def test_gradients_reach_every_prediction(fixture):
    tensors, config, _ = fixture
    pred = _predictions(tensors)
    leaves = [pred["depth"], pred["depth_conf"], pred["world_points"], pred["world_points_conf"], *pred["pose_enc_list"]]
    for t in leaves:
        t.requires_grad_(True)
    MultitaskLoss(**config)(pred, _batch(tensors))["objective"].backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_perfect_predictions_give_zero_regression_and_pose_error(fixture):
    tensors, config, _ = fixture
    batch = _batch(tensors)
    pred = _predictions(tensors)
    h, w = batch["images"].shape[-2:]
    gt_pose = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (h, w))
    pred["pose_enc_list"] = [gt_pose.clone() for _ in range(4)]
    pred["depth"] = batch["depths"][..., None].clone()
    pred["world_points"] = batch["world_points"].clone()
    losses = MultitaskLoss(**config)(pred, batch)
    for key in ("loss_camera", "loss_T", "loss_R", "loss_FL", "loss_reg_depth", "loss_grad_depth", "loss_reg_point"):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-6), key
    assert losses["loss_grad_point"].item() == pytest.approx(0.0, abs=1e-5)
    # with zero error the confidence term is just -alpha * log(conf): the prediction's confidence still matters
    assert losses["loss_conf_depth"].item() < 0


def test_camera_iteration_weighting(fixture):
    tensors, config, _ = fixture
    batch = _batch(tensors)
    h, w = batch["images"].shape[-2:]
    gt_pose = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (h, w))
    off = gt_pose.clone()
    off[..., :3] += 0.1  # translation error 0.1 in only one iteration
    loss = MultitaskLoss(camera=config["camera"])
    for i in range(4):
        poses = [gt_pose.clone() for _ in range(4)]
        poses[i] = off
        out = loss({"pose_enc_list": poses}, batch)
        # gamma^(n-1-i) weighting, averaged over the n = 4 iterations
        assert out["loss_T"].item() == pytest.approx(0.1 * 0.6 ** (3 - i) / 4, rel=1e-4)
        assert out["loss_R"].item() == 0.0


# -- degenerate batches ----------------------------------------------------------------------------------------
def test_sample_without_valid_pixels_is_ignored_and_finite(fixture):
    """A sample with no valid pixel contributes nothing; the losses stay finite and keep their graph."""
    tensors, config, expected = fixture
    batch = _batch(tensors)
    batch["point_masks"][1] = 0
    # what normalisation produces for such a sample: huge but finite values (scale clamped at 1e-6)
    batch["depths"][1] *= 1e6
    batch["world_points"][1] *= 1e6
    pred = _predictions(tensors)
    pred["depth"].requires_grad_(True)
    losses = MultitaskLoss(**config)(pred, batch)
    for key, value in losses.items():
        assert torch.isfinite(value), key
    # sample 0 alone: the camera loss uses only samples whose frame 0 has > 100 valid pixels
    only0 = {k: v[:1] for k, v in _batch(tensors).items()}
    pred0 = _predictions(tensors)
    pred0 = {k: ([p[:1] for p in v] if isinstance(v, list) else v[:1]) for k, v in pred0.items()}
    ref = MultitaskLoss(**config)(pred0, only0)
    for key in ("loss_T", "loss_R", "loss_FL", "loss_reg_depth", "loss_reg_point"):
        assert losses[key].item() == pytest.approx(ref[key].item(), rel=1e-4), key
    losses["objective"].backward()
    assert torch.isfinite(pred["depth"].grad).all()
    assert pred["depth"].grad[1].abs().sum() == 0


def test_batch_without_valid_pixels_gives_zero_finite_losses(fixture):
    tensors, config, _ = fixture
    batch = _batch(tensors)
    batch["point_masks"] = torch.zeros_like(batch["point_masks"], dtype=torch.bool)
    pred = _predictions(tensors)
    for t in (pred["depth"], pred["world_points"], *pred["pose_enc_list"]):
        t.requires_grad_(True)
    losses = MultitaskLoss(**config)(pred, batch)
    assert set(losses) == CAMERA_KEYS | DEPTH_KEYS | POINT_KEYS | {"objective"}
    for key, value in losses.items():
        assert torch.is_tensor(value) and value.item() == 0.0, key
    losses["objective"].backward()  # still differentiable: zero, finite gradients
    assert pred["depth"].grad is not None and torch.all(pred["depth"].grad == 0)
    assert torch.all(pred["pose_enc_list"][0].grad == 0)


def test_non_finite_ground_truth_is_sanitised(fixture):
    tensors, config, _ = fixture
    batch = _batch(tensors)
    batch["depths"][0, 0, 0, 0] = float("nan")
    batch["world_points"][0, 0, 0, 1] = float("inf")
    losses = MultitaskLoss(**config)(_predictions(tensors), batch)
    assert all(torch.isfinite(v) for v in losses.values())


# -- robust statistics -----------------------------------------------------------------------------------------
def test_torch_quantile_is_nearest_rank():
    values = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.5, 0.98, 1.0):
        assert torch_quantile(values, q).item() == torch.quantile(values, q, interpolation="nearest").item()


def test_filter_by_quantile_drops_the_top_tail():
    values = torch.arange(2000, dtype=torch.float32) / 100  # 0 .. 19.99
    kept = filter_by_quantile(values, 0.9)
    assert kept.numel() == 1799 and kept.max().item() < torch_quantile(values, 0.9).item()
    small = torch.arange(500, dtype=torch.float32)
    assert torch.equal(filter_by_quantile(small, 0.5), small)  # too few elements to filter
    big = torch.full((2000,), 150.0)
    assert filter_by_quantile(big, 0.9).max().item() == 100.0  # clamped at hard_max


# -- track loss ------------------------------------------------------------------------------------------------
def _track_case(b=1, s=3, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tracks = torch.rand(b, s, n, 2, generator=g) * 50
    visible = torch.ones(b, s, n, dtype=torch.bool)
    return {"tracks": tracks, "track_vis_mask": visible}


def test_track_loss_zero_when_perfect():
    batch = _track_case()
    pred = {"track_list": [batch["tracks"].clone() for _ in range(3)], "vis": torch.ones(1, 3, 4)}
    out = track_loss(pred, batch)
    assert out["loss_track"].item() == 0.0
    assert out["loss_vis"].item() == pytest.approx(0.0, abs=1e-6)


def test_track_loss_scales_with_error():
    batch = _track_case()
    for offset in (1.0, 2.0, 6.0):
        pred = {"track": batch["tracks"] + torch.tensor([offset, 0.0])}  # error in x only
        out = track_loss(pred, batch)
        assert out["loss_track"].item() == pytest.approx(offset / 2, rel=1e-6)  # mean over (x, y)
        assert "loss_vis" not in out  # no visibility prediction, no visibility term


def test_track_loss_respects_visibility_masks():
    batch = _track_case(n=4)
    batch["track_vis_mask"][0, 2, 1] = False  # point 1 occluded in frame 2
    batch["track_vis_mask"][0, 0, 3] = False  # point 3 invisible in the query frame: not a track at all
    pred = batch["tracks"].clone()
    pred[0, 2, 1] += 100.0  # errors only where nothing is supervised
    pred[0, 1, 3] += 100.0
    out = track_loss({"track": pred, "vis": torch.full((1, 3, 4), 0.5)}, batch)
    assert out["loss_track"].item() == 0.0
    # BCE at p = 0.5 is log 2 everywhere; the invisible query's 3 frames are excluded (9 entries remain)
    assert out["loss_vis"].item() == pytest.approx(math.log(2), rel=1e-6)
    pred[0, 1, 0, 0] += 9.0  # one supervised point (of 3 * 3 - 1 = 8) off by 9 px in x
    out = track_loss({"track": pred}, batch)
    assert out["loss_track"].item() == pytest.approx(4.5 / 8, rel=1e-6)


def test_track_visibility_bce():
    batch = _track_case(n=2)
    batch["track_vis_mask"][0, 1:, 1] = False
    p = 0.8
    vis = torch.full((1, 3, 2), p)
    out = track_loss({"track": batch["tracks"], "vis": vis}, batch)
    # 4 visible entries (-log p) and 2 occluded ones (-log(1 - p))
    expected = (4 * -math.log(p) + 2 * -math.log(1 - p)) / 6
    assert out["loss_vis"].item() == pytest.approx(expected, rel=1e-5)
    saturated = track_loss({"track": batch["tracks"], "vis": torch.zeros(1, 3, 2)}, batch)
    assert torch.isfinite(saturated["loss_vis"])  # log(0) is floored


def test_track_iteration_weighting():
    batch = _track_case()
    gt = batch["tracks"]
    off = gt + torch.tensor([2.0, 2.0])  # error 2 px in this iteration
    for i in range(3):
        tracks = [gt.clone() for _ in range(3)]
        tracks[i] = off
        out = track_loss({"track_list": tracks}, batch, gamma=0.8)
        assert out["loss_track"].item() == pytest.approx(2.0 * 0.8 ** (2 - i) / 3, rel=1e-6)


def test_track_terms_in_the_objective():
    batch = _track_case()
    pred = {"track_list": [batch["tracks"] + 1.0], "vis": torch.full((1, 3, 4), 0.5)}
    losses = MultitaskLoss(track={"weight": 0.1, "gamma": 0.8, "vis_weight": 0.05})(pred, batch)
    assert set(losses) == {"loss_track", "loss_vis", "objective"}
    expected = 0.1 * (losses["loss_track"] + 0.05 * losses["loss_vis"])
    assert losses["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["loss_track"].item() == pytest.approx(1.0)


def test_track_loss_without_valid_tracks_is_zero_and_differentiable():
    batch = _track_case()
    batch["track_vis_mask"][:] = False
    pred = {"track_list": [batch["tracks"].clone().requires_grad_(True)], "vis": torch.full((1, 3, 4), 0.3, requires_grad=True)}
    losses = MultitaskLoss(track={"weight": 1.0})(pred, batch)
    assert losses["loss_track"].item() == 0.0 and losses["loss_vis"].item() == 0.0
    losses["objective"].backward()
    assert torch.all(pred["track_list"][0].grad == 0)
