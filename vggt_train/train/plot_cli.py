"""`vggt-train plot-metrics RUN`: the command line of plot.py (a run's loss curve and validation AUC@30 to PNG, and a summary)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vggt_train.errors import CLIError
from vggt_train.train.plot import plot, read_metrics, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", help="a run's metrics.jsonl (or its output_dir)")
    parser.add_argument("--out", help="PNG to write (default: loss.png next to metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    path = Path(args.metrics)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise CLIError(f"metrics file not found: {path}")
    records = read_metrics(path)
    summary = summarize(records)
    if not summary:
        raise CLIError(f"{path} has no training records yet")
    out = Path(args.out) if args.out else path.with_name("loss.png")
    plot(records, out)
    print(f"steps {summary['steps']}, skipped {summary['skipped_steps']}")
    print(f"train loss {summary['first_loss']:.4f} (mean of the first 10 logged steps) -> {summary['last_loss']:.4f} (last 10)")
    if "first_val_loss" in summary:
        print(f"validation loss {summary['first_val_loss']:.4f} -> {summary['last_val_loss']:.4f}")
    if "first_val_auc" in summary:
        print(f"validation AUC@30 {summary['first_val_auc']:.2f} -> {summary['last_val_auc']:.2f}")
    print(f"throughput {summary['samples_per_s']:.1f} samples/s, {summary['images_per_s']:.1f} images/s (median)")
    print(f"loss plot: {out}")
    return 0
