"""Run the Co3D test protocol (protocol.py) on a converted split: the model on every planned sequence, per-sequence
pose and depth errors, per-category metrics, the mean over categories and the eval.json document.

Per category (the official aggregation): the pair errors of all its sequences are pooled, then AUC@30/15/5/3 and
RRA@15 / RTA@15 are taken over the pooled pairs, all in percent. Depth (ours; the official test does not score it):
per sequence AbsRel and delta < 1.25 after per-frame median scaling over the pixels with stored depth > 0 (see
evaluation/depth.py), then the mean over the category's sequences that have such pixels; delta in percent.
The mean row is the unweighted mean over categories (for depth, over the categories that have depth).

Several processes (accelerate launch / torchrun): every rank makes the same plan, evaluates the sequences
i with i % world == rank, and the records are gathered in plan order on every rank: with one sequence per
forward the numbers are those of one process.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from vggt_train.data.sources.base import BadFrame, ShardReadError
from vggt_train.evaluation.depth import depth_metrics
from vggt_train.evaluation.pose import pose_auc, relative_pose_errors, rra_rta
from vggt_train.evaluation.protocol import Plan, SequencePlan, pad_views, plan_sequences, preprocess_depth, preprocess_image
from vggt_train.geometry import pose_encoding_to_extri_intri
from vggt_train.model import VGGT, load_pretrained
from vggt_train.model.weights import compare_state_dict

__all__ = ["EvalOptions", "METRIC_KEYS", "make_plan", "load_model", "evaluate_plan", "aggregate", "document",
           "format_table", "format_comparison", "DistContext"]

METRIC_KEYS = ("auc@30", "auc@15", "auc@5", "auc@3", "rra@15", "rta@15", "depth_abs_rel", "depth_delta_1.25")
AUC_THRESHOLDS = (30, 15, 5, 3)
RRA_THRESHOLD = 15
HEADS_NOT_EVALUATED = ("point_head.", "track_head.")


@dataclass
class EvalOptions:
    """The protocol's options, recorded in eval.json."""

    checkpoint: str
    data: str
    split: str = "test"
    preset: str = "vggt_1b"
    categories: Optional[List[str]] = None  # None: every category of the split
    frames: int = 10
    min_frames: int = 50
    seed: int = 0
    img_size: int = 518
    batch: int = 1


def make_plan(source, options: EvalOptions) -> Plan:
    """The protocol's plan over the sequences of a ShardSource in `options.categories` (None: all)."""
    wanted = None if options.categories is None else set(options.categories)
    by_category: Dict[str, List[str]] = {}
    for sequence in source.sequences:
        category = source.category(sequence)
        if wanted is None or category in wanted:
            by_category.setdefault(category, []).append(sequence)

    def extrinsics(sequence: str) -> np.ndarray:
        return source.split.get_frames(sequence, decode_images=False)["extrinsics"]

    return plan_sequences(by_category, source.num_frames, extrinsics, options.frames, options.min_frames, options.seed)


