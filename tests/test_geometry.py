"""Camera geometry: parity with the official VGGT (loss fixture) and self-consistency on random cameras."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import PARITY_DIR
from vggt_train.geometry import (
    closed_form_inverse_se3,
    depth_to_cam_points,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    mat_to_quat,
    normalize_batch,
    pose_encoding_to_extri_intri,
    project_world_points,
    quat_to_mat,
    unproject_batch,
)

LOSS_FIXTURE = PARITY_DIR / "loss"
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fixture():
    if not LOSS_FIXTURE.is_dir():
        pytest.fail(f"loss fixture not found at {LOSS_FIXTURE}: the checkout is incomplete")
    from safetensors.torch import load_file

    return load_file(str(LOSS_FIXTURE / "tensors.safetensors"))


def _group(tensors, prefix):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _raw_batch(fx):
    raw = _group(fx, "raw.")
    raw["intrinsics"] = fx["batch.intrinsics"]  # normalisation leaves intrinsics unchanged
    return raw


def _random_rotations(n, generator=None):
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quat_to_mat(q / q.norm(dim=-1, keepdim=True))


def _random_cameras(b, s, hw, seed=0):
    """Random extrinsics [b, s, 3, 4] and centred-principal-point intrinsics [b, s, 3, 3], float64."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    rot = _random_rotations(b * s, g).reshape(b, s, 3, 3)
    trans = torch.randn(b, s, 3, 1, generator=g, dtype=torch.float64)
    focal = 0.5 * max(hw) + torch.rand(b, s, 2, generator=g, dtype=torch.float64) * max(hw)
    k = torch.zeros(b, s, 3, 3, dtype=torch.float64)
    k[..., 0, 0], k[..., 1, 1] = focal[..., 0], focal[..., 1]
    k[..., 0, 2], k[..., 1, 2], k[..., 2, 2] = w / 2, h / 2, 1.0
    return torch.cat([rot, trans], dim=-1), k


# -- parity with the official implementation -------------------------------------------------------------------
def test_normalize_batch_matches_official(fixture):
    raw = _raw_batch(fixture)
    before = {k: v.clone() for k, v in raw.items()}
    out = normalize_batch(raw)
    for key in ("extrinsics", "world_points", "depths", "cam_points", "intrinsics"):
        assert out[key].dtype == torch.float32, key
        torch.testing.assert_close(out[key], fixture[f"batch.{key}"], **TOL, msg=lambda m: f"{key}: {m}")
    for key, value in before.items():  # the input batch is not modified in place
        assert torch.equal(raw[key], value), key


def test_normalize_batch_accepts_bool_masks_and_4x4(fixture):
    raw = _raw_batch(fixture)
    raw["point_masks"] = raw["point_masks"] > 0.5
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(*raw["extrinsics"].shape[:2], 1, 4)
    raw["extrinsics"] = torch.cat([raw["extrinsics"], bottom], dim=-2)
    out = normalize_batch(raw)
    assert out["extrinsics"].shape[-2:] == (3, 4)
    torch.testing.assert_close(out["extrinsics"], fixture["batch.extrinsics"], **TOL)
    torch.testing.assert_close(out["world_points"], fixture["batch.world_points"], **TOL)


def test_gt_pose_encoding_matches_official(fixture):
    h, w = fixture["batch.images"].shape[-2:]
    enc = extri_intri_to_pose_encoding(fixture["batch.extrinsics"], fixture["batch.intrinsics"], (h, w))
    assert enc.shape == (*fixture["batch.extrinsics"].shape[:2], 9)
    torch.testing.assert_close(enc, fixture["gt_pose_enc"], **TOL)


def test_pose_decoding_matches_official(fixture):
    h, w = fixture["batch.images"].shape[-2:]
    extr, intr = pose_encoding_to_extri_intri(fixture["gt_pose_enc"], (h, w))
    torch.testing.assert_close(extr, fixture["roundtrip.extrinsics"], **TOL)
    torch.testing.assert_close(intr, fixture["roundtrip.intrinsics"], **TOL)
    # decoding recovers the rotation / translation exactly and the focal lengths, but not the principal point
    torch.testing.assert_close(extr, fixture["batch.extrinsics"], **TOL)
    torch.testing.assert_close(intr[..., [0, 1], [0, 1]], fixture["batch.intrinsics"][..., [0, 1], [0, 1]], **TOL)
    assert torch.all(intr[..., 0, 2] == w / 2) and torch.all(intr[..., 1, 2] == h / 2)


