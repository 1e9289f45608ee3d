"""Evaluation metrics as pure functions: relative pose errors and AUC, depth AbsRel / delta, point-map chamfer.

Pose metrics follow the official VGGT Co3D evaluation exactly (see `vggt_train.evaluation.pose`); AUC and
RRA/RTA are fractions in [0, 1] (`pose_auc(..., percent=True)` for percent).
"""

from vggt_train.evaluation.depth import DEPTH_ALIGNMENTS, depth_metrics
from vggt_train.evaluation.points import nearest_neighbor_distances, point_metrics, umeyama
from vggt_train.evaluation.pose import NONFINITE_ERROR_DEG, pair_indices, pose_auc, relative_pose_errors, rra_rta

__all__ = [
    "DEPTH_ALIGNMENTS",
    "NONFINITE_ERROR_DEG",
    "depth_metrics",
    "nearest_neighbor_distances",
    "pair_indices",
    "point_metrics",
    "pose_auc",
    "relative_pose_errors",
    "rra_rta",
    "umeyama",
]
