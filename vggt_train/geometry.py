"""Camera geometry for VGGT training: pose encoding, rotations, SE(3) inverse, unprojection, batch normalisation.

Conventions (the official VGGT ones, so checkpoints and targets stay interchangeable):
- extrinsics are OpenCV camera-from-world matrices [R | t] of shape [..., 3, 4]: x_cam = R @ x_world + t,
  with +x right, +y down, +z forward;
- intrinsics are pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels;
- quaternions are scalar-last (x, y, z, w);
- the "absT_quaR_FoV" pose encoding is [t (3), quaternion xyzw (4), fov_h, fov_w] = 9 numbers per camera, with
  fov_h = 2 * atan(H / 2 / fy) and fov_w = 2 * atan(W / 2 / fx).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = [
    "quat_to_mat",
    "mat_to_quat",
    "standardize_quaternion",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "closed_form_inverse_se3",
    "depth_to_cam_points",
    "cam_to_world_points",
    "world_to_cam_points",
    "depth_to_world_points",
    "unproject_batch",
    "project_world_points",
    "normalize_batch",
    "first_camera_frame",
    "scene_scale",
    "autocast_off",
]

POSE_ENCODING_TYPES = ("absT_quaR_FoV",)


# -- rotations -------------------------------------------------------------------------------------------------
def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions (x, y, z, w), not necessarily unit: [..., 4] -> [..., 3, 3]."""
    x, y, z, w = torch.unbind(quaternions, dim=-1)
    # Dividing by the squared norm makes the map valid for any non-zero quaternion (the network's raw output).
    two_s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    rows = (
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a zero (not NaN) gradient where x <= 0."""
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))  # keeps sqrt's backward finite on the masked branch
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(x))


def standardize_quaternion(quaternions: torch.Tensor) -> torch.Tensor:
    """q and -q are the same rotation: pick the one with a non-negative real part (w, last). [..., 4] -> [..., 4]."""
    return torch.where(quaternions[..., 3:4] < 0, -quaternions, quaternions)


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """Quaternions (x, y, z, w), w >= 0, from rotation matrices: [..., 3, 3] -> [..., 4].

    Four candidate quaternions are formed, each by dividing by one of 2|w|, 2|x|, 2|y|, 2|z|; the one with the
    largest divisor is the best conditioned and is kept (the PyTorch3D scheme the official code uses).
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must be [..., 3, 3], got {tuple(matrix.shape)}")
    batch_shape = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch_shape + (9,)), dim=-1)

    # |w|, |x|, |y|, |z| (times 2) from the diagonal
    q_abs = _sqrt_positive_part(torch.stack([
        1.0 + m00 + m11 + m22,
        1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22,
        1.0 - m00 - m11 + m22,
    ], dim=-1))

    # row i: the quaternion (w, x, y, z) multiplied by 2 * (w, x, y, z)[i]
    by_wxyz = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)
    # The floor only protects candidates that are never selected (their divisor is not the largest).
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = by_wxyz / (2.0 * torch.maximum(q_abs[..., None], floor))

    best = q_abs.argmax(dim=-1)  # [...]
    index = best[..., None, None].expand(batch_shape + (1, 4))
    wxyz = torch.gather(candidates, -2, index).squeeze(-2)
    return standardize_quaternion(wxyz[..., [1, 2, 3, 0]])


