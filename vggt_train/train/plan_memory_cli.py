"""`vggt-train plan-memory`: the per-card memory plan of a training config (plan_memory.py) on N cards of G GB."""

from __future__ import annotations

import argparse
import json

from vggt_train.errors import CLIError
from vggt_train.train.config import ConfigError, load_config
from vggt_train.train.memory import STRATEGIES
from vggt_train.train.plan_memory import DEFAULT_HEADROOM, GIB, PlanError, plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + (
        ". Per card: weights, gradients and AdamW state (analytic, per ZeRO stage), activations (fitted to measured "
        "steps of the preset: bench/activation_memory.py), communication buffers; the total against the card, and "
        "the largest data.max_img_per_gpu that fits under DDP and ZeRO-1/2/3.")
    parser.add_argument("--config", help="training YAML (default: the built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for vggt-train train")
    parser.add_argument("--cards", type=int, default=1, help="processes (cards) in the run (default: 1)")
    parser.add_argument("--card-gb", type=float, required=True, help="memory of one card in GB as sold (80 for an A100/H100 80GB; "
                        "64 for an Ascend 910B); read as GiB, what torch reports for such cards is a little less")
    parser.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0, help="DeepSpeed ZeRO stage (0: DDP, the default)")
    parser.add_argument("--frames", type=int, help="frames per sample: sets data.img_nums=[F, F]")
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                        help=f"share of the card kept free for the allocator and runtime (default: {DEFAULT_HEADROOM})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"data.img_nums=[{args.frames},{args.frames}]"] if args.frames else [])
    try:
        try:
            cfg = load_config(args.config, overrides)
        except ConfigError as exc:
            if "data.path is required" not in str(exc):
                raise
            cfg = load_config(args.config, ["data.path=unused-by-plan-memory"] + overrides)  # no data is read
        strategy = "ddp" if args.zero == 0 else f"zero{args.zero}"
        p = plan(cfg, args.cards, args.card_gb, strategy, headroom=args.headroom)
    except (ConfigError, PlanError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(p.as_json()))
        return 0
    d = cfg.data
    print(f"model.preset={cfg.model.preset} ({p.workload}), {d.img_size} px, frames {d.img_nums[0]}-{d.img_nums[1]}, "
          f"max_img_per_gpu {d.max_img_per_gpu} -> {p.images} images per card, {strategy} on {args.cards} cards "
          f"of {args.card_gb:g} GiB")
    for name in ("weights", "grads", "optimizer", "activations", "buffers", "total"):
        print(f"  {name:12s} {getattr(p, name) / GIB:8.2f} GiB")
    verdict = "fits" if p.fits else "does NOT fit"
    print(f"  {verdict} in {p.usable / GIB:.1f} GiB usable ({100 * (1 - p.headroom):.0f}% of the card)")
    print("largest data.max_img_per_gpu that fits: " + ", ".join(f"{s} {p.max_img_per_gpu[s]}" for s in STRATEGIES))
    for note in p.notes:
        print(f"note: {note}")
    return 0
