"""Activation memory of one training step, measured (vggt_train.train.activation_memory), and the fits that
`vggt-train plan-memory` reads (vggt_train/train/activation_fits.json).

For each preset and workload (aggregator frozen; full training with / without activation checkpointing) it counts
a step under torch's MemTracker with fake tensors at a few sizes: with the fused attention, with the heads kept
whole (model.head_checkpointing=false) and with kernels.attention=reference. It fits activation_memory.predict's
terms (lines in tokens bent where the heads' chunks start, the whole heads' slope, the score matrices of unfused
attention) and prints the table, the fits (with their largest relative errors) and one JSON line. --write merges
the fits into the data file (regenerate it this way after a model change); --rows LOG refits from an earlier
run's output without counting; --check-real also runs a few small steps for real and prints fake vs real.
    python bench/activation_memory.py [--presets vggt_1b,small,tiny] [--write] [--check-real] [--rows LOG]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vggt_train.train import activation_memory as am  # noqa: E402
from vggt_train.train.config import load_config  # noqa: E402
from vggt_train.train.memory import STRATEGIES  # noqa: E402
from vggt_train.train.plan_memory import FITS_PATH, plan  # noqa: E402

MIB, GIB = 2**20, 2**30
# (samples, frames, img_size) per workload, on both sides of the heads' knee (head_chunk_frames = 4 images);
# VGGT-1B at the recipe's 518 px, the small presets at sizes whose real steps run on a CPU (the plan's tests compare
# against those)
GRID = {
    "vggt_1b": {"frozen_aggregator": [(1, 2, 518), (2, 2, 518), (4, 2, 518), (15, 2, 518)],
                "full_checkpointed": [(1, 2, 518), (1, 4, 518), (1, 8, 518), (1, 24, 518)],
                "full": [(1, 2, 518), (1, 4, 518), (1, 8, 518), (1, 24, 518)]},
    "small": {"frozen_aggregator": [(1, 2, 112), (2, 2, 112), (4, 2, 112), (8, 2, 112)],
              "full_checkpointed": [(1, 2, 112), (1, 4, 112), (1, 8, 112), (1, 16, 112)],
              "full": [(1, 2, 112), (1, 4, 112), (1, 8, 112), (1, 16, 112)]},
    "tiny": {"frozen_aggregator": [(1, 2, 112), (2, 2, 112), (4, 2, 112), (8, 2, 112)],
             "full_checkpointed": [(1, 2, 112), (1, 4, 112), (1, 8, 112), (1, 16, 112)],
             "full": [(1, 2, 112), (1, 4, 112), (1, 8, 112), (1, 16, 112)]},
}
# steps with model.head_checkpointing=false: the heads keep everything (their own term, per_head_token_whole)
WHOLE_HEADS_GRID = {
    "vggt_1b": {"frozen_aggregator": [(15, 2, 518)], "full_checkpointed": [(1, 8, 518), (1, 24, 518)],
                "full": [(1, 8, 518), (1, 24, 518)]},
    **{preset: {"frozen_aggregator": [(8, 2, 112)], "full_checkpointed": [(1, 8, 112), (1, 16, 112)],
                "full": [(1, 8, 112), (1, 16, 112)]} for preset in ("small", "tiny")},
}
# the same steps with kernels.attention=reference (score matrices kept): the fit's tokens^2 term
SCORE_GRID = {
    "vggt_1b": {"frozen_aggregator": [(1, 2, 518), (15, 2, 518), (1, 8, 518), (1, 24, 518)],
                "full_checkpointed": [(1, 2, 518), (1, 4, 518), (1, 8, 518), (1, 24, 518)],
                "full": [(1, 2, 518), (1, 4, 518), (1, 8, 518), (1, 24, 518)]},
    **{preset: {k: [(1, 2, 112), (4, 2, 112), (1, 8, 112), (1, 16, 112)] for k in am.WORKLOADS} for preset in ("small", "tiny")},
}
REAL_CHECKS = [("small", "full", (1, 4, 112)), ("small", "frozen_aggregator", (2, 2, 112)), ("tiny", "full_checkpointed", (1, 8, 112))]


# the README's "Memory and cards" table: (label, overrides)
TABLE_WORKLOADS = [
    ("reference: aggregator frozen, 15 x 2 views", ["model.frozen=[aggregator*]", "data.img_nums=[2,2]", "data.max_img_per_gpu=30"]),
    ("full fine-tuning, 1 x 2 frames", ["data.img_nums=[2,2]", "data.max_img_per_gpu=2"]),
    ("full fine-tuning, 1 x 8 frames", ["data.img_nums=[8,8]", "data.max_img_per_gpu=8"]),
    ("full fine-tuning, 1 x 24 frames", ["data.img_nums=[24,24]", "data.max_img_per_gpu=24"]),
    ("full, 1 x 24 frames, no checkpointing", ["data.img_nums=[24,24]", "data.max_img_per_gpu=24", "model.gradient_checkpointing=false"]),
    ("reference, unfused attention", ["model.frozen=[aggregator*]", "data.img_nums=[2,2]", "data.max_img_per_gpu=30",
                                      "kernels.attention=reference"]),
    ("full, 1 x 8 frames, unfused attention", ["data.img_nums=[8,8]", "data.max_img_per_gpu=8", "kernels.attention=reference"]),
]


def _short(s: str) -> str:
    return "DDP" if s == "ddp" else f"ZeRO-{s[-1]}"


def compact_table(records: list) -> None:
    """One cell per workload x card size x cards: the first of DDP, ZeRO-1, -2, -3 that fits and its GiB per card."""
    print("\n| workload | card | 1 card | 4 cards | 8 cards |")
    print("|---|---|---|---|---|")
    for label, _ in TABLE_WORKLOADS:
        for gb in (64, 80):
            cells = []
            for cards in (1, 4, 8):
                plans = [r for r in records if r["label"] == label and r["card_gb"] == gb and r["cards"] == cards]
                fit = next((r for r in plans if r["fits"]), None)
                if fit:
                    cells.append(f"{_short(fit['strategy'])}, {fit['per_card_gib']['total']:.1f} GiB")
                else:
                    cells.append(f"no (>= {min(r['per_card_gib']['total'] for r in plans):.1f} GiB)")
            print(f"| {label} | {gb} GB | " + " | ".join(cells) + " |")


def plan_table() -> list:
    """The plan of VGGT-1B for TABLE_WORKLOADS on 1 / 4 / 8 cards of 64 and 80 GB: markdown rows + records."""
    print("| workload | cards | " + " | ".join(_short(s) for s in STRATEGIES) + " |")
    print("|---|---|" + "---:|" * len(STRATEGIES))
    records = []
    for label, overrides in TABLE_WORKLOADS:
        cfg = load_config(None, ["data.path=unused", "model.allow_random_frozen=true", *overrides])
        for gb in (64, 80):
            for cards in (1, 4, 8):
                cells = []
                for s in STRATEGIES:
                    p = plan(cfg, cards, gb, s)
                    cells.append(f"{p.total / GIB:.1f} {'fits' if p.fits else '**no**'} (max {p.max_img_per_gpu[s]})")
                    records.append({**p.as_json(), "label": label, "card_gb": gb})
                print(f"| {label} | {cards} x {gb} GB | " + " | ".join(cells) + " |")
    compact_table(records)
    return records


def _workload(preset: str, kind: str, shape: tuple, attention: str, heads_chunked: bool) -> "am.Workload":
    w = am.workload_of(kind, preset, *shape)
    w.attention, w.head_checkpointing = attention, heads_chunked
    return w


def _count(rows: list, earlier: dict, preset: str, kind: str, shape: tuple, attention: str,
           heads_chunked: bool = True) -> tuple:
    """(workload, activations) of one step: counted with fake tensors, or taken from an earlier run's rows (--rows);
    appended to rows."""
    w = _workload(preset, kind, shape, attention, heads_chunked)
    key = (preset, kind, attention, heads_chunked, *shape)
    t0 = time.perf_counter()
    activations = earlier[key] if key in earlier else am.measure(w, fake=True).activations
    samples, frames, size = shape
    rows.append({"preset": preset, "workload": kind, "attention": attention, "heads_chunked": heads_chunked,
                 "samples": samples, "frames": frames, "img_size": size, "tokens": w.tokens(),
                 "activations": activations, "seconds": time.perf_counter() - t0})
    print(f"  {preset} {kind} {attention}{'' if heads_chunked else ' heads whole'} {samples}x{frames}x{size}: "
          f"{activations / GIB:.2f} GiB ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return w, activations


def _earlier_rows(path: str) -> dict:
    """{(preset, workload, attention, heads_chunked, samples, frames, img_size): activations} from the JSON line of
    an earlier run of this script."""
    for line in reversed(Path(path).read_text().splitlines()):
        if line.startswith('{"bench": "activation_memory"'):
            return {(r["preset"], r["workload"], r["attention"], r.get("heads_chunked", True), r["samples"], r["frames"],
                     r["img_size"]): r["activations"] for r in json.loads(line)["rows"]}
    sys.exit(f"{path}: no JSON line of bench/activation_memory.py")


def _fit(rows: list, earlier: dict, preset: str, kind: str) -> dict:
    """Count the grids of one preset and workload and fit activation_memory.predict's terms."""
    def count(grid, attention="auto", heads_chunked=True):
        done = [_count(rows, earlier, preset, kind, shape, attention, heads_chunked) for shape in grid[preset][kind]]
        return [w for w, _ in done], [a for _, a in done]

    fused, whole, unfused = count(GRID), count(WHOLE_HEADS_GRID, heads_chunked=False), count(SCORE_GRID, "reference")
    fit = am.fit_activations(*fused)
    fit.update(am.fit_whole_heads(fit, *whole))
    fit.update(am.fit_scores(fit, *unfused))
    for name, (ws, _) in (("points", fused), ("whole_heads_points", whole), ("score_points", unfused)):
        fit[name] = [[w.samples, w.frames, w.img_size] for w in ws]
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="vggt_1b,small,tiny")
    parser.add_argument("--write", action="store_true", help=f"merge the fits into {FITS_PATH.relative_to(REPO)}")
    parser.add_argument("--table", action="store_true", help="only print the VGGT-1B plan table from the stored fits")
    parser.add_argument("--rows", metavar="LOG", help="take the counts from the JSON line of an earlier run (its "
                        "output) instead of counting again: refits in seconds after a change to the fitted model")
    parser.add_argument("--check-real", action="store_true", help="also run REAL_CHECKS for real (CPU, minutes)")
    args = parser.parse_args()
    if args.table:
        records = plan_table()
        print(json.dumps({"bench": "activation_memory_plan_table", "rows": records}))
        return
    reason = am.unavailable()
    if reason:
        sys.exit(f"activation memory: {reason}")

    rows, fits = [], {}
    earlier = _earlier_rows(args.rows) if args.rows else {}
    for preset in args.presets.split(","):
        fits[preset] = {kind: _fit(rows, earlier, preset, kind) for kind in GRID[preset]}

    print("activation memory of one training step (bf16 autocast, camera + depth heads, fake tensors), GiB")
    print(f"  {'preset':8s} {'workload':18s} {'attention':9s} {'samples x frames x px':>21s} {'tokens':>7s} "
          f"{'measured':>9s} {'fit':>7s}")
    for r in rows:
        f = fits[r["preset"]][r["workload"]]
        w = _workload(r["preset"], r["workload"], (r["samples"], r["frames"], r["img_size"]), r["attention"], r["heads_chunked"])
        scores = am.score_elements(w.samples, w.frames, w.tokens_per_image()) if w.attention == "reference" else (0.0, 0.0)
        predicted = am.predict(f, w.samples * w.frames, w.tokens_per_image(),
                               w.head_chunk_frames if w.head_checkpointing else None, scores)
        r["fit"] = predicted
        shape = f"{r['samples']} x {r['frames']} x {r['img_size']}"
        variant = r["attention"] if r["heads_chunked"] else "whole hd"
        print(f"  {r['preset']:8s} {r['workload']:18s} {variant:9s} {shape:>21s} {r['tokens']:7d} "
              f"{r['activations'] / GIB:9.3f} {predicted / GIB:7.3f}")
    print("\nfits: fused attention: base + per_token x tokens + per_head_token x min(images, 4) x tokens per image")
    print("      (per_head_token_whole x tokens with the heads whole beyond 4 images: model.head_checkpointing=false);")
    print("      unfused: the larger of that and base + per_token x tokens + per_global_score x global + per_frame_score")
    print("      x frame (tokens = images x (patches + 5); global = samples x (frames x tokens per image)^2, frame =")
    print("      images x tokens per image^2: score elements per head; activation_memory.predict)")
    for preset, kinds in fits.items():
        for kind, f in kinds.items():
            print(f"  {preset:8s} {kind:18s} base {f['base'] / MIB:8.1f} MiB  per token {f['per_token'] / 1024:7.2f} KiB  "
                  f"per head token {f['per_head_token'] / 1024:7.2f} KiB  per score {f['per_global_score']:6.1f} / "
                  f"{f['per_frame_score']:6.1f} B  "
                  f"per whole-head token {f['per_head_token_whole'] / 1024:7.2f} KiB  max error {100 * f['max_rel_error']:.1f}% "
                  f"(fused) {100 * f['whole_heads_max_rel_error']:.1f}% (whole heads) {100 * f['score_max_rel_error']:.1f}% "
                  f"(reference)")

    real = []
    if args.check_real:
        print("\nfake vs real (MiB of activations)")
        for preset, kind, (samples, frames, size) in REAL_CHECKS:
            w = am.workload_of(kind, preset, samples, frames, size)
            fake, actual = am.measure(w, fake=True), am.measure(w, fake=False)
            real.append({"preset": preset, "workload": kind, "shape": [samples, frames, size],
                         "fake": fake.activations, "real": actual.activations})
            print(f"  {preset:8s} {kind:18s} {samples}x{frames}x{size}: fake {fake.activations / MIB:8.2f}  real "
                  f"{actual.activations / MIB:8.2f}  ({100 * (fake.activations / actual.activations - 1):+.2f}%)")

    if args.write:
        data = json.loads(FITS_PATH.read_text()) if FITS_PATH.exists() else {}
        data.setdefault("fits", {}).update(fits)
        data["how"] = "python bench/activation_memory.py --write (fake-tensor MemTracker, bf16 autocast on the CPU)"
        FITS_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {FITS_PATH.relative_to(REPO)}", file=sys.stderr)
    print(json.dumps({"bench": "activation_memory", "torch": torch.__version__, "rows": rows, "fits": fits, "real_checks": real}))


if __name__ == "__main__":
    main()
