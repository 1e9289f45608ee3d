"""`vggt-train predict`: the command line of predict/run.py (cameras, depth and points of your own images)."""

from __future__ import annotations

import argparse
import sys

import torch

from vggt_train.errors import CLIError, output_dir_problem
from vggt_train.evaluation.protocol import PATCH_MULTIPLE
from vggt_train.model.config import PRESETS
from vggt_train.predict.run import PredictOptions, predict
from vggt_train.train.device import CHOICES, DeviceError, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a VGGT checkpoint on your images (one forward over all of them) and write, under --out: cameras.json "
        "(OpenCV camera-from-world extrinsics, intrinsics in each original image's pixels), a COLMAP text model in "
        "sparse/ (PINHOLE per image; points from the confident depth, no bundle adjustment), depth/<stem>.npy + "
        ".png and conf/<stem>.npy at the original resolution, points.ply, images/ (a copy of the inputs: --out is "
        "a COLMAP workspace) and scene.glb with camera frusta (needs trimesh). Images are preprocessed as the "
        "official load_and_preprocess_images (crop mode).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a folder of images (.jpg .png ..., not "
                        "recursive, sorted by name) or image files (in the order given)")
    parser.add_argument("--checkpoint", required=True, help="official-format model.pt / .safetensors, or a training "
                        "checkpoint directory / run directory (newest complete checkpoint)")
    parser.add_argument("--out", required=True, help="output folder (created; files of the same names are replaced)")
    parser.add_argument("--preset", default="vggt_1b", choices=sorted(PRESETS), help="model architecture (default: vggt_1b)")
    parser.add_argument("--conf-threshold", type=float, default=50.0, metavar="Q", help="keep the points whose "
                        "depth confidence is at or above the Q-th percentile (0-100) over all images (default: 50)")
    parser.add_argument("--max-points", type=int, default=100_000, metavar="N", help="at most N points in "
                        "points.ply / points3D.txt / scene.glb, a seeded draw (default: 100000)")
    parser.add_argument("--img-size", type=int, default=518, help="model input width; height keeps the aspect, a "
                        "multiple of 14, centre-cropped to this (default: 518)")
    parser.add_argument("--device", default="auto", choices=CHOICES, help="auto (default): an NPU, else a GPU, else the CPU")
    parser.add_argument("--no-images", action="store_true", help="do not copy the inputs to --out/images/")
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable image (default: skip it and "
                        "report it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.conf_threshold <= 100:
        raise CLIError(f"--conf-threshold is a percentile in 0..100, got {args.conf_threshold:g}")
    if args.max_points < 1:
        raise CLIError(f"--max-points must be at least 1, got {args.max_points}")
    if args.img_size < PATCH_MULTIPLE or args.img_size % PATCH_MULTIPLE:
        raise CLIError(f"--img-size must be a positive multiple of {PATCH_MULTIPLE}, got {args.img_size}")
    problem = output_dir_problem(args.out)
    if problem:
        raise CLIError(f"--out {args.out}: {problem}")


def _device(requested: str) -> torch.device:
    choice = resolve_device(requested)
    return torch.device("cpu") if choice.type == "cpu" else torch.device(choice.type, 0)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    options = PredictOptions(inputs=list(args.inputs), checkpoint=args.checkpoint, out=args.out, preset=args.preset,
                             conf_threshold=args.conf_threshold, max_points=args.max_points, img_size=args.img_size,
                             copy_images=not args.no_images)
    try:
        device = _device(args.device)
        result = predict(options, device, strict=args.strict, progress=not args.no_progress,
                         on_skip=lambda message: print(f"skipped {message}", file=sys.stderr))
    except (FileNotFoundError, ValueError, DeviceError) as exc:
        raise CLIError(str(exc)) from None
    pred, cloud = result.prediction, result.cloud
    print(f"{len(pred.images)} images ({len(result.skipped)} skipped) on {device}; grid "
          f"{pred.depth.shape[2]}x{pred.depth.shape[1]}; {len(cloud.xyz)} points (confidence >= {cloud.threshold:.4g}, "
          f"the {args.conf_threshold:g}th percentile of {cloud.candidates} pixels)")
    for note in result.notes:
        print(note)
    print(f"wrote {len(result.files)} files to {args.out} (cameras.json, sparse/, depth/, conf/, points.ply"
          f"{', images/' if options.copy_images else ''}{', scene.glb' if 'scene.glb' in result.files else ''})")
    return 0