def test_fixture_world_points_are_unprojected_depths(fixture):
    world = depth_to_world_points(fixture["batch.depths"], fixture["batch.extrinsics"], fixture["batch.intrinsics"])
    cam = depth_to_cam_points(fixture["batch.depths"], fixture["batch.intrinsics"])
    mask = fixture["batch.point_masks"] > 0.5
    torch.testing.assert_close(world[mask], fixture["batch.world_points"][mask], **TOL)
    torch.testing.assert_close(cam[mask], fixture["batch.cam_points"][mask], **TOL)


def test_batched_unprojection_matches_the_reference_and_the_official_fixture(fixture):
    """unproject_batch (what the data pipeline runs) gives the reference functions' points and the official ones."""
    depths, extr, intr = fixture["batch.depths"], fixture["batch.extrinsics"], fixture["batch.intrinsics"]
    cam, world, dist = unproject_batch(depths.double(), intr.double(), extr.double(), with_norm=True)
    torch.testing.assert_close(cam, depth_to_cam_points(depths.double(), intr.double()), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(world, depth_to_world_points(depths.double(), extr.double(), intr.double()), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(dist, world.norm(dim=-1), atol=1e-9, rtol=1e-9)
    mask = fixture["batch.point_masks"] > 0.5
    torch.testing.assert_close(world.float()[mask], fixture["batch.world_points"][mask], **TOL)


# -- normalisation properties ----------------------------------------------------------------------------------
def _synthetic_batch(b=2, s=3, hw=(6, 8), seed=0):
    extr, intr = _random_cameras(b, s, hw, seed)
    g = torch.Generator().manual_seed(seed + 1)
    depths = 1.0 + 4.0 * torch.rand(b, s, *hw, generator=g, dtype=torch.float64)
    batch = {
        "extrinsics": extr.float(),
        "intrinsics": intr.float(),
        "depths": depths.float(),
        "cam_points": depth_to_cam_points(depths, intr).float(),
        "world_points": depth_to_world_points(depths, extr, intr).float(),
        "point_masks": torch.rand(b, s, *hw, generator=g) > 0.2,
    }
    return batch


def test_normalize_batch_first_camera_is_origin_and_unit_scale():
    out = normalize_batch(_synthetic_batch())
    eye = torch.eye(3, 4).expand(2, 3, 4)
    torch.testing.assert_close(out["extrinsics"][:, 0], eye, atol=1e-5, rtol=0)
    dist = out["world_points"].norm(dim=-1)
    mask = out["point_masks"].float()
    mean_dist = (dist * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    torch.testing.assert_close(mean_dist, torch.ones(2), atol=1e-4, rtol=0)
    # the geometry is still consistent: normalised depths unproject to the normalised world points
    world = depth_to_world_points(out["depths"], out["extrinsics"], out["intrinsics"])
    torch.testing.assert_close(world, out["world_points"], atol=1e-4, rtol=1e-4)


def test_normalize_batch_no_valid_points_stays_finite():
    batch = _synthetic_batch()
    batch["point_masks"][1] = False  # sample 1 has no valid pixel at all
    out = normalize_batch(batch)
    for key in ("extrinsics", "world_points", "depths", "cam_points"):
        assert torch.isfinite(out[key]).all(), key
    # sample 0 is untouched by sample 1's degeneracy
    ref = normalize_batch(_synthetic_batch())
    torch.testing.assert_close(out["world_points"][0], ref["world_points"][0])


# -- rotations and pose encoding -------------------------------------------------------------------------------
def test_mat_to_quat_inverts_quat_to_mat_with_nonnegative_real_part():
    rot = _random_rotations(512, torch.Generator().manual_seed(3))
    # add 180-degree rotations (w = 0), where the x / y / z candidates must be chosen
    rot = torch.cat([rot, torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=rot.dtype))])
    quat = mat_to_quat(rot)
    assert torch.all(quat[..., 3] >= 0)
    torch.testing.assert_close(quat.norm(dim=-1), torch.ones(len(rot), dtype=rot.dtype))
    torch.testing.assert_close(quat_to_mat(quat), rot, atol=1e-10, rtol=0)


def test_mat_to_quat_known_values_and_finite_gradient():
    angle = 0.3
    rot_z = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)])
    torch.testing.assert_close(mat_to_quat(rot_z), expected)
    eye = torch.eye(3, requires_grad=True)  # three of the four |q| candidates are exactly 0 here
    mat_to_quat(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()


def test_pose_encoding_round_trip_random_cameras():
    hw = (48, 64)
    extr, intr = _random_cameras(3, 5, hw, seed=7)
    enc = extri_intri_to_pose_encoding(extr, intr, hw)
    assert enc.dtype == torch.float32 and enc.shape == (3, 5, 9)
    assert torch.all(enc[..., 6] >= 0)  # real part of the quaternion
    torch.testing.assert_close(enc[..., 7], (2 * torch.atan(hw[0] / 2 / intr[..., 1, 1])).float())
    torch.testing.assert_close(enc[..., 8], (2 * torch.atan(hw[1] / 2 / intr[..., 0, 0])).float())
    extr_back, intr_back = pose_encoding_to_extri_intri(enc, hw)
    torch.testing.assert_close(extr_back, extr.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(intr_back, intr.float(), atol=1e-3, rtol=1e-5)
    extr_only, none = pose_encoding_to_extri_intri(enc, build_intrinsics=False)
    assert none is None and torch.equal(extr_only, extr_back)
    with pytest.raises(ValueError):
        pose_encoding_to_extri_intri(enc)  # intrinsics need the image size
    with pytest.raises(NotImplementedError):
        extri_intri_to_pose_encoding(extr, intr, hw, pose_encoding_type="absT_quaR_OneFLM1")


# -- SE(3) and projection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [3, 4])
def test_closed_form_inverse_matches_torch_inverse(rows):
    extr, _ = _random_cameras(1, 16, (4, 4), seed=11)
    se3 = extr[0]
    if rows == 4:
        se3 = torch.cat([se3, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=se3.dtype).expand(16, 1, 4)], dim=1)
        full = se3
    else:
        full = torch.cat([se3, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=se3.dtype).expand(16, 1, 4)], dim=1)
    inv = closed_form_inverse_se3(se3)
    assert inv.shape == (16, 4, 4) and inv.dtype == se3.dtype
    torch.testing.assert_close(inv, torch.inverse(full), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv @ full, torch.eye(4, dtype=se3.dtype).expand(16, 4, 4), atol=1e-12, rtol=0)


