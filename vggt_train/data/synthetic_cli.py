"""`vggt-train make-synthetic-co3d --out DIR`: the command line of synthetic.py (procedural scenes, raw Co3D layout)."""

from __future__ import annotations

import argparse
import time

from vggt_train.cli_args import parse_size
from vggt_train.data.sources.select import CO3D_TRAIN_CATEGORIES
from vggt_train.data.synthetic import make_synthetic_co3d
from vggt_train.errors import CLIError, output_dir_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory; gets co3d/ (images, depths, masks) and annotations/ (*.jgz)")
    parser.add_argument("--categories", default="apple,tv",
                        help="comma-separated category names (any names; Co3D's are e.g. %s) [default: apple,tv]" % ",".join(CO3D_TRAIN_CATEGORIES[:4]))
    parser.add_argument("--sequences", type=int, default=3, help="train sequences per category [default: 3]")
    parser.add_argument("--test-sequences", type=int, default=1, help="test sequences per category [default: 1]")
    parser.add_argument("--frames", type=int, default=24, help="frames per sequence (convert-co3d drops sequences below --min-frames 24) [default: 24]")
    parser.add_argument("--size", default="96x128", help="image size HxW [default: 96x128]")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed and options give byte-identical files [default: 0]")


def run(args: argparse.Namespace) -> int:
    hw = parse_size(args.size, minimum=8)
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    if not cats or any(not c.isidentifier() and not c.replace("-", "").isalnum() for c in cats):
        raise CLIError(f"--categories must be comma-separated names, got {args.categories!r}")
    if args.frames < 1 or args.sequences < 0 or args.test_sequences < 0:
        raise CLIError("--frames must be >= 1 and --sequences/--test-sequences >= 0")

    problem = output_dir_problem(args.out)
    if problem:
        raise CLIError(f"cannot write --out {args.out}: {problem}")
    t0 = time.perf_counter()
    info = make_synthetic_co3d(args.out, cats, args.sequences, args.test_sequences, args.frames, hw, args.seed)
    print(f"wrote {info['frames']} frames ({len(cats)} categories) in {time.perf_counter() - t0:.1f}s")
    print(f"  co3d dir:       {info['co3d_dir']}\n  annotation dir: {info['annotation_dir']}")
    print(f"convert with: vggt-train convert-co3d --co3d-dir {info['co3d_dir']} --annotation-dir {info['annotation_dir']} --out OUT")
    return 0


def common_arguments(parser: argparse.ArgumentParser, size: str, frames: int) -> None:
    """--out, --frames, --size, --seed of the synthetic layout writers."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--frames", type=int, default=frames, help=f"frames per sequence [default: {frames}]")
    parser.add_argument("--size", default=size, help=f"image size HxW [default: {size}]")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed and options give byte-identical files [default: 0]")


def check_out(args: argparse.Namespace) -> None:
    """--frames >= 1 and a writable --out, or a one-line CLIError."""
    if args.frames < 1:
        raise CLIError("--frames must be >= 1")
    problem = output_dir_problem(args.out)
    if problem:
        raise CLIError(f"cannot write --out {args.out}: {problem}")
