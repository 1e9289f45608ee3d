"""`vggt-train convert-colmap`: convert COLMAP workspaces (the user's own scenes) into training shards."""

from __future__ import annotations

import argparse
import os

from vggt_train.data.shards.convert_cli import add_output_arguments, output_options, run_conversion
from vggt_train.errors import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True,
                        help="a COLMAP workspace (images/ + sparse/0/ or sparse/, binary or text model; undistorted: "
                             "PINHOLE or SIMPLE_PINHOLE cameras) or a folder whose subfolders are workspaces; each "
                             "workspace becomes one sequence named after its folder")
    parser.add_argument("--name", default=None,
                        help="the category of every sequence [default: the --input folder's name]")
    parser.add_argument("--split", default="train", help="the split to write (OUT/<split>) [default: train]")
    parser.add_argument("--depth-dir", default=None,
                        help="per-image depth as <depth-dir>/<image name without extension>.npy (float, metres, 0 or "
                             "negative = invalid) relative to each workspace [default: COLMAP's dense depth maps "
                             "stereo/depth_maps/*.geometric.bin when present; frames without depth are camera-only]")
    add_output_arguments(parser, 2, "convert-colmap")


def run(args: argparse.Namespace) -> int:
    name = args.name or os.path.basename(os.path.normpath(os.path.abspath(args.input)))
    if not name or "/" in name or name in (".", ".."):
        raise CLIError(f"--name {name!r} must be a plain name")
    opts = output_options(args, (args.split,), input_format="colmap",
                          inputs={"input": os.path.abspath(args.input), "name": name, "depth_dir": args.depth_dir})
    return run_conversion(opts)
