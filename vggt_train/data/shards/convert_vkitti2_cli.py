"""`vggt-train convert-vkitti2`: convert Virtual KITTI 2 into training shards (the official loader's geometry)."""

from __future__ import annotations

import argparse
import os

from vggt_train.data.shards.convert_cli import add_output_arguments, output_options, run_conversion


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vkitti-dir", required=True,
                        help="the release's rgb, depth and textgt archives extracted into one folder: "
                             "Scene*/<variation>/frames/{rgb,depth}/Camera_<c>/ and Scene*/<variation>/{intrinsic,extrinsic}.txt")
    parser.add_argument("--scenes", default=None, help="comma list, e.g. Scene01,Scene02 [default: all]")
    parser.add_argument("--variations", default=None, help="comma list, e.g. clone,fog [default: all]")
    parser.add_argument("--cameras", default=None, help="comma list of camera ids, e.g. 0,1 [default: all]")
    parser.add_argument("--split", default="train", help="the split to write (OUT/<split>) [default: train]")
    add_output_arguments(parser, 24, "convert-vkitti2")


def run(args: argparse.Namespace) -> int:
    opts = output_options(args, (args.split,), input_format="vkitti2",
                          inputs={"input": os.path.abspath(args.vkitti_dir), "scenes": args.scenes,
                                  "variations": args.variations, "cameras": args.cameras})
    return run_conversion(opts)
