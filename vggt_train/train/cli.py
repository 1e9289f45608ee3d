"""`vggt-train train`: load and validate the config, then run the Trainer (under accelerate launch or alone)."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); every key can be overridden below")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. data.path=/data/co3d train.max_steps=1000 model.frozen='[aggregator*]'")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.epilog = ("Launch on 8 NPUs: accelerate launch --config_file accelerate_configs/npu_8p.yaml -m vggt_train.train "
                     "--config configs/finetune_co3d.yaml data.path=... ; on CPU for a try: vggt-train train --config configs/demo_cpu.yaml")


def run(args: argparse.Namespace) -> int:
    import yaml

    from vggt_train.cli import CLIError
    from vggt_train.train.config import ConfigError, load_config, to_dict

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        _fail(CLIError(f"bad config: {exc}"))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from vggt_train.train.loop import Trainer, TrainingError

    try:
        Trainer(cfg).fit()
    except (TrainingError, ConfigError) as exc:
        _fail(CLIError(str(exc)))
    finally:
        _shutdown_distributed()
    return 0


def _fail(error: Exception) -> None:
    """Every rank stops with exit code 2, but only rank 0 prints: one line, not one per process."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        raise error from None
    raise SystemExit(2)


def _shutdown_distributed() -> None:
    # gloo aborts the process at exit when a process group is still alive
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> int:
    from vggt_train.cli import CLIError

    parser = argparse.ArgumentParser(prog="python -m vggt_train.train", description="Train VGGT (see vggt-train train --help).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CLIError as exc:
        print(f"vggt-train train: error: {exc}", file=sys.stderr)
        return 2