def test_depth_to_world_points_projects_back_to_its_pixels():
    hw = (5, 7)
    extr, intr = _random_cameras(2, 3, hw, seed=5)
    depth = 0.5 + torch.rand(2, 3, *hw, dtype=torch.float64)
    world = depth_to_world_points(depth, extr, intr)
    assert world.shape == (2, 3, *hw, 3)
    uv, z = project_world_points(world, extr, intr)
    v, u = torch.meshgrid(torch.arange(hw[0], dtype=depth.dtype), torch.arange(hw[1], dtype=depth.dtype), indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], dim=-1).expand_as(uv), atol=1e-9, rtol=0)
    torch.testing.assert_close(z, depth, atol=1e-9, rtol=0)
    # another camera sees the same world point where the pinhole model says it should
    uv_other, z_other = project_world_points(world[:, :1], extr[:, 1:2], intr[:, 1:2])
    cam_other = torch.einsum("bsij,bshwj->bshwi", extr[:, 1:2, :, :3], world[:, :1]) + extr[:, 1:2, None, None, :, 3]
    torch.testing.assert_close(z_other, cam_other[..., 2])
    fx = intr[:, 1:2, 0, 0, None, None]
    cx = intr[:, 1:2, 0, 2, None, None]
    torch.testing.assert_close(uv_other[..., 0], fx * cam_other[..., 0] / cam_other[..., 2] + cx)


def test_normalize_batch_ignores_non_finite_points_in_the_scale():
    clean = normalize_batch(_synthetic_batch())
    batch = _synthetic_batch()
    batch["world_points"][0, 1, 2, 3] = float("nan")  # one corrupt (even if masked-valid) point
    out = normalize_batch(batch)
    assert torch.isfinite(out["world_points"]).all()
    torch.testing.assert_close(out["extrinsics"], clean["extrinsics"], atol=1e-2, rtol=1e-2)
