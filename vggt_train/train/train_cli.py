"""`vggt-train train`: load and validate the config, then run the Trainer (under accelerate launch or alone)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import yaml

from vggt_train import run_lock
from vggt_train.errors import CLIError, describe_os_error
from vggt_train.model.hub import CheckpointSourceError
from vggt_train.run_lock import LOCK_FILE, LockHeldError
from vggt_train.train.config import ConfigError, load_config, to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); every key can be overridden below")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. data.path=/data/co3d train.max_steps=1000 model.frozen='[aggregator*]'")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.epilog = ("Launch on 8 NPUs: accelerate launch --config_file accelerate_configs/npu_8p.yaml -m vggt_train.train "
                     "--config configs/finetune_co3d.yaml data.path=... ; on CPU for a try: vggt-train train --config configs/demo_cpu.yaml")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        _fail(CLIError(f"bad config: {exc}"), _output_dir_of(args))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0

    with contextlib.ExitStack() as stack:
        if _is_rank0():  # one lock per run, taken before anything is written (error.txt belongs to the holder)
            try:
                stack.enter_context(run_lock.hold(Path(cfg.output_dir) / LOCK_FILE, "training (vggt-train train)"))
            except LockHeldError as exc:
                raise CLIError(str(exc)) from None
            except OSError as exc:
                raise CLIError(f"cannot lock output_dir: {describe_os_error(exc)}") from None
        _train(cfg)
    return 0


def _train(cfg) -> None:
    # torch, accelerate and DeepSpeed load here, once the config is valid: --print-config and a bad config answer fast
    from vggt_train.train.device import DeviceError
    from vggt_train.train.loop import Trainer, TrainingError

    _clear_error_file(cfg.output_dir)
    try:
        Trainer(cfg).fit()
    except (ConfigError, DeviceError, CheckpointSourceError) as exc:  # the same on every rank: said once
        _fail(CLIError(str(exc)), cfg.output_dir)
    except TrainingError as exc:  # may be one rank's own (its weights, its data): every rank says it
        _fail(CLIError(str(exc)), cfg.output_dir, every_rank=True)
    except OSError as exc:  # a full disk, a permission, an output_dir that is a file: the user's to fix
        _fail(CLIError(describe_os_error(exc)), cfg.output_dir, every_rank=True)
    except BaseException as exc:  # a bug: keep the traceback, and leave it where a buried launcher log is not needed
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _write_error_file(cfg.output_dir, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        raise
    finally:
        _shutdown_distributed()


ERROR_FILE = "error.txt"


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _write_error_file(output_dir: Optional[str], text: str) -> None:
    """<output_dir>/error.txt on rank 0: a launcher (accelerate, deepspeed, Slurm) may bury rank 0's stderr among
    every rank's output; the file holds the error alone. Best effort: an unwritable output_dir is its own error."""
    if not output_dir or not _is_rank0():
        return
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / ERROR_FILE).write_text(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


def _clear_error_file(output_dir: str) -> None:
    """Remove an earlier run's error.txt, so the file always describes the latest run."""
    if _is_rank0():
        try:
            (Path(output_dir) / ERROR_FILE).unlink()
        except OSError:
            pass


def _output_dir_of(args: argparse.Namespace) -> Optional[str]:
    """output_dir from the overrides or the YAML, read leniently, for a config that failed validation."""

    for item in reversed(args.overrides or []):
        if item.startswith("output_dir="):
            return item.split("=", 1)[1] or None
    try:
        data = yaml.safe_load(Path(args.config).read_text()) if args.config else None
    except (OSError, yaml.YAMLError, ValueError):
        return None
    value = data.get("output_dir") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _fail(error: Exception, output_dir: Optional[str] = None, every_rank: bool = False) -> None:
    """Every rank stops with exit code 2. Rank 0 prints the line (also written to <output_dir>/error.txt); the
    others print theirs, prefixed with the rank, only for `every_rank` errors: those that can be one rank's alone
    (a config error is every rank's and is said once)."""
    if _is_rank0():
        _write_error_file(output_dir, f"vggt-train train: error: {error}")
        raise error from None
    if every_rank:
        print(f"vggt-train train: error (rank {os.environ.get('RANK')}): {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _shutdown_distributed() -> None:
    # gloo aborts the process at exit when a process group is still alive
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vggt_train.train", description="Train VGGT (see vggt-train train --help).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CLIError as exc:
        print(f"vggt-train train: error: {exc}", file=sys.stderr)
        return 2
