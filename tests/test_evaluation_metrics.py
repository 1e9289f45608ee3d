"""Evaluation metrics against hand-computed values and an independent numpy re-derivation of the official
VGGT Co3D definitions (pairs i < j, relative pose E_i @ inv(E_j), errors in degrees, AUC over 1-degree bins)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vggt_train.evaluation import (
    NONFINITE_ERROR_DEG,
    depth_metrics,
    nearest_neighbor_distances,
    pair_indices,
    point_metrics,
    pose_auc,
    relative_pose_errors,
    rra_rta,
    umeyama,
)

ANGLE_ATOL = 1e-5  # degrees: the official 1e-15 clamp floors an exact match at ~3.6e-6


# -- helpers -----------------------------------------------------------------------------------------------------
def axis_angle(axis, degrees) -> np.ndarray:
    """Rotation matrix [3, 3] (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    a = math.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx


def random_rotations(rng, n) -> np.ndarray:
    """[n, 3, 3] rotations from QR of Gaussian matrices (determinant forced to +1)."""
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    return q * np.sign(np.linalg.det(q))[:, None, None]


def extrinsics(rotations, translations) -> torch.Tensor:
    """[N, 3, 4] float64 from [N, 3, 3] and [N, 3]."""
    return torch.from_numpy(np.concatenate([rotations, np.asarray(translations)[:, :, None]], axis=2))


def random_cameras(rng, n):
    return extrinsics(random_rotations(rng, n), rng.normal(size=(n, 3)))


def official_order(e_i, e_j):
    return e_i @ np.linalg.inv(e_j)


def reference_errors(pred, gt, relative=official_order):
    """Independent re-derivation: general matrix inverse, trace-based rotation angle, arccos|cos| for translation;
    `relative(E_i, E_j)` of each pair i < j can be swapped for a wrong definition to show the tests can tell."""
    def se3(e):
        e = np.asarray(e, dtype=np.float64)
        out = np.tile(np.eye(4), (len(e), 1, 1))
        out[:, :3, :] = e[:, :3, :]
        return out

    pred, gt = se3(pred), se3(gt)
    rot, trans = [], []
    for i, j in itertools.combinations(range(len(gt)), 2):
        rel_p, rel_g = relative(pred[i], pred[j]), relative(gt[i], gt[j])
        cos_r = (np.trace(rel_g[:3, :3].T @ rel_p[:3, :3]) - 1) / 2
        rot.append(math.degrees(math.acos(min(1.0, max(-1.0, cos_r)))))
        tp, tg = rel_p[:3, 3], rel_g[:3, 3]
        cos_t = abs(tp @ tg) / (np.linalg.norm(tp) * np.linalg.norm(tg))
        trans.append(math.degrees(math.acos(min(1.0, cos_t))))
    return np.array(rot), np.array(trans)


# -- pairs and relative pose errors ------------------------------------------------------------------------------
def test_pairs_follow_itertools_combinations_order():
    i, j = pair_indices(5)
    assert list(zip(i.tolist(), j.tolist())) == list(itertools.combinations(range(5), 2))
    assert pair_indices(1)[0].numel() == 0


def test_exact_prediction_has_zero_errors_and_full_scores():
    gt = random_cameras(np.random.default_rng(0), 6)
    rot, trans = relative_pose_errors(gt.clone(), gt)
    assert rot.dtype == trans.dtype == torch.float64 and rot.shape == (15,)
    assert rot.max() < ANGLE_ATOL and trans.max() < ANGLE_ATOL
    assert pose_auc(rot, trans) == 1.0 and pose_auc(rot, trans, 3, percent=True) == 100.0
    assert rra_rta(rot, trans) == (1.0, 1.0)


def test_errors_ignore_the_world_frame_and_scale_as_relative_poses_should():
    # pred_k = gt_k @ G (another world frame, scaled): E_i inv(E_j) keeps its rotation and translation direction.
    rng = np.random.default_rng(1)
    gt = random_cameras(rng, 5)
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = random_rotations(rng, 1)[0], rng.normal(size=3)
    pred = torch.from_numpy(np.concatenate([gt.numpy()[:, :, :3], 2.5 * gt.numpy()[:, :, 3:]], axis=2) @ world)
    rot, trans = relative_pose_errors(pred, gt)
    assert rot.max() < ANGLE_ATOL and trans.max() < ANGLE_ATOL
    # a world-from-camera composition inv(E_i) @ E_j is not invariant: the check above can fail
    _, wrong_trans = reference_errors(pred.numpy(), gt.numpy(), lambda e_i, e_j: np.linalg.inv(e_i) @ e_j)
    assert wrong_trans.max() > 1.0


def test_a_known_rotation_gives_its_angle():
    for angle in (3.0, 45.0, 120.0, 179.0):
        gt = extrinsics(np.stack([np.eye(3)] * 3), np.zeros((3, 3)))
        pred = gt.clone()
        pred[1, :, :3] = torch.from_numpy(axis_angle([1, 2, 3], angle))
        rot, _ = relative_pose_errors(pred, gt)
        # pairs (0, 1), (0, 2), (1, 2): camera 1 is in the first and the last
        assert rot.tolist() == pytest.approx([angle, 0.0, angle], abs=ANGLE_ATOL)


def test_a_known_translation_direction_change_gives_its_angle_folded_to_90():
    t = np.array([1.0, 0.0, 0.0])
    for angle, expected in ((30.0, 30.0), (89.0, 89.0), (120.0, 60.0), (180.0, 0.0)):
        gt = extrinsics(np.stack([np.eye(3)] * 2), np.stack([np.zeros(3), t]))
        pred = extrinsics(np.stack([np.eye(3)] * 2), np.stack([np.zeros(3), 3.0 * axis_angle([0, 0, 1], angle) @ t]))
        rot, trans = relative_pose_errors(pred, gt)
        assert rot.item() < ANGLE_ATOL
        assert trans.item() == pytest.approx(expected, abs=ANGLE_ATOL)


def test_random_cameras_match_the_independent_derivation_and_not_the_swapped_order():
    rng = np.random.default_rng(2)
    gt = random_cameras(rng, 7)
    pred = random_cameras(rng, 7)
    rot, trans = relative_pose_errors(pred, gt)
    ref_rot, ref_trans = reference_errors(pred.numpy(), gt.numpy())
    np.testing.assert_allclose(rot.numpy(), ref_rot, atol=1e-6)
    np.testing.assert_allclose(trans.numpy(), ref_trans, atol=1e-6)
    # [N, 4, 4] inputs read the same
    pad = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64).expand(7, 1, 4)
    rot4, trans4 = relative_pose_errors(torch.cat([pred, pad], 1), torch.cat([gt, pad], 1))
    assert torch.equal(rot4, rot) and torch.equal(trans4, trans)
    # the translation error depends on the order within a pair: E_j inv(E_i) gives other numbers
    _, swapped_trans = reference_errors(pred.numpy(), gt.numpy(), lambda e_i, e_j: e_j @ np.linalg.inv(e_i))
    assert np.abs(swapped_trans - ref_trans).max() > 1.0


