"""Per-rank memory of DDP vs DeepSpeed ZeRO-1/2/3 at 2 CPU ranks with the `small` preset, measured, beside the
analytic model-state memory (vggt_train.train.memory); then the analytic per-card model states of `vggt_1b` on
8 and 64 cards, for full training and for the fine-tuning recipe (aggregator frozen).

Each strategy is a real 2-process launch of our Trainer (DDP through torch.distributed.run, ZeRO through
accelerate launch with ds_configs/zeroN.json) running a few fp32 steps on a small synthetic Co3D. Every rank
reports:
  live state  bytes of all distinct tensor storages alive after the steps (weights, optimiser state and the
              buffers DeepSpeed keeps), found through the garbage collector
  set-up peak the process's peak resident memory up to the end of the first step (model build, DeepSpeed's
              partitioning, optimiser state allocation), minus the RSS just before the model was built
  step peak   the peak resident memory during the later steps (the counter is reset after the first step),
              minus that same starting RSS: model states + activations + transient buffers
Each ZeRO strategy runs twice: with the shipped ds_configs (communication buckets of 5e7 elements, sized for
VGGT-1B) and with the buckets scaled down to the small model (--bucket-elements), because a 5e7-element float32
bucket (0.19 GiB) is as large as the small model's weights and would hide what the sharding saves.
Prints tables and one JSON line.
    python bench/zero_memory.py [--steps 3] [--size 56] [--strategies ddp,zero1,zero2,zero3] [--bucket-elements 2500000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# glibc raises its mmap threshold as large blocks are freed, after which freed tensor memory stays in the heap
# and RSS tracks the allocation history rather than what is alive; a fixed threshold returns every large block
_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


# -- worker: one rank ------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensor_bytes() -> int:
    import gc

    import torch

    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
        except Exception:  # tensors without storage (e.g. some wrapper subclasses)
            continue
        key = storage.data_ptr()
        if key and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux >= 4.0), so the steps' peak is seen apart from set-up's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from vggt_train.train.config import load_config
    from vggt_train.train.loop import Trainer

    cfg = load_config(None, json.loads(args.overrides))
    before = _rss_bytes()
    trainer = Trainer(cfg)
    stream = trainer.data.train_stream(trainer.accelerator.process_index, trainer.accelerator.num_processes)
    trainer.train_step(stream)  # the first step allocates the optimizer state
    trainer.state.step += 1
    setup_peak = _status_kib("VmHWM") * 1024
    after_setup = _rss_bytes()
    reset = _reset_peak_rss()
    for _ in range(args.steps):
        trainer.train_step(stream)
        trainer.state.step += 1
    mine = {
        "rank": trainer.accelerator.process_index,
        "live_state": _live_tensor_bytes(),
        "rss_before_model": before,
        "setup_peak": setup_peak,
        "rss_after_first_step": after_setup,
        "step_peak": _status_kib("VmHWM") * 1024 if reset else None,
    }
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps(everyone))
    dist.barrier()
    dist.destroy_process_group()  # gloo aborts at exit otherwise


# -- driver ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ds_config(tmp: Path, stage: int, bucket_elements: Optional[int]) -> Path:
    shipped = REPO / "ds_configs" / f"zero{stage}.json"
    if bucket_elements is None:
        return shipped
    config = json.loads(shipped.read_text())
    zero = config["zero_optimization"]
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size"):
        if key in zero:
            zero[key] = bucket_elements
    if zero["stage"] == 3:  # how much of the gathered model may stay gathered, in the same proportion
        zero["stage3_max_live_parameters"] = zero["stage3_max_reuse_distance"] = 4 * bucket_elements
    path = tmp / f"zero{stage}_bucket{bucket_elements}.json"
    path.write_text(json.dumps(config))
    return path


def _accelerate_config(path: Path, ds_config: Path, port: int) -> Path:
    path.write_text(textwrap.dedent(f"""
        compute_environment: LOCAL_MACHINE
        distributed_type: DEEPSPEED
        deepspeed_config:
          deepspeed_config_file: {ds_config}
          zero3_init_flag: false
        machine_rank: 0
        main_process_ip: 127.0.0.1
        main_process_port: {port}
        num_machines: 1
        num_processes: 2
        rdzv_backend: static
        same_network: true
        use_cpu: true
        main_training_function: main
        """))
    return path


def _launch(strategy: str, overrides: list, steps: int, tmp: Path, bucket_elements: Optional[int] = None) -> list:
    name = f"{strategy}_{bucket_elements or 'shipped'}"
    result = tmp / f"{name}.json"
    script = [str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--result", str(result),
              "--overrides", json.dumps(overrides + [f"output_dir={tmp / name}"])]
    port = _free_port()
    if strategy == "ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), *script]
    else:
        stage = int(strategy[-1])
        config = _accelerate_config(tmp / f"{name}.yaml", _ds_config(tmp, stage, bucket_elements), port)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *script]
    env = {**os.environ, **_ALLOCATOR_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not result.exists():
        sys.exit(f"{strategy} run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def _param_counts(preset: str, frozen_aggregator: bool) -> tuple:
    """(trainable, frozen) parameters of the preset as the recipe trains it: camera + depth heads, no point or
    track head."""
    import torch

    from vggt_train.model import VGGT, preset_config

    config = preset_config(preset)
    config.point_head = config.track_head = None
    with torch.device("meta"):
        model = VGGT(config)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.aggregator.parameters()) if frozen_aggregator else 0
    return total - frozen, frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=56, help="image size (small: activations stay small beside the states)")
    parser.add_argument("--strategies", default="ddp,zero1,zero2,zero3")
    parser.add_argument("--data", default=None, help="converted dataset (default: a synthetic one in a temp dir)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bucket-elements", type=int, default=2_500_000,
                        help="ZeRO bucket size for the second pass (0: only the shipped configs)")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import synthetic_shards

    from vggt_train.train.memory import model_state_bytes

    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    data = Path(args.data) if args.data else synthetic_shards(tmp / "data", size="84x112")
    overrides = [f"data.path={data}", "model.preset=small", f"data.img_size={args.size}", "data.img_nums=[2,2]",
                 "data.max_img_per_gpu=2", "data.augment=false", "data.num_workers=0", "train.mixed_precision=no",
                 "train.max_steps=1000", "train.progress=false", "train.ckpt_every=0", "train.val_every=0",
                 "model.gradient_checkpointing=false"]
    trainable, frozen = _param_counts("small", frozen_aggregator=False)

    rows = []
    for strategy in args.strategies.split(","):
        buckets = [None] + ([args.bucket_elements] if args.bucket_elements and strategy != "ddp" else [])
        for bucket in buckets:
            ranks = sorted(_launch(strategy, overrides, args.steps, tmp, bucket), key=lambda r: r["rank"])
            expected = model_state_bytes(trainable, frozen, strategy, world_size=2, precision="fp32")
            rows.append({"strategy": strategy, "buckets": bucket or "shipped",
                         "analytic_states_gib": expected.total / GIB,
                         # the step frees the gradients, except ZeRO-3's partitioned gradient buffer
                         "analytic_after_step_gib": (expected.total - (expected.grads if strategy != "zero3" else 0)) / GIB,
                         "live_state_gib": [r["live_state"] / GIB for r in ranks],
                         "setup_peak_gib": [(r["setup_peak"] - r["rss_before_model"]) / GIB for r in ranks],
                         "step_peak_gib": [(r["step_peak"] - r["rss_before_model"]) / GIB if r["step_peak"] else float("nan") for r in ranks]})
            print(f"  measured {strategy} (buckets: {bucket or 'shipped'})", file=sys.stderr)

    print(f"small preset, camera + depth heads: {trainable / 1e6:.1f} M trainable parameters, 2 CPU ranks, fp32, "
          f"1 sample x 2 images x {args.size} px per rank, {args.steps} steps; GiB per rank (rank 0/rank 1)")
    print(f"  {'strategy':9s} {'buckets':>8s} {'analytic states':>15s} {'analytic after step':>19s} {'live after step':>15s} "
          f"{'set-up peak':>11s} {'step peak':>11s}")
    for r in rows:
        pair = lambda v: f"{v[0]:.2f}/{v[1]:.2f}"  # noqa: E731
        print(f"  {r['strategy']:9s} {str(r['buckets']):>8s} {r['analytic_states_gib']:15.2f} {r['analytic_after_step_gib']:19.2f} "
              f"{pair(r['live_state_gib']):>15s} {pair(r['setup_peak_gib']):>11s} {pair(r['step_peak_gib']):>11s}")

    print("\nvggt_1b analytic model states per card (GiB; activations not included)")
    analytic = []
    header = "  " + f"{'workload':34s} {'precision':9s} {'cards':>5s} " + " ".join(f"{s:>7s}" for s in ("ddp", "zero1", "zero2", "zero3"))
    print(header)
    for label, frozen_agg in (("full training (aggregator trained)", False), ("fine-tune recipe (aggregator frozen)", True)):
        t, f = _param_counts("vggt_1b", frozen_aggregator=frozen_agg)
        for precision in ("fp32", "bf16"):
            for cards in (8, 64):
                values = {s: model_state_bytes(t, f, s, cards, precision).total / GIB for s in ("ddp", "zero1", "zero2", "zero3")}
                analytic.append({"workload": label, "trainable": t, "frozen": f, "precision": precision, "cards": cards, **values})
                print(f"  {label:34s} {precision:9s} {cards:5d} " + " ".join(f"{values[s]:7.2f}" for s in values))
    print(json.dumps({"bench": "zero_memory", "preset": "small", "size": args.size, "steps": args.steps, "trainable": trainable,
                      "measured": rows, "vggt_1b_analytic": analytic}))
    tmp_dir.cleanup()


if __name__ == "__main__":
    main()
