"""`vggt-train evaluate`: the command line of evaluate.py (the official Co3D test protocol on a converted split)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from vggt_train.data.sources.base import BadFrame, ShardReadError
from vggt_train.data.sources.select import select_categories
from vggt_train.data.sources.shards import ShardSource, resolve_split_dir
from vggt_train.errors import CLIError, output_dir_problem
from vggt_train.evaluation import evaluate
from vggt_train.evaluation.protocol import OFFICIAL_CATEGORIES, PATCH_MULTIPLE
from vggt_train.model.config import PRESETS
from vggt_train.train.device import CHOICES, DeviceError, resolve_device

OFFICIAL = "official"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a checkpoint on a converted Co3D split with the official VGGT test protocol: per category, every "
        "sequence with at least --min-frames frames, --frames frames drawn with numpy's RandomState(--seed), images "
        "preprocessed as the official load_and_preprocess_images (crop mode). Prints AUC@30/15/5/3, RRA@15, RTA@15 "
        "(percent) and depth AbsRel / delta<1.25 per category and their mean; writes --out. Under accelerate "
        "launch the sequences are split across the processes (same numbers as one process).")
    parser.add_argument("--checkpoint", required=True, help="official-format model.pt / .safetensors, or a training "
                        "checkpoint directory / run directory (newest complete checkpoint)")
    parser.add_argument("--data", required=True, help="converted dataset (convert-co3d --out) or one split directory")
    parser.add_argument("--preset", default="vggt_1b", choices=sorted(PRESETS), help="model architecture (default: vggt_1b)")
    parser.add_argument("--split", default="test", help="split of --data (default: test)")
    parser.add_argument("--categories", default="all", help="all (default), 'official' (the official script's 20 "
                        "categories present in the split), train41, or names: apple,tv")
    parser.add_argument("--frames", type=int, default=10, help="frames per sequence (default: 10)")
    parser.add_argument("--min-frames", type=int, default=50, help="sequences with fewer frames are skipped (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the frame draw once (default: 0)")
    parser.add_argument("--img-size", type=int, default=518, help="input width; height keeps the aspect, a multiple "
                        "of 14, centre-cropped to this (default: 518)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward (same image size only; default: "
                        "1, the official; more is faster on an accelerator and may change the last digits)")
    parser.add_argument("--out", default="eval.json", help="where the results go (default: eval.json)")
    parser.add_argument("--compare", metavar="CKPT2", help="also evaluate this checkpoint on the same frames and print "
                        "the difference (CKPT2 - CHECKPOINT) per category")
    parser.add_argument("--device", default="auto", choices=CHOICES, help="auto (default): an NPU, else a GPU, else the CPU")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable frame (default: skip its "
                        "sequence and report it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(args: argparse.Namespace) -> None:
    if args.frames < 2:
        raise CLIError(f"--frames must be at least 2 (pose errors need a pair), got {args.frames}")
    if args.min_frames < args.frames:
        raise CLIError(f"--min-frames ({args.min_frames}) must be at least --frames ({args.frames})")
    if args.img_size < PATCH_MULTIPLE or args.img_size % PATCH_MULTIPLE:
        raise CLIError(f"--img-size must be a positive multiple of {PATCH_MULTIPLE}, got {args.img_size}")
    if args.batch < 1:
        raise CLIError(f"--batch must be at least 1, got {args.batch}")
    for flag, path in (("--checkpoint", args.checkpoint), ("--compare", args.compare)):
        if path is not None and not os.path.exists(path):
            raise CLIError(f"{flag}: checkpoint not found: {path}")
    problem = output_dir_problem(os.path.dirname(os.path.abspath(args.out)))
    if problem:
        raise CLIError(f"--out {args.out}: {problem}")


def _categories(args: argparse.Namespace, source: ShardSource):
    """The selected categories (None: all), checked against the split; ValueError naming the missing ones."""
    present = {source.category(s) for s in source.sequences}
    if args.categories.strip() == OFFICIAL:
        chosen = [c for c in OFFICIAL_CATEGORIES if c in present]
        if not chosen:
            raise ValueError(f"none of the official test categories is in the split (it holds {', '.join(sorted(present))})")
        return chosen
    if args.categories.strip() in ("", "all"):
        return None
    try:
        return select_categories(args.categories, present)
    except ValueError as exc:
        raise ValueError(f"--categories: {exc}; the split holds {', '.join(sorted(present))}") from None


def _device(requested: str, local_rank: int) -> torch.device:
    choice = resolve_device(requested)
    if choice.type == "cpu":
        return torch.device("cpu")
    device = torch.device(choice.type, local_rank % max(1, choice.local_count))
    getattr(torch, choice.type).set_device(device)  # torch.cuda / torch.npu (torch_npu): collectives and kernels use it
    return device


def _evaluate(checkpoint: str, options, source, plan, device, dist, progress: bool, strict: bool):
    try:
        model = evaluate.load_model(checkpoint, options.preset, device)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None

    def on_skip(record):
        if strict:
            raise CLIError(record["error"])
        print(f"skipped {record['category']}/{record['sequence']}: {record['error']}", file=sys.stderr)

    records = evaluate.evaluate_plan(model, source, plan, options, device, dist, progress, on_skip)
    del model
    if not any("error" not in r for r in records):
        raise CLIError("no sequence could be evaluated (every planned sequence had unreadable frames)")
    return records, evaluate.aggregate(records)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        split_dir = resolve_split_dir(args.data, args.split)
        source = ShardSource(split_dir)
        categories = _categories(args, source)
    except (FileNotFoundError, ValueError, BadFrame, ShardReadError) as exc:
        raise CLIError(str(exc)) from None
    options = evaluate.EvalOptions(checkpoint=args.checkpoint, data=args.data, split=args.split, preset=args.preset,
                                   categories=categories, frames=args.frames, min_frames=args.min_frames,
                                   seed=args.seed, img_size=args.img_size, batch=args.batch)
    plan = evaluate.make_plan(source, options)
    if not plan.sequences:
        which = "all categories" if categories is None else ", ".join(categories)
        raise CLIError(f"no sequence of {which} in {split_dir} has at least --min-frames {args.min_frames} frames "
                       f"({len(plan.skipped)} skipped); lower --min-frames")
    try:
        dist = evaluate.DistContext()
        device = _device(args.device, dist.local_rank)
    except DeviceError as exc:
        raise CLIError(str(exc)) from None
    try:
        progress = not args.no_progress
        records, (cats, mean) = _evaluate(args.checkpoint, options, source, plan, device, dist, progress, args.strict)
        doc = evaluate.document(options, records, cats, mean, plan.skipped)
        second = None
        if args.compare:
            records_b, second = _evaluate(args.compare, options, source, plan, device, dist, progress, args.strict)
            doc["compare"] = {"checkpoint": args.compare, **{k: v for k, v in evaluate.document(
                options, records_b, *second, []).items() if k in ("categories", "mean", "sequences")}}
            diff_cats = {c: evaluate.difference(cats[c], second[0][c]) for c in cats if c in second[0]}
            doc["compare"]["difference"] = {"categories": diff_cats, "mean": evaluate.difference(mean, second[1])}
        if dist.rank == 0:
            _report(args, plan, records, cats, mean, second, doc)
    finally:
        dist.close()
    return 0


def _report(args, plan, records, cats, mean, second, doc) -> None:
    evaluated = sum("error" not in r for r in records)
    print(f"{args.checkpoint}: {evaluated} sequences x {args.frames} frames in {len(cats)} categories "
          f"({len(doc['skipped'])} skipped)")
    print(evaluate.format_table(cats, mean))
    if second is not None:
        print(f"\n{args.compare}:")
        print(evaluate.format_table(*second))
        print(f"\ndifference ({args.compare} - {args.checkpoint}):")
        print(evaluate.format_comparison((cats, mean), second))
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    print(f"wrote {args.out}")