def test_permuted_cameras_are_detected():
    rng = np.random.default_rng(3)
    gt = random_cameras(rng, 4)
    rot, trans = relative_pose_errors(gt[[1, 0, 2, 3]], gt)
    assert rot.max() > 1.0 and trans.max() > 1.0
    # pair (2, 3) involves neither swapped camera
    assert rot[-1] < ANGLE_ATOL and trans[-1] < ANGLE_ATOL


def test_a_nan_prediction_gets_the_huge_error_and_counts_as_a_failure():
    assert NONFINITE_ERROR_DEG == pytest.approx(1e6 * 180 / math.pi - 180)
    gt = random_cameras(np.random.default_rng(4), 3)
    pred = gt.clone()
    pred[2] = float("nan")
    rot, trans = relative_pose_errors(pred, gt)
    assert rot[0] < ANGLE_ATOL and trans[0] < ANGLE_ATOL
    assert rot[1:].tolist() == trans[1:].tolist() == [NONFINITE_ERROR_DEG] * 2
    assert pose_auc(rot, trans) == pytest.approx(1 / 3)
    assert rra_rta(rot, trans) == pytest.approx((1 / 3, 1 / 3))
    # a NaN translation alone leaves the rotation error finite
    pred = gt.clone()
    pred[2, :, 3] = float("nan")
    rot, trans = relative_pose_errors(pred, gt)
    assert rot.max() < ANGLE_ATOL and trans[1:].tolist() == [NONFINITE_ERROR_DEG] * 2


# -- AUC and accuracies ------------------------------------------------------------------------------------------
def test_auc_of_a_given_error_vector_matches_the_hand_computation():
    rot = np.array([0.5, 2.5, 10.0, 29.5, 40.0])
    trans = np.array([0.2, 3.5, 1.0, 0.0, 0.0])
    # max errors 0.5, 3.5, 10, 29.5, 40: under the 30 bin tops 1..30 they count 30 + 27 + 20 + 1 + 0 times
    assert pose_auc(rot, trans, 30) == pytest.approx(78 / 150)
    assert pose_auc(trans, rot, 30, percent=True) == pytest.approx(52.0)
    assert pose_auc(torch.from_numpy(rot), torch.from_numpy(trans), 5) == pytest.approx((5 + 2) / 25)


