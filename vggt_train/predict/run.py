"""`vggt-train predict` end to end: read the images, load the model, one forward, write every output file."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from vggt_train.evaluation.evaluate import load_model
from vggt_train.predict import glb, writers
from vggt_train.predict.images import list_inputs, read_inputs, stack_inputs
from vggt_train.predict.infer import PointCloud, Prediction, check_cameras, run_model, select_points

__all__ = ["PredictOptions", "PredictResult", "predict"]


@dataclass
class PredictOptions:
    """What `vggt-train predict` does (recorded in cameras.json)."""

    inputs: List[str]
    checkpoint: str
    out: str
    preset: str = "vggt_1b"
    conf_threshold: float = 50.0  # percentile (0-100) of the valid pixels' depth confidence
    max_points: int = 100_000
    img_size: int = 518
    copy_images: bool = True
    seed: int = 0  # of the --max-points draw


@dataclass
class PredictResult:
    prediction: Prediction
    cloud: PointCloud
    files: List[str] = field(default_factory=list)  # written, relative to options.out
    notes: List[str] = field(default_factory=list)  # what was skipped and why
    skipped: List[str] = field(default_factory=list)  # unreadable inputs (their messages)


def predict(options: PredictOptions, device: torch.device, strict: bool = False, progress: bool = True,
            on_skip: Optional[Callable[[str], None]] = None) -> PredictResult:
    """Run the prediction and write its files under options.out. Raises FileNotFoundError (checkpoint) or
    ValueError (inputs, checkpoint/preset mismatch) with one-line messages; an unreadable image stops the run
    with `strict`, else it is reported to `on_skip` and left out."""
    paths = list_inputs(options.inputs)
    if not os.path.exists(options.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {options.checkpoint}")
    skipped: List[str] = []

    def skip(message: str) -> None:
        skipped.append(message)
        if on_skip is not None:
            on_skip(message)

    bar = lambda xs: tqdm(xs, desc="read images", unit="img", disable=not progress)  # noqa: E731
    items = read_inputs(paths, options.img_size, None if strict else skip, bar)
    if not items:
        raise ValueError(f"none of the {len(paths)} input images could be read")
    batch = stack_inputs(items)
    model = load_model(options.checkpoint, options.preset, device)
    prediction = run_model(model, items, batch, device)
    del model
    check_cameras(prediction)
    cloud = select_points(prediction, options.conf_threshold, options.max_points, options.seed)
    return PredictResult(prediction, cloud, *_write(options, prediction, cloud, device), skipped=skipped)


def _write(options: PredictOptions, pred: Prediction, cloud: PointCloud, device: torch.device):
    out = options.out
    os.makedirs(out, exist_ok=True)
    files, notes = [], []
    meta: Dict = {"options": asdict(options), "device": str(device), "points_from": "depth head, unprojected with "
                  "the predicted cameras", "conf_value_at_threshold": cloud.threshold if math.isfinite(cloud.threshold) else None, "points": len(cloud.xyz)}
    writers.write_cameras_json(writers.cameras_document(pred, meta), os.path.join(out, "cameras.json"))
    files.append("cameras.json")
    sparse = writers.write_colmap(pred, cloud, out)
    files += [os.path.relpath(os.path.join(sparse, f"{n}.txt"), out) for n in ("cameras", "images", "points3D")]
    stems = writers.write_maps(pred, out)
    files += [f"depth/{s}.{ext}" for s in stems for ext in ("npy", "png")] + [f"conf/{s}.npy" for s in stems]
    writers.write_ply(cloud.xyz, cloud.rgb, os.path.join(out, "points.ply"))
    files.append("points.ply")
    if options.copy_images:
        writers.copy_images(pred, out)
        files += [f"images/{item.name}" for item in pred.images]
    if glb.trimesh_available():
        glb.write_glb(pred, cloud, os.path.join(out, "scene.glb"))
        files.append("scene.glb")
    else:
        notes.append("scene.glb skipped: trimesh is not installed (pip install 'vggt-train[viz]' or pip install trimesh)")
    return files, notes
