"""`vggt-train make-synthetic-colmap --out DIR`: synthetic scenes as COLMAP workspaces (to try convert-colmap)."""

from __future__ import annotations

import argparse
import time

from vggt_train.cli_args import parse_size
from vggt_train.data.synthetic_cli import check_out, common_arguments
from vggt_train.data.synthetic_colmap import make_synthetic_colmap
from vggt_train.errors import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "96x128", 12)
    parser.add_argument("--workspaces", type=int, default=2, help="workspaces (sequences) to write [default: 2]")
    parser.add_argument("--text", action="store_true", help="write text models (.txt) instead of binary (.bin)")
    parser.add_argument("--no-depth", action="store_true", help="no dense depth maps: camera-only sequences")


def run(args: argparse.Namespace) -> int:
    check_out(args)
    if args.workspaces < 1:
        raise CLIError("--workspaces must be >= 1")
    t0 = time.perf_counter()
    info = make_synthetic_colmap(args.out, args.workspaces, args.frames, parse_size(args.size, minimum=8), args.seed,
                                 binary=not args.text, dense_depth=not args.no_depth)
    print(f"wrote {len(info['workspaces'])} COLMAP workspaces of {args.frames} images in {time.perf_counter() - t0:.1f}s")
    print(f"convert with: vggt-train convert-colmap --input {args.out} --out OUT")
    return 0