def test_auc_bin_edges_are_numpy_histogram_edges():
    # 1.0 is in [1, 2): not under the first bin top; 3.0 is in the last bin [2, 3], right edge included
    assert pose_auc([1.0], [0.0], 3) == pytest.approx(2 / 3)
    assert pose_auc([3.0], [0.0], 3) == pytest.approx(1 / 3)
    assert pose_auc([3.0 + 1e-9], [0.0], 3) == 0.0
    assert pose_auc([float("nan"), 0.0], [0.0, 0.0], 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pose_auc([], [], 30)
    with pytest.raises(ValueError):
        pose_auc([1.0], [1.0], 2.5)


def test_rra_rta_use_a_strict_threshold_per_error():
    rot = [14.9, 15.0, 16.0, 1.0]
    trans = [1.0, 1.0, 1.0, 20.0]
    assert rra_rta(rot, trans) == (0.5, 0.75)
    assert rra_rta(rot, trans, threshold=5) == (0.25, 0.75)


# -- depth -------------------------------------------------------------------------------------------------------
def test_median_scaling_makes_a_per_frame_scaled_prediction_perfect_and_lstsq_only_a_global_one():
    gt = torch.rand(3, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    per_frame = gt * torch.tensor([0.3, 2.0, 7.0], dtype=torch.float64)[:, None, None]
    perfect = {"abs_rel": pytest.approx(0, abs=1e-12), "delta_1_25": 1.0, "num_valid": 216}
    assert depth_metrics(per_frame, gt, None, "median") == perfect
    lstsq = depth_metrics(per_frame, gt, None, "lstsq")
    assert lstsq["abs_rel"] > 0.1 and lstsq["delta_1_25"] < 1.0
    assert depth_metrics(gt * 4.2, gt, None, "lstsq")["abs_rel"] == pytest.approx(0, abs=1e-12)


def test_depth_metrics_match_hand_computed_values():
    gt = torch.tensor([[[1.0, 2.0, 4.0]]])
    pred = torch.ones(1, 1, 3)
    # median: scale 2, scaled [2, 2, 2]: relative errors 1, 0, 1/2; ratios 2, 1, 2
    median = depth_metrics(pred, gt, align="median")
    assert median == {"abs_rel": pytest.approx(0.5), "delta_1_25": pytest.approx(1 / 3), "num_valid": 3}
    # lstsq: scale 7/3: relative errors 4/3, 1/6, 5/12; ratios 7/3, 7/6, 12/7
    lstsq = depth_metrics(pred, gt, align="lstsq")
    assert lstsq == {"abs_rel": pytest.approx(23 / 36), "delta_1_25": pytest.approx(1 / 3), "num_valid": 3}
    # an even count uses the mean of the two middle values (2.5), not torch.median's lower one (2)
    gt = torch.tensor([[[1.0, 2.0, 3.0, 10.0]]])
    expected = np.mean(np.abs(2.5 - np.array([1.0, 2.0, 3.0, 10.0])) / np.array([1.0, 2.0, 3.0, 10.0]))
    assert depth_metrics(torch.ones(1, 1, 4), gt)["abs_rel"] == pytest.approx(expected)


def test_depth_validity_excludes_masked_zero_and_nonfinite_gt():
    gt = torch.tensor([[[1.0, 2.0, 0.0, float("nan"), 5.0, -1.0]]])
    pred = torch.tensor([[[1.0, 2.0, 99.0, 99.0, 123.0, 99.0]]])
    mask = torch.tensor([[[True, True, True, True, False, True]]])
    assert depth_metrics(pred, gt, mask) == {"abs_rel": pytest.approx(0, abs=1e-12), "delta_1_25": 1.0, "num_valid": 2}
    pred[0, 0, 2] = float("nan")  # on an invalid pixel: ignored
    assert depth_metrics(pred, gt, mask)["abs_rel"] == pytest.approx(0, abs=1e-12)
    pred[0, 0, 0] = float("nan")  # on a valid pixel: a failure
    assert math.isnan(depth_metrics(pred, gt, mask)["abs_rel"])
    assert math.isnan(depth_metrics(pred, gt, torch.zeros_like(mask))["delta_1_25"])
    # a degenerate scale (zero median, all-zero prediction) is a failure too
    zero_median = torch.tensor([[[0.0, 0.0, 1.0]]])
    assert math.isnan(depth_metrics(zero_median, torch.ones(1, 1, 3))["delta_1_25"])
    assert math.isnan(depth_metrics(torch.zeros(1, 1, 3), torch.ones(1, 1, 3), align="lstsq")["abs_rel"])
    # a negative scaled prediction is never an inlier, even where its ratios are < 1.25
    assert depth_metrics(torch.tensor([[[-1.0, 1.0, 1.0]]]), torch.ones(1, 1, 3))["delta_1_25"] == pytest.approx(2 / 3)


# -- points ------------------------------------------------------------------------------------------------------
def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(5)
    src = torch.from_numpy(rng.normal(size=(50, 3)))
    rotation = torch.from_numpy(axis_angle([0.3, -1, 2], 137.0))
    translation = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dst = 2.7 * src @ rotation.T + translation
    s, r, t = umeyama(src, dst)
    assert float(s) == pytest.approx(2.7, abs=1e-12)
    torch.testing.assert_close(r, rotation, atol=1e-12, rtol=0)
    torch.testing.assert_close(t, translation, atol=1e-12, rtol=0)
    s, r, t = umeyama(src, src @ rotation.T + translation, with_scale=False)
    assert float(s) == 1.0
    torch.testing.assert_close(r, rotation, atol=1e-12, rtol=0)
    # a mirrored target still gets a proper rotation
    _, r, _ = umeyama(src, src * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert torch.det(r).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        umeyama(src[:2], dst[:2])


def test_nearest_neighbor_distances_are_exact_brute_force():
    rng = np.random.default_rng(6)
    query, ref = rng.normal(size=(300, 3)), rng.normal(size=(211, 3))
    brute = np.sqrt(((query[:, None] - ref[None]) ** 2).sum(-1)).min(1)
    found = nearest_neighbor_distances(torch.from_numpy(query), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(found, brute, rtol=1e-12, atol=1e-12)


def test_point_metrics_are_zero_for_a_similarity_transformed_copy():
    gt = torch.from_numpy(np.random.default_rng(7).normal(size=(2, 6, 5, 3)))
    rotation = torch.from_numpy(axis_angle([1, 1, 0], 60.0))
    pred = 0.4 * gt @ rotation.T + torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64)
    out = point_metrics(pred, gt)
    assert out["num_points"] == 60
    for key in ("accuracy", "completeness", "chamfer"):
        assert out[key] == pytest.approx(0, abs=1e-10)


def test_point_metrics_equal_alignment_then_brute_force_neighbours():
    rng = np.random.default_rng(8)
    gt = rng.normal(size=(2, 5, 6, 3))
    pred = gt + 0.2 * rng.normal(size=gt.shape)
    gt[0, 0, 0] = np.nan  # excluded though not masked
    valid = rng.random(size=(2, 5, 6)) > 0.3
    pred[~valid] = 1e3  # masked pixels must not enter the alignment or the neighbours
    out = point_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid))
    keep = valid & np.isfinite(gt).all(-1)
    p, g = pred[keep], gt[keep]
    s, r, t = (x.numpy() for x in umeyama(torch.from_numpy(p), torch.from_numpy(g)))
    p = s * p @ r.T + t
    dist = np.sqrt(((p[:, None] - g[None]) ** 2).sum(-1))
    acc, comp = dist.min(1).mean(), dist.min(0).mean()
    assert abs(acc - comp) > 1e-4  # so a swap of the two would be caught
    assert out == {
        "accuracy": pytest.approx(acc, rel=1e-10),
        "completeness": pytest.approx(comp, rel=1e-10),
        "chamfer": pytest.approx((acc + comp) / 2, rel=1e-10),
        "num_points": int(keep.sum()),
    }


def test_point_subsampling_is_deterministic_and_bounded():
    rng = np.random.default_rng(9)
    gt = torch.from_numpy(rng.normal(size=(1, 20, 20, 3)))
    pred = gt + 0.1 * torch.from_numpy(rng.normal(size=gt.shape))
    full = point_metrics(pred, gt)
    assert point_metrics(pred, gt, max_points=400) == full
    first, again, other = (point_metrics(pred, gt, max_points=50, seed=s) for s in (0, 0, 1))
    assert first == again and first != other and first != full
    assert first["num_points"] == 400


def test_point_metrics_fail_as_nan_on_bad_predictions():
    gt = torch.from_numpy(np.random.default_rng(10).normal(size=(1, 4, 4, 3)))
    pred = gt.clone()
    pred[0, 1, 1, 2] = float("inf")
    assert math.isnan(point_metrics(pred, gt)["chamfer"])
    assert math.isnan(point_metrics(torch.ones_like(gt), gt)["accuracy"])
    empty = point_metrics(gt, gt, torch.zeros(1, 4, 4, dtype=torch.bool))
    assert empty["num_points"] == 0 and math.isnan(empty["completeness"])