def _state_dict_of_run(path: Path) -> Dict[str, torch.Tensor]:
    # the trainer's checkpoints (DeepSpeed shards included): imported here, it pulls accelerate/DeepSpeed helpers
    from vggt_train.train import checkpoints
    from vggt_train.train.export import consolidated_state_dict

    ckpt = path if checkpoints.is_complete(path) else checkpoints.latest_complete(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint file, a complete checkpoint directory nor a run directory holding one")
    return consolidated_state_dict(ckpt)


def load_model(checkpoint: str, preset: str, device: torch.device) -> torch.nn.Module:
    """VGGT `preset` without the point and track heads (not evaluated), weights from an official .pt/.safetensors
    file or a training checkpoint / run directory, in eval mode on `device`. Raises FileNotFoundError or
    ValueError (a checkpoint that does not match the preset names the keys)."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    model = VGGT.from_preset(preset, point_head=None, track_head=None)
    try:
        if path.is_dir():
            state = {k: v for k, v in _state_dict_of_run(path).items() if not k.startswith(HEADS_NOT_EVALUATED)}
            report = compare_state_dict(model, state)
            if not report.ok:
                raise ValueError(f"checkpoint {checkpoint} does not match preset {preset!r}: {report.describe(limit=5)}")
            model.load_state_dict(state)
        else:
            load_pretrained(model, path, ignore_prefixes=HEADS_NOT_EVALUATED)
    except RuntimeError as exc:  # CheckpointMismatchError: the preset is not the checkpoint's architecture
        raise ValueError(f"{exc} (is --preset {preset!r} right?)".replace("\n", " ")) from None
    return model.eval().to(device)


class DistContext:
    """This process's rank among `world` evaluation processes; gather() collects picklable objects on every rank."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self._started = False
        # gloo carries only the gathered records (Python objects), whatever device the model runs on
        if self.world > 1 and not tdist.is_initialized():
            tdist.init_process_group("gloo")
            self._started = True

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._started:
            tdist.barrier()  # every rank done before any tears the group down (a rank gone early can hang the rest)
            tdist.destroy_process_group()


def _read_views(source, plan: SequencePlan, img_size: int):
    """(images [S, 3, H, W], gt depths [S, H, W], gt extrinsics [S, 3, 4] float64) of the planned frames."""
    images, depths, extrinsics = [], [], []
    for position in plan.frames:
        frame = source.read_frame(plan.sequence, position)
        images.append(preprocess_image(frame.image, img_size))
        if frame.depth is None:  # a camera-only frame: no pixel has a depth to score
            depths.append(torch.zeros(images[-1].shape[-2:]))
        else:
            depths.append(preprocess_depth(frame.depth, img_size))
        extrinsics.append(torch.tensor(np.array(frame.extrinsic, dtype=np.float64)))  # a copy: the shard view is read-only
    images, depths = pad_views(images, depths)
    return images, depths, torch.stack(extrinsics)


def _autocast(device: torch.device):
    """bf16 autocast on an accelerator (as the official test on a recent GPU), float32 on the CPU."""
    return nullcontext() if device.type == "cpu" else torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _score(plan: SequencePlan, pred: Dict[str, torch.Tensor], depths: torch.Tensor, gt_extrinsics: torch.Tensor,
           image_hw) -> dict:
    """The record of one sequence from its predictions (pose_enc [S, 9], depth [S, H, W, 1] or absent)."""
    extrinsics, _ = pose_encoding_to_extri_intri(pred["pose_enc"].float(), image_hw, build_intrinsics=False)
    rot, trans = relative_pose_errors(extrinsics, gt_extrinsics)
    record = {"category": plan.category, "sequence": plan.sequence, "frames": list(plan.frames),
              "pred_extrinsics": extrinsics.cpu().double().tolist(),
              "rot_err": rot.cpu().tolist(), "trans_err": trans.cpu().tolist()}
    if "depth" in pred and pred["depth"] is not None:
        record["depth"] = depth_metrics(pred["depth"][..., 0].float().cpu(), depths, align="median")
    return record


def evaluate_plan(model: Callable, source, plan: Plan, options: EvalOptions, device: torch.device,
                  dist: Optional[DistContext] = None, progress: bool = True, on_skip: Optional[Callable] = None) -> List[dict]:
    """Records of every planned sequence in plan order (gathered from all ranks), each {"category", "sequence",
    "frames", "pred_extrinsics" [S][3][4], "rot_err", "trans_err" (per pair, degrees), "depth" (depth_metrics)}
    or {"category", "sequence", "frames", "error"} for a sequence whose frames cannot be read (skipped)."""
    dist = dist or DistContext()
    mine = list(range(dist.rank, len(plan.sequences), dist.world))
    records: Dict[int, dict] = {}
    bar = tqdm(total=len(mine), desc=f"evaluate (rank 0 of {dist.world})" if dist.world > 1 else "evaluate",
               unit="seq", disable=not progress or dist.rank != 0)
    group: List[tuple] = []

    def flush():
        if not group:
            return
        images = torch.stack([g[1] for g in group]).to(device)
        with torch.no_grad(), _autocast(device):
            pred = model(images)
        for b, (index, imgs, depths, gt) in enumerate(group):
            one = {k: pred[k][b] for k in ("pose_enc", "depth") if k in pred}
            records[index] = _score(plan.sequences[index], one, depths, gt, imgs.shape[-2:])
        bar.update(len(group))
        group.clear()

    for index in mine:
        seq = plan.sequences[index]
        try:
            images, depths, gt = _read_views(source, seq, options.img_size)
        except (BadFrame, ShardReadError) as exc:
            records[index] = {"category": seq.category, "sequence": seq.sequence, "frames": list(seq.frames), "error": str(exc)}
            if on_skip is not None:
                on_skip(records[index])
            continue
        # one forward takes sequences of one image size only
        if group and (len(group) >= options.batch or group[0][1].shape != images.shape):
            flush()
        group.append((index, images, depths, gt))
    flush()
    bar.close()
    merged: Dict[int, dict] = {}
    for part in dist.gather(records):
        merged.update(part)
    return [merged[i] for i in range(len(plan.sequences))]


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def aggregate(records: List[dict]) -> tuple:
    """({category: {METRIC_KEYS: value or None}}, {METRIC_KEYS: mean over categories}) of the scored records
    (records with an "error" are left out). Categories keep the order of their first record."""
    by_category: Dict[str, List[dict]] = {}
    for r in records:
        if "error" not in r:
            by_category.setdefault(r["category"], []).append(r)
    categories = {}
    for category, recs in by_category.items():
        rot = np.concatenate([np.asarray(r["rot_err"], dtype=np.float64) for r in recs])
        trans = np.concatenate([np.asarray(r["trans_err"], dtype=np.float64) for r in recs])
        row = {f"auc@{t}": pose_auc(rot, trans, t, percent=True) for t in AUC_THRESHOLDS}
        rra, rta = rra_rta(rot, trans, RRA_THRESHOLD)
        row[f"rra@{RRA_THRESHOLD}"], row[f"rta@{RRA_THRESHOLD}"] = 100.0 * rra, 100.0 * rta
        # a sequence without any stored depth has nothing to score; a NaN from a failed prediction stays and shows
        depth = [r["depth"] for r in recs if r.get("depth") and r["depth"]["num_valid"] > 0]
        row["depth_abs_rel"] = _mean([d["abs_rel"] for d in depth])
        delta = _mean([d["delta_1_25"] for d in depth])
        row["depth_delta_1.25"] = None if delta is None else 100.0 * delta
        categories[category] = row
    mean = {k: _mean([row[k] for row in categories.values() if row[k] is not None]) for k in METRIC_KEYS}
    return categories, mean


def _json_number(x):
    """NaN/inf are not JSON: written as null."""
    return None if x is None or not math.isfinite(x) else x


def document(options: EvalOptions, records: List[dict], categories: dict, mean: dict, skipped: list) -> dict:
    """The eval.json document (see the README's "Evaluate and compare")."""
    clean = lambda row: {k: _json_number(v) for k, v in row.items()}  # noqa: E731
    return {
        "protocol": asdict(options),
        "categories": {c: clean(row) for c, row in categories.items()},
        "mean": clean(mean),
        "sequences": [{"category": r["category"], "sequence": r["sequence"], "frames": r["frames"],
                       "pred_extrinsics": r["pred_extrinsics"]} for r in records if "error" not in r],
        "skipped": [asdict(s) for s in skipped] + [{"category": r["category"], "sequence": r["sequence"], "reason": r["error"]}
                                                    for r in records if "error" in r],
    }


_HEADERS = ("AUC@30", "AUC@15", "AUC@5", "AUC@3", "RRA@15", "RTA@15", "AbsRel", "d<1.25")


def _cell(value, signed: bool = False, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    digits = 4 if key == "depth_abs_rel" else 2
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_table(categories: dict, mean: dict, signed: bool = False) -> str:
    """A per-category table and the mean row (AUC, RRA, RTA, delta in percent; AbsRel a ratio)."""
    width = max([len("category")] + [len(c) for c in categories] + [len("mean")])
    lines = [f"{'category':<{width}}  " + "  ".join(f"{h:>8}" for h in _HEADERS)]
    for name, row in list(categories.items()) + [("mean", mean)]:
        if name == "mean":
            lines.append("-" * len(lines[0]))
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_cell(row.get(k), signed, k):>8}" for k in METRIC_KEYS))
    return "\n".join(lines)


def difference(a: dict, b: dict) -> dict:
    """b - a per key (None where either is None)."""
    return {k: None if a.get(k) is None or b.get(k) is None else b[k] - a[k] for k in METRIC_KEYS}


def format_comparison(first: tuple, second: tuple) -> str:
    """The difference table (second - first) of two aggregate() results over the same categories."""
    (cats_a, mean_a), (cats_b, mean_b) = first, second
    diffs = {c: difference(cats_a[c], cats_b[c]) for c in cats_a if c in cats_b}
    return format_table(diffs, difference(mean_a, mean_b), signed=True)