# -- pose encoding ---------------------------------------------------------------------------------------------
def _check_encoding_type(pose_encoding_type: str) -> None:
    if pose_encoding_type not in POSE_ENCODING_TYPES:
        raise NotImplementedError(f"pose encoding {pose_encoding_type!r}; supported: {POSE_ENCODING_TYPES}")


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size_hw: Sequence[int],
    pose_encoding_type: str = "absT_quaR_FoV",
) -> torch.Tensor:
    """Encode cameras: extrinsics [B, S, 3, 4], intrinsics [B, S, 3, 3], image (H, W) -> [B, S, 9] float32.

    Layout: translation (3), quaternion xyzw with w >= 0 (4), fov_h, fov_w (radians).
    """
    _check_encoding_type(pose_encoding_type)
    height, width = (float(v) for v in image_size_hw)
    translation = extrinsics[..., :3, 3]
    quaternion = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    # float32 like the official encoder: it is the regression target of a float32 head.
    return torch.cat([translation, quaternion, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor,
    image_size_hw: Optional[Sequence[int]] = None,
    pose_encoding_type: str = "absT_quaR_FoV",
    build_intrinsics: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Decode cameras: [..., 9] -> (extrinsics [..., 3, 4], intrinsics [..., 3, 3] or None).

    The principal point is put at the image centre (W / 2, H / 2): the encoding does not carry it.
    `image_size_hw` is needed only when `build_intrinsics`.
    """
    _check_encoding_type(pose_encoding_type)
    translation = pose_encoding[..., :3]
    rotation = quat_to_mat(pose_encoding[..., 3:7])
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    if image_size_hw is None:
        raise ValueError("image_size_hw is required to build intrinsics")
    height, width = (float(v) for v in image_size_hw)
    fy = (height / 2.0) / torch.tan(pose_encoding[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(pose_encoding[..., 8] / 2.0)
    intrinsics = pose_encoding.new_zeros(pose_encoding.shape[:-1] + (3, 3))
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


# -- SE(3) and points ------------------------------------------------------------------------------------------
def closed_form_inverse_se3(se3: torch.Tensor) -> torch.Tensor:
    """Invert rigid transforms [R | t] as [R^T | -R^T t]: [N, 3, 4] or [N, 4, 4] -> [N, 4, 4].

    Exact for rotations and much cheaper and better conditioned than a general matrix inverse.
    """
    if se3.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"se3 must be [N, 3, 4] or [N, 4, 4], got {tuple(se3.shape)}")
    rotation_t = se3[..., :3, :3].transpose(-1, -2)
    translation = se3[..., :3, 3:]
    inverse = torch.zeros(se3.shape[:-2] + (4, 4), dtype=se3.dtype, device=se3.device)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3:] = -(rotation_t @ translation)
    inverse[..., 3, 3] = 1.0
    return inverse


def _pixel_grid(height: int, width: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel column u and row v, each [H, W], in the dtype/device of `like`."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return u, v


def depth_to_cam_points(depth: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps into the camera frame: depth [..., H, W], intrinsic [..., 3, 3] -> [..., H, W, 3].

    Pixel (u, v) is taken at its integer coordinate (no half-pixel shift), as in the official data pipeline.
    """
    height, width = depth.shape[-2:]
    u, v = _pixel_grid(height, width, depth)
    fx = intrinsic[..., 0, 0, None, None]
    fy = intrinsic[..., 1, 1, None, None]
    cx = intrinsic[..., 0, 2, None, None]
    cy = intrinsic[..., 1, 2, None, None]
    x = (u - cx) * depth / fx
    y = (v - cy) * depth / fy
    return torch.stack([x, y, depth], dim=-1)


def _apply_transform(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """rotation @ p + translation for every point: points [..., H, W, 3], rotation [..., 3, 3], translation [..., 3]."""
    return torch.einsum("...ij,...hwj->...hwi", rotation, points) + translation[..., None, None, :]


def cam_to_world_points(cam_points: torch.Tensor, extrinsic: torch.Tensor) -> torch.Tensor:
    """Camera-frame points to world: cam_points [..., H, W, 3], camera-from-world extrinsic [..., 3, 4] -> [..., H, W, 3]."""
    rotation = extrinsic[..., :3, :3]
    translation = extrinsic[..., :3, 3]
    rotation_t = rotation.transpose(-1, -2)
    # x_world = R^T (x_cam - t) = R^T x_cam - R^T t
    return _apply_transform(cam_points, rotation_t, -(rotation_t @ translation[..., None])[..., 0])


def world_to_cam_points(world_points: torch.Tensor, extrinsic: torch.Tensor) -> torch.Tensor:
    """World points to the camera frame: [..., H, W, 3], extrinsic [..., 3, 4] -> [..., H, W, 3]."""
    return _apply_transform(world_points, extrinsic[..., :3, :3], extrinsic[..., :3, 3])


def depth_to_world_points(depth: torch.Tensor, extrinsic: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Depth maps to world points: depth [..., H, W], extrinsic [..., 3, 4], intrinsic [..., 3, 3] -> [..., H, W, 3]."""
    return cam_to_world_points(depth_to_cam_points(depth, intrinsic), extrinsic)


def unproject_batch(depths: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor, with_norm: bool = False):
    """(cam_points, world_points [B, S, H, W, 3], |world point| [B, S, H, W] or None) of depths [B, S, H, W] through
    intrinsics [B, S, 3, 3] and camera-from-world extrinsics [B, S, 3, 4], at integer pixel centres: the same
    numbers as depth_to_cam_points / depth_to_world_points to float rounding (those are the plain reference;
    this is the form the data pipeline runs on every batch).

    world = depth * R^T K^-1 [u, v, 1] + (-R^T t): the ray is separable in u and v, so each world channel is an
    outer sum of a row and a column term times the depth (a [HW, 3] x [3, 3] matmul is several times slower on
    the CPU).
    """
    B, S, H, W = depths.shape
    dev, dt = depths.device, depths.dtype
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    xs = (torch.arange(W, device=dev, dtype=dt) - cx) / fx  # [B, S, W]: camera x per unit depth
    ys = (torch.arange(H, device=dev, dtype=dt) - cy) / fy  # [B, S, H]
    # written channel by channel into the interleaved outputs (torch.stack on the last dim is ~5x slower on CPU)
    cam = torch.empty((B, S, H, W, 3), device=dev, dtype=dt)
    torch.mul(depths, xs[:, :, None, :], out=cam[..., 0])
    torch.mul(depths, ys[:, :, :, None], out=cam[..., 1])
    cam[..., 2] = depths
    rot_t = extrinsics[..., :3].transpose(-1, -2)  # [B, S, 3, 3]
    centre = -(rot_t @ extrinsics[..., 3:])[..., 0]  # [B, S, 3]
    world = torch.empty_like(cam)
    # one planar buffer for the three channels and one for the squared norm: on the CPU a fresh temporary costs
    # more in page faults than the arithmetic on it
    ray = torch.empty_like(depths)
    squares = torch.zeros_like(depths) if with_norm else None
    for k in range(3):
        row = ys * rot_t[..., k, 1, None] + rot_t[..., k, 2, None]  # [B, S, H]
        col = xs * rot_t[..., k, 0, None]  # [B, S, W]
        torch.add(row[..., :, None], col[..., None, :], out=ray).mul_(depths).add_(centre[..., k, None, None])
        world[..., k] = ray
        if with_norm:  # planar here: far cheaper than a norm over the interleaved last dim
            squares.addcmul_(ray, ray)
    return cam, world, (squares.sqrt_() if with_norm else None)


def project_world_points(
    world_points: torch.Tensor, extrinsic: torch.Tensor, intrinsic: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Project world points to pixels: [..., H, W, 3] -> (uv [..., H, W, 2], depth [..., H, W]).

    The inverse of `depth_to_world_points` (pixel (u, v) at its integer coordinate); depth is camera-frame z.
    """
    cam = world_to_cam_points(world_points, extrinsic)
    z = cam[..., 2]
    fx = intrinsic[..., 0, 0, None, None]
    fy = intrinsic[..., 1, 1, None, None]
    cx = intrinsic[..., 0, 2, None, None]
    cy = intrinsic[..., 1, 2, None, None]
    uv = torch.stack([fx * cam[..., 0] / z + cx, fy * cam[..., 1] / z + cy], dim=-1)
    return uv, z


# -- batch normalisation ---------------------------------------------------------------------------------------
# Bounds of the per-sample scene scale, and the epsilon added to the valid-point count, as in the official
# `normalize_camera_extrinsics_and_points_batch`.
_SCALE_MIN, _SCALE_MAX, _COUNT_EPS = 1e-6, 1e6, 1e-3


def _to_homogeneous(extrinsics: torch.Tensor) -> torch.Tensor:
    """[..., 3, 4] or [..., 4, 4] -> [..., 4, 4] (bottom row 0 0 0 1)."""
    if extrinsics.shape[-2:] == (4, 4):
        return extrinsics
    bottom = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([extrinsics, bottom], dim=-2)


def autocast_off(device_type: str):
    """A context that disables autocast on `device_type` (a no-op where autocast does not know the device).

    Geometry runs in full precision: a bf16 matmul would cost ~1e-2 relative error on the targets.
    """
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


def _zero_non_finite(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Replace NaN / +-inf by 0 (no clamping), so one corrupt frame cannot poison the whole batch."""
    if x is None:
        return None
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def normalize_batch(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Express a batch in the first camera's frame with unit mean point distance (per sample).

    Keys used: extrinsics [B, S, 3, 4] (or [B, S, 4, 4]), world_points [B, S, H, W, 3], point_masks [B, S, H, W]
    (bool or 0/1), and if present depths [B, S, H, W], cam_points [B, S, H, W, 3]. Returns a new dict (the input
    is not modified; every other key is passed through) in which:
      - extrinsics [B, S, 3, 4] = E_i @ inv(E_0): camera 0 becomes the identity (world origin), the rigid half
        (`first_camera_frame`);
      - world_points = R_0 X + t_0 (the same points in camera 0's frame);
      - scale = mean over valid pixels of |world_points| (the scale half, `scene_scale`); the
        translations, world_points, cam_points and depths are divided by it. Rotations and intrinsics are
        unchanged. A sample with no valid point (camera-only data) is scaled by the mean distance of its camera
        centres from camera 0 instead (the official code would give it 1e-6: values a million times too large).
    Computed in the input dtype (float32 in training), autocast off. Non-finite points are left out of the scale
    (the official code would get a NaN scale) and non-finite outputs are replaced by 0.
    The data pipeline calls the two halves itself: the rigid one in the worker (float64, per sample), the scale
    one where the batch is finished (data/pipeline/finish.py).
    """
    with autocast_off(batch["extrinsics"].device.type):
        return _normalize_batch(batch)


def first_camera_frame(extrinsics: torch.Tensor) -> torch.Tensor:
    """The rigid half of the batch normalisation: camera-from-world extrinsics [B, S, 3, 4] (or [B, S, 4, 4]) ->
    E_i @ inv(E_0) [B, S, 3, 4], so that camera 0 of each sample is the world origin. In the input dtype."""
    if extrinsics.ndim != 4 or extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [B, S, 3, 4] or [B, S, 4, 4], got {tuple(extrinsics.shape)}")
    extrinsics_h = _to_homogeneous(extrinsics)
    return (extrinsics_h @ closed_form_inverse_se3(extrinsics_h[:, 0])[:, None])[:, :, :3]


def scene_scale(distances: torch.Tensor, valid: torch.Tensor, extrinsics: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The scale half of the batch normalisation: per sample, the mean of `distances` [B, ...] over the bool mask
    `valid` (same shape), as sum / (count + 1e-3) clamped to [1e-6, 1e6] -> [B]. Translations, points and depths
    are divided by it.

    A sample without any valid point (camera-only data) would get 1e-6 and translations a million times too
    large; given its extrinsics [B, S, 3, 4] relative to camera 0, it gets the mean distance of its camera centres
    from camera 0 instead (same bounds), so its camera targets stay at unit scale."""
    dims = tuple(range(1, distances.ndim))
    total = torch.where(valid, distances, torch.zeros_like(distances)).sum(dim=dims)
    count = valid.sum(dim=dims).to(distances.dtype)
    scale = (total / (count + _COUNT_EPS)).clamp(min=_SCALE_MIN, max=_SCALE_MAX)
    if extrinsics is None:
        return scale
    rotation_t = extrinsics[..., :3].transpose(-1, -2).to(distances.dtype)
    centres = -(rotation_t @ extrinsics[..., 3:].to(distances.dtype))[..., 0]  # [B, S, 3]
    by_cameras = centres.norm(dim=-1).mean(dim=1).clamp(min=_SCALE_MIN, max=_SCALE_MAX)
    return torch.where(count > 0, scale, by_cameras)


def _normalize_batch(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """normalize_batch without the autocast guard."""
    extrinsics = batch["extrinsics"]
    new_extrinsics = first_camera_frame(extrinsics).clone()
    first = _to_homogeneous(extrinsics)[:, 0]  # [B, 4, 4]
    # camera 0's camera-from-world transform maps the old world frame to the new one
    new_world_points = _apply_transform(batch["world_points"], first[:, None, :3, :3], first[:, None, :3, 3])

    dist = new_world_points.norm(dim=-1)
    masks = batch["point_masks"]
    # A non-finite point never counts (the official mask-multiply would turn the whole sample's scale into NaN).
    valid = (masks > 0.5 if masks.dtype != torch.bool else masks) & torch.isfinite(dist)
    scale = scene_scale(dist, valid, new_extrinsics)  # [B]

    new_extrinsics[..., 3] = new_extrinsics[..., 3] / scale.view(-1, 1, 1)
    out = dict(batch)
    out["extrinsics"] = _zero_non_finite(new_extrinsics)
    out["world_points"] = _zero_non_finite(new_world_points / scale.view(-1, 1, 1, 1, 1))
    if batch.get("depths") is not None:
        out["depths"] = _zero_non_finite(batch["depths"] / scale.view(-1, 1, 1, 1))
    if batch.get("cam_points") is not None:
        out["cam_points"] = _zero_non_finite(batch["cam_points"] / scale.view(-1, 1, 1, 1, 1))
    return out
