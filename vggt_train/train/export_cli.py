"""`vggt-train export CKPT OUT`: the command line of export.py (official-format weights from a training checkpoint)."""

from __future__ import annotations

import argparse

from vggt_train.errors import CLIError
from vggt_train.train.export import export_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory, or a run's output_dir (newest complete checkpoint)")
    parser.add_argument("out", help="output file: .pt, .pth or .safetensors")
    parser.add_argument("--no-fill", action="store_true", help="leave out the heads the run was built without (default: taken from the run's starting "
                        "checkpoint, else their untrained initialisation, so the official code loads the file strictly)")


def run(args: argparse.Namespace) -> int:
    try:
        path = export_checkpoint(args.checkpoint, args.out, fill_missing=not args.no_fill)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {path}")
    return 0
