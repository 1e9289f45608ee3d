"""`vggt-train inspect-batch`: draw one training batch and write a PNG grid (image, depth, mask per view) and a PLY
of its world points, for eyeballing the pipeline. Several dataset paths draw from their weighted mixture (as
data.mix does), and each sample is labelled with the dataset it came from."""

from __future__ import annotations

import argparse
import os
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw

from vggt_train.data.pipeline.dataset import MultiViewDataset
from vggt_train.data.pipeline.loader import RankBatchStream
from vggt_train.data.pipeline.sampler import Mixture, StepPlanner
from vggt_train.data.sources import ShardSource, resolve_split_dir
from vggt_train.data.sources.mixed import MixedSource
from vggt_train.errors import CLIError
from vggt_train.visual import colorize_depth, write_ply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="+", help="converted dataset (convert-co3d --out), or with --raw the Co3D dir; "
                                                "several: a batch of their weighted mixture, named by their last path component")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight > 0 per PATH, for a mixture [default: equal]")
    parser.add_argument("--split", default="train", help="split to read [default: train]")
    parser.add_argument("--raw", action="store_true", help="read the raw Co3D layout at PATH (needs --annotation-dir)")
    parser.add_argument("--annotation-dir", help="Co3D annotation dir (*.jgz), with --raw")
    parser.add_argument("--out", default="inspect", help="output directory [default: inspect]")
    parser.add_argument("--img-size", type=int, default=518, help="image width, a multiple of --patch-size [default: 518]")
    parser.add_argument("--patch-size", type=int, default=14, help="[default: 14]")
    parser.add_argument("--num-images", type=int, default=4, help="views per sample (S) [default: 4]")
    parser.add_argument("--samples", type=int, default=2, help="samples in the batch (B) [default: 2]")
    parser.add_argument("--aspect", type=float, default=1.0, help="aspect ratio H/W of the batch [default: 1.0]")
    parser.add_argument("--frame-sampling", choices=("random", "nearby"), default="nearby", help="[default: nearby]")
    parser.add_argument("--seed", type=int, default=0, help="planner seed [default: 0]")
    parser.add_argument("--step", type=int, default=0, help="which step's batch to draw [default: 0]")
    parser.add_argument("--no-augment", action="store_true", help="turn the random crop/resize/jitter off")
    parser.add_argument("--no-normalize", action="store_true", help="keep the stored world frame and scale")
    parser.add_argument("--max-points", type=int, default=300000, help="at most this many points in the PLY [default: 300000]")


def _build_dataset(args):
    """(MultiViewDataset, Mixture or None) of the PATH arguments."""
    kw = {"img_size": args.img_size, "patch_size": args.patch_size, "augment": not args.no_augment}
    paths = list(args.path)
    if args.weights is not None and (len(args.weights) != len(paths) or min(args.weights) <= 0):
        raise CLIError(f"--weights needs one number > 0 per PATH ({len(paths)}), got {args.weights}")
    if args.raw and len(paths) > 1:
        raise CLIError("--raw reads one Co3D dir: mix converted datasets only")
    try:
        if args.raw:
            if not args.annotation_dir:
                raise CLIError("--raw needs --annotation-dir")
            return MultiViewDataset.from_raw(paths[0], args.annotation_dir, args.split, **kw), None
        if len(paths) == 1:
            return MultiViewDataset(paths[0], args.split, **kw), None
        names = [os.path.basename(os.path.normpath(p)) for p in paths]
        mixed = MixedSource([(n, ShardSource(resolve_split_dir(p, args.split))) for n, p in zip(names, paths)])
        weights = tuple(args.weights or [1.0] * len(paths))
        return MultiViewDataset(source=mixed, **kw), Mixture(mixed.names, weights, tuple(mixed.ranges[n] for n in mixed.names))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise CLIError(str(exc).strip("'\"")) from None



def write_grid(batch: Dict, path: str) -> None:
    """One row per view: image | depth | mask, samples one after the other, each row labelled."""

    images = (batch["images"].permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)
    depths, masks = batch["depths"].numpy(), batch["point_masks"].numpy()
    B, S, H, W = depths.shape
    label_h, pad = 14, 2
    grid = Image.new("RGB", (3 * W + 4 * pad, B * S * (H + label_h + pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    y = pad
    for b in range(B):
        for s in range(S):
            frame = int(batch["frame_ids"][b, s])
            source = batch.get("sources", [""] * B)[b]
            origin = f"[{source}] " if source else ""
            draw.text((pad, y), f"{origin}{batch['seq_names'][b]} frame {frame} (sample {b}, view {s})", fill=(230, 230, 230))
            y += label_h
            tiles = [images[b, s], colorize_depth(depths[b, s], masks[b, s]), np.repeat(masks[b, s][..., None] * 255, 3, -1).astype(np.uint8)]
            for i, tile in enumerate(tiles):
                grid.paste(Image.fromarray(tile), (pad + i * (W + pad), y))
            y += H + pad
    grid.save(path)



def batch_points(batch: Dict, sample: int, max_points: int, seed: int = 0):
    """(points [N, 3], colors [N, 3] uint8) of the valid world points of one sample, subsampled to max_points."""
    mask = batch["point_masks"][sample].numpy()
    pts = batch["world_points"][sample].numpy()[mask]
    cols = (batch["images"][sample].permute(0, 2, 3, 1).numpy()[mask] * 255).round().astype(np.uint8)
    if len(pts) > max_points:
        keep = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    return pts.astype(np.float32), cols


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1 or args.samples < 1:
        raise CLIError("--num-images and --samples must be >= 1")
    if args.img_size % args.patch_size:
        raise CLIError(f"--img-size {args.img_size} must be a multiple of --patch-size {args.patch_size}")
    ds, mixture = _build_dataset(args)
    try:
        ds.target_shape(args.aspect)
        planner = StepPlanner(ds.index_info(), img_nums=(args.num_images, args.num_images), aspect_range=(args.aspect, args.aspect),
                              seed=args.seed, frame_sampling=args.frame_sampling, max_img_per_gpu=args.num_images * args.samples,
                              mixture=mixture)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    batch = RankBatchStream(ds, planner, normalize=not args.no_normalize, finish=True).batch(args.step)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"batch_step{args.step}.png")
    write_grid(batch, png)
    plys: List[str] = []
    for b in range(len(batch["seq_names"])):
        ply = os.path.join(args.out, f"batch_step{args.step}_sample{b}.ply")
        write_ply(*batch_points(batch, b, args.max_points, args.seed), ply)
        plys.append(ply)
    B, S, _, H, W = batch["images"].shape
    print(f"batch of step {args.step}: B={B} samples x S={S} views, {H}x{W} (aspect {batch['aspect_ratio']}), "
          f"{'augmented' if ds.augment else 'no augmentation'}, {'normalised' if not args.no_normalize else 'not normalised'}")
    for b in range(B):
        valid = batch["point_masks"][b].float().mean().item()
        source = batch["sources"][b]
        print(f"  sample {b}: {f'source {source}: ' if source else ''}{batch['seq_names'][b]} ({batch['categories'][b]}) "
              f"frames {batch['frame_ids'][b].tolist()}, {valid:.0%} valid depth")
    replaced = [r for rs in batch["replaced"] for r in rs]
    if replaced:
        print(f"  replaced unusable frames: {', '.join(replaced)}")
    print(f"wrote {png}")
    print(f"wrote {', '.join(plys)}")
    return 0
