"""CPU step time of the `small` preset through our Trainer vs the same model stepped by a plain PyTorch loop.

Both run the same batch (data loading excluded), the same loss (camera + depth), the same AdamW kernel (the
registry's choice for the CPU) and gradient clipping, fp32, one process, so the difference is the trainer's own
machinery: accelerate, loss-term reduction, finiteness checks, per-group clipping, lr schedule, the log record.
Overhead = trainer / plain - 1 (goal <= 5%). MFU is against this machine's measured fp32 GEMM peak.
Prints a table and one JSON line.
    python bench/train_step.py [--size 224] [--images 2] [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import fp32_gemm_peak_tflops, synthetic_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--data", default=None, help="converted dataset (default: a synthetic one in a temp dir)")
    args = parser.parse_args()

    from vggt_train.data.pipeline.finish import finish_batch
    from vggt_train.losses import MultitaskLoss
    from vggt_train.model import VGGT
    from vggt_train.model.flops import training_flops_per_image
    from vggt_train.train.config import load_config
    from vggt_train.train.loop import Trainer, build_model
    from vggt_train.train.optim import build_optimizer

    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data) if args.data else synthetic_shards(Path(tmp.name), size=f"{args.size}x{args.size * 4 // 3}")
    cfg = load_config(None, [
        f"data.path={data}", f"model.preset={args.preset}", f"data.img_size={args.size}", f"data.img_nums=[{args.images},{args.images}]",
        f"data.max_img_per_gpu={args.images}", "data.augment=false", "data.num_workers=0", "train.mixed_precision=no",
        "train.max_steps=100000", "train.progress=false", "train.ckpt_every=0", "train.val_every=0", "model.gradient_checkpointing=false",
        f"output_dir={tmp.name}/run",
    ])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    raw_batch = next(trainer.data.train_stream(0, 1))
    same_batch = itertools.repeat(raw_batch)  # the trainer finishes it every step, counted as data time
    batch = finish_batch(raw_batch)

    torch.manual_seed(0)
    plain_model = build_model(cfg).train()
    plain_loss = MultitaskLoss(**vars(cfg.loss))
    plain_opt = build_optimizer(plain_model, cfg.optim)

    def plain_step() -> float:
        t0 = time.perf_counter()
        out = plain_model(batch["images"])
        loss = plain_loss(out, batch)["objective"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 1.0)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def trainer_step() -> float:
        record = trainer.train_step(same_batch)
        trainer.state.step += 1
        return record["step_time"] - record["data_time"]

    for _ in range(args.warmup):
        plain_step()
        trainer_step()
    ours, plain = [], []
    for _ in range(args.steps):  # interleaved, so drift of the machine hits both alike
        plain.append(plain_step())
        ours.append(trainer_step())
    t_ours, t_plain = statistics.median(ours), statistics.median(plain)

    with torch.device("meta"):
        meta = VGGT(plain_model.config)
    flops_step = training_flops_per_image(meta, args.images, args.size, args.size, frozen_aggregator=False) * args.images
    peak = fp32_gemm_peak_tflops()
    params = sum(p.numel() for p in plain_model.parameters()) / 1e6

    print(f"{args.preset} preset ({params:.1f} M params), 1 sample x {args.images} images x {args.size}px, fp32, "
          f"{torch.get_num_threads()} threads; median of {args.steps} steps")
    print(f"  {'':22s} {'step s':>8s} {'TFLOP/s':>8s} {'MFU':>7s}")
    for name, t in (("plain PyTorch loop", t_plain), ("vggt-train Trainer", t_ours)):
        print(f"  {name:22s} {t:8.3f} {flops_step / t / 1e12:8.3f} {flops_step / t / 1e12 / peak:7.1%}")
    print(f"  trainer overhead: {t_ours / t_plain - 1:+.1%} (goal <= +5%); fp32 GEMM peak {peak:.3f} TFLOP/s; "
          f"{flops_step / 1e9:.1f} GFLOP per step")
    print(json.dumps({"bench": "train_step", "preset": args.preset, "size": args.size, "images": args.images,
                      "trainer_step_s": t_ours, "plain_step_s": t_plain, "overhead": t_ours / t_plain - 1,
                      "flops_per_step": flops_step, "gemm_peak_tflops": peak, "mfu_trainer": flops_step / t_ours / 1e12 / peak,
                      "mfu_plain": flops_step / t_plain / 1e12 / peak, "threads": torch.get_num_threads(), "torch": torch.__version__}))
    tmp.cleanup()


if __name__ == "__main__":
    main()
