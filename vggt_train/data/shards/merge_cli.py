"""`vggt-train merge-shards OUT [PART_DIR ...]`: the command line of merge.py (join the parts of a conversion)."""

from __future__ import annotations

import argparse

from vggt_train.data.shards.layout import ConvertError
from vggt_train.data.shards.merge import merge_parts
from vggt_train.errors import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the dataset root: where parts wrote (shared filesystem) or where to gather them")
    parser.add_argument("part_dirs", nargs="*", metavar="PART_DIR",
                        help="directories of `convert-co3d --part i/n` runs to move into OUT (renamed, not copied)")


def run(args: argparse.Namespace) -> int:
    try:
        manifest = merge_parts(args.out, args.part_dirs)
    except ConvertError as exc:  # MergeError, or a damaged plan / part manifest
        raise CLIError(str(exc)) from exc
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['num_rows']} frames, {info['num_sequences']} sequences, {len(info['shards'])} shards")
    print(f"merged into {args.out}; check with: vggt-train verify-dataset {args.out}")
    return 0
