"""Peak activation memory and FLOPs of one VGGT-1B training step, counted without memory under FakeTensorMode.

Builds VGGT.from_preset("vggt_1b") (camera + depth heads) under torch's FakeTensorMode, runs one training step
(train mode, bf16 autocast, forward, the MultitaskLoss camera + depth objective of the default training config,
backward) under torch.distributed._tools.mem_tracker.MemTracker, and reports the peak of activation memory (the
tensors made in forward and recomputation, plus backward temporaries; parameters and gradients are not counted).
FLOPs of the same step come from torch.utils.flop_counter, so the extra work of recomputation shows.

Workloads: the Ascend reference (aggregator frozen, 15 samples x 2 views at 518 px), the same with 1 sample,
and full fine-tuning of 1 sample x 24 views (everything trainable, aggregator checkpointing on). Each runs with
the savings off ("before": every aggregator layer kept, heads and patchifier without checkpointing), then with
them switched on one after the other (STAGES; the last is the model's defaults). Prints a table and one JSON line. Needs torch >= 2.4 (MemTracker); skips otherwise.
    python bench/activation_cut.py [--workloads reference,reference_1,full_24] [--head-chunk-frames 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GIB = 2**30
WORKLOADS = {
    # name: (samples, views, image side, aggregator frozen)
    "reference": (15, 2, 518, True),
    "reference_1": (1, 2, 518, True),
    "full_24": (1, 24, 518, False),
}


def _mem_tracker_class():
    """MemTracker that leaves frozen parameters alone (it hooks every parameter's gradient otherwise, and
    register_hook refuses a tensor that does not require grad); None on torch without it (2.1)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None

    class _NoHook:
        def remove(self) -> None:
            pass

    class FrozenAwareMemTracker(MemTracker):
        peak_where: str = ""

        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
            for p in module.parameters():
                if not p.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(p, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state) -> None:
            # the global peak only (the per-module peaks cost a pass over every module per operation), and
            # the modules active when it was reached
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                    where = sorted(self._mod_tracker.parents, key=len)
                    self.peak_where = ("backward " if self._mod_tracker.is_bw else "forward ") + (where[-1] if where else "")

    return FrozenAwareMemTracker


class AllValid(TorchDispatchMode):
    """Answers the loss's data-dependent questions under fake tensors as for a batch whose every pixel is valid.

    Fake tensors have no values, so `mask.sum() < 100`, `valid.any()` and `x[mask]` cannot be decided; the loss
    only asks "are there enough valid elements" (counts compared with a threshold) and selects by masks, so:
    a count compared with `<`/`<=`/`==` is False, with `>`/`>=`/`!=` True, any() is True, and a boolean mask selects
    everything (the worst case for memory).
    """

    _ANSWERS = {
        torch.ops.aten.lt.Scalar: False, torch.ops.aten.le.Scalar: False, torch.ops.aten.lt.Tensor: False,
        torch.ops.aten.le.Tensor: False, torch.ops.aten.gt.Scalar: True, torch.ops.aten.ge.Scalar: True,
        torch.ops.aten.gt.Tensor: True, torch.ops.aten.ge.Tensor: True, torch.ops.aten.any.default: True,
        torch.ops.aten.all.default: True, torch.ops.aten.eq.Scalar: False, torch.ops.aten.ne.Scalar: True,
    }

    def __init__(self):
        super().__init__()
        self.answers: Dict[int, bool] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            key = id(args[0])
            if key not in self.answers:
                raise RuntimeError(f"AllValid: cannot decide a data-dependent value of shape {tuple(args[0].shape)}")
            return self.answers[key]
        if func is torch.ops.aten.nonzero.default:
            mask = args[0]
            idx = torch.stack(torch.meshgrid(*[torch.arange(n, device=mask.device) for n in mask.shape], indexing="ij"), -1)
            return idx.reshape(-1, mask.dim())
        if func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            x, indices = args
            if len(indices) != 1:
                raise RuntimeError("AllValid: only a single boolean mask index is supported")
            return x.reshape(-1, *x.shape[indices[0].dim():]).clone()
        out = func(*args, **kwargs)
        if func in self._ANSWERS and isinstance(out, torch.Tensor) and out.numel() == 1:
            self.answers[id(out)] = self._ANSWERS[func]
            out._all_valid_keepalive = out  # the id must stay unique while the answer may be asked for
        return out


