"""`vggt-train make-synthetic-vkitti2 --out DIR`: synthetic scenes as a Virtual KITTI 2 tree (to try convert-vkitti2)."""

from __future__ import annotations

import argparse
import time

from vggt_train.cli_args import parse_size
from vggt_train.data.synthetic_cli import check_out, common_arguments
from vggt_train.data.synthetic_vkitti2 import make_synthetic_vkitti2
from vggt_train.errors import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "40x120", 24)
    parser.add_argument("--scenes", default="Scene01", help="comma list of scene names [default: Scene01]")
    parser.add_argument("--variations", default="clone,fog", help="comma list of variations [default: clone,fog]")


def run(args: argparse.Namespace) -> int:
    check_out(args)
    scenes = tuple(s.strip() for s in args.scenes.split(",") if s.strip())
    variations = tuple(v.strip() for v in args.variations.split(",") if v.strip())
    if not scenes or not variations:
        raise CLIError("--scenes and --variations must be non-empty comma lists")
    t0 = time.perf_counter()
    try:
        info = make_synthetic_vkitti2(args.out, scenes, variations, (0, 1), args.frames, parse_size(args.size, minimum=8),
                                      args.seed)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {len(info['sequences'])} Virtual KITTI 2 sequences of {args.frames} frames in {time.perf_counter() - t0:.1f}s")
    print(f"convert with: vggt-train convert-vkitti2 --vkitti-dir {args.out} --out OUT")
    return 0
