"""The single `vggt-train` entry point: parses the subcommand and dispatches to the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each subcommand lives in its own `*_cli.py` module (beside the library module it drives) exposing
# `add_arguments(parser)` and `run(args) -> int`; library modules hold no argument parsing.
# The CLI only imports the module that is asked for, so `vggt-train --help` stays fast and a missing
# optional dependency of one command never breaks the others.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vggt_train.train.train_cli", "train or fine-tune VGGT from a YAML config with key=value overrides (accelerate + DeepSpeed)"),
    "export": ("vggt_train.train.export_cli", "consolidate a training checkpoint (DeepSpeed ZeRO shards too) into an official model.pt/.safetensors"),
    "plan-memory": ("vggt_train.train.plan_memory_cli", "per-card memory of a training config on N cards (weights, grads, optimizer, activations) and the largest batch that fits"),
    "plot-metrics": ("vggt_train.train.plot_cli", "plot a run's loss curve (and validation AUC@30) to PNG and print a summary (first/last loss, AUC, samples/s)"),
    "model-info": ("vggt_train.model.info_cli", "build a VGGT preset, print parameters, one forward/backward with shapes, FLOPs and time"),
    "convert-co3d": ("vggt_train.data.shards.convert_cli", "convert raw Co3D into sharded Arrow datasets (load_from_disk layout), resumable, in parts"),
    "convert-colmap": ("vggt_train.data.shards.convert_colmap_cli", "convert COLMAP workspaces (your own scenes: images + undistorted sparse model [+ depth]) into training shards"),
    "convert-vkitti2": ("vggt_train.data.shards.convert_vkitti2_cli", "convert Virtual KITTI 2 (rgb, depth, textgt extracted) into training shards"),
    "merge-shards": ("vggt_train.data.shards.merge_cli", "join the parts of a `convert-co3d --part i/n` run into one dataset (moves, never copies)"),
    "verify-dataset": ("vggt_train.data.shards.verify_cli", "re-read every shard of a converted dataset: schema, counts, checksums, decodability"),
    "make-synthetic-co3d": ("vggt_train.data.synthetic_cli", "render procedural textured scenes with exact depth in the raw Co3D layout"),
    "make-synthetic-colmap": ("vggt_train.data.synthetic_colmap_cli", "write synthetic scenes as COLMAP workspaces (images, sparse model, dense depth) to try convert-colmap"),
    "make-synthetic-vkitti2": ("vggt_train.data.synthetic_vkitti2_cli", "write synthetic scenes as a Virtual KITTI 2 tree to try convert-vkitti2"),
    "inspect-batch": ("vggt_train.data.inspect_cli", "draw one training batch: PNG grid (image, depth, mask per view) + PLY of its world points"),
    "evaluate": ("vggt_train.evaluation.evaluate_cli", "evaluate checkpoints on a converted Co3D split with the official test protocol (AUC, RRA/RTA, depth); --compare two"),
    "predict": ("vggt_train.predict.predict_cli", "cameras, depth and a point cloud of your images: cameras.json, a COLMAP text model, depth maps, points.ply, scene.glb"),
    "kernels": ("vggt_train.kernels.kernels_cli", "list kernel backends per op (available, selected); --check compares each with the reference"),
}


from vggt_train.errors import DEBUG_ENV, CLIError, describe_os_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vggt-train",
        description="Train and fine-tune VGGT on NPU, GPU and CPU clusters.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # argument definitions are attached lazily in main() to keep imports light
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command = argv[0]
    if command not in SUBCOMMANDS:
        parser.print_usage(sys.stderr)
        print(f"vggt-train: error: unknown command {command!r}; choose from: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_text = SUBCOMMANDS[command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"vggt-train {command}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(module.run(args) or 0)
    except CLIError as exc:
        if debug:
            raise
        print(f"vggt-train {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a missing permission or a path under a file is the user's to fix and names its path;
        # other exceptions are bugs and keep their traceback.
        if debug:
            raise
        print(f"vggt-train {command}: error: {describe_os_error(exc)} (set {DEBUG_ENV}=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