def _batch(samples: int, views: int, side: int) -> dict:
    eye = torch.eye(4)[:3].expand(samples, views, 3, 4).clone()
    intrinsics = torch.tensor([[300.0, 0, side / 2], [0, 300.0, side / 2], [0, 0, 1]]).expand(samples, views, 3, 3).clone()
    return {
        "images": torch.rand(samples, views, 3, side, side),
        "extrinsics": eye,
        "intrinsics": intrinsics,
        "depths": torch.rand(samples, views, side, side) + 1,
        "point_masks": torch.ones(samples, views, side, side, dtype=torch.bool),
    }


# the savings, switched on one after the other: (label, lean_activations, head_checkpointing, patchifier checkpointing)
STAGES = [
    ("before", False, False, False),
    ("+ unread layers dropped, frozen aggregator without graph", True, False, False),
    ("+ dense heads checkpointed per chunk", True, True, False),
    ("+ patchifier blocks checkpointed (after)", True, True, True),
]


def _step(workload: str, stage: tuple, head_chunk_frames: int, mode) -> None:
    """One training step of `workload` under FakeTensorMode, inside the context `mode()` (a tracker or a counter)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vggt_train.losses import MultitaskLoss
    from vggt_train.model import VGGT
    from vggt_train.train.config import LossConfig

    samples, views, side, frozen = WORKLOADS[workload]
    loss_cfg = LossConfig()
    loss_fn = MultitaskLoss(camera=loss_cfg.camera, depth=loss_cfg.depth)
    with torch.device("meta"):  # random init asks data-dependent questions (trunc_normal_) fake tensors cannot answer
        model = VGGT.from_preset("vggt_1b", point_head=None, track_head=None).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        model.aggregator.reset_non_persistent_buffers()
        _, model.lean_activations, model.head_checkpointing, vit_checkpointing = stage
        model.aggregator.patch_embed.gradient_checkpointing = vit_checkpointing
        model.head_chunk_frames = head_chunk_frames
        if frozen:
            model.aggregator.requires_grad_(False)
        batch = _batch(samples, views, side)
        with mode(model):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with AllValid():
                    out = model(batch["images"])
                    objective = loss_fn(out, batch)["objective"]
            with AllValid():
                objective.backward()


def measure(workload: str, stage: tuple, head_chunk_frames: int) -> dict:
    """Peak activation GiB (activations + backward temporaries at the peak), TFLOP of one training step, and
    where (which module, forward or backward) the peak was reached. Memory and FLOPs are counted in separate
    passes: the FLOP counter's module tracking keeps recomputed tensors alive and would inflate the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    tracker_cls = _mem_tracker_class()
    trackers = []

    def track(model):
        trackers.append(tracker_cls())
        trackers[-1].track_external(model)
        return trackers[-1]

    t0 = time.perf_counter()
    _step(workload, stage, head_chunk_frames, track)
    counters = []
    _step(workload, stage, head_chunk_frames, lambda model: counters.append(FlopCounterMode(display=False)) or counters[-1])
    seconds = time.perf_counter() - t0
    dev = next(iter(trackers[0].get_tracker_snapshot("peak").values()))
    act = dev.get("Activation", 0) + dev.get("Temp", 0)
    return {"workload": workload, "stage": stage[0], "activation_gib": act / GIB, "peak_in": trackers[0].peak_where,
            "tflop": counters[0].get_total_flops() / 1e12, "count_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--head-chunk-frames", type=int, default=None, help="model.head_chunk_frames (default: the model's)")
    args = parser.parse_args()
    if _mem_tracker_class() is None:
        print(f"skipped: torch {torch.__version__} has no torch.distributed._tools.mem_tracker.MemTracker")
        return
    from vggt_train.model.vggt import DEFAULT_HEAD_CHUNK_FRAMES

    chunk = args.head_chunk_frames or DEFAULT_HEAD_CHUNK_FRAMES
    rows = []
    for name in args.workloads.split(","):
        for stage in STAGES:
            rows.append(measure(name, stage, chunk))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"peak activation memory of one VGGT-1B training step (bf16 autocast, camera + depth), head_chunk_frames={chunk}")
    print(f"{'workload':<12}{'stage':<58}{'GiB':>8}{'TFLOP':>9}{'extra FLOP':>12}  peak in")
    for r in rows:
        base = next(b for b in rows if b["workload"] == r["workload"])
        r["extra_flop_fraction"] = r["tflop"] / base["tflop"] - 1
        print(f"{r['workload']:<12}{r['stage']:<58}{r['activation_gib']:>8.2f}{r['tflop']:>9.2f}"
              f"{100 * r['extra_flop_fraction']:>11.1f}%  {r['peak_in']}")
    print(json.dumps({"bench": "activation_cut", "torch": torch.__version__, "head_chunk_frames": chunk, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
