"""`vggt-train model-info`: build a preset, count parameters, run one forward/backward and report shapes, FLOPs, time."""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vggt_train.cli_args import parse_size
from vggt_train.errors import CLIError
from vggt_train.model import VGGT
from vggt_train.model.flops import measure_flops


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="model preset: vggt_1b, small or tiny (default: small)")
    parser.add_argument("--images", type=int, default=2, help="frames per sample (default: 2)")
    parser.add_argument("--batch", type=int, default=1, help="samples per batch (default: 1)")
    parser.add_argument("--size", default="224x224", help="image HxW, multiples of 14 (default: 224x224)")
    parser.add_argument("--queries", type=int, default=16, help="track query points per sample (0: no track head) (default: 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-backward", action="store_true", help="forward only")


def run(args: argparse.Namespace) -> int:
    h, w = parse_size(args.size, example="224x224", minimum=14, multiple_of=14)
    try:
        model = VGGT.from_preset(args.preset)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    device = torch.device(args.device)
    model.to(device).train()
    print(f"preset {args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    for name, module in model.named_children():
        print(f"  {name:14s} {sum(p.numel() for p in module.parameters()) / 1e6:9.2f} M")

    torch.manual_seed(0)
    images = torch.rand(args.batch, args.images, 3, h, w, device=device)
    queries = torch.rand(args.batch, args.queries, 2, device=device) * torch.tensor([w - 1, h - 1], device=device) if args.queries else None
    start = time.perf_counter()
    out = model(images, query_points=queries)
    forward_s = time.perf_counter() - start
    backward_s = 0.0
    if not args.no_backward:
        loss = sum(v.float().mean() for k, v in out.items() if isinstance(v, torch.Tensor))
        start = time.perf_counter()
        loss.backward()
        backward_s = time.perf_counter() - start
    print(f"input images {tuple(images.shape)}" + (f", query_points {tuple(queries.shape)}" if queries is not None else ""))
    for key, value in out.items():
        shape = [tuple(v.shape) for v in value] if isinstance(value, list) else tuple(value.shape)
        print(f"  {key:18s} {shape}")
    with torch.device("meta"):
        meta_model = VGGT(model.config)
    flops = measure_flops(meta_model, args.images, h, w, heads=("camera_head", "depth_head", "point_head"))
    print(f"FLOPs per sample ({args.images} x {h}x{w}): aggregator fwd {flops['aggregator_forward'] / 1e9:.1f} G "
          f"(attention {flops['aggregator_forward_attention'] / 1e9:.1f} G), camera+depth+point heads fwd+bwd "
          f"{flops['heads_forward_backward'] / 1e9:.1f} G")
    print(f"time: forward {forward_s:.3f} s, backward {backward_s:.3f} s on {device}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0
