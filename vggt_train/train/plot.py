"""A loss plot (PNG, with the validation AUC@30 when logged) and a summary of a run's metrics.jsonl (`vggt-train plot-metrics`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

AUC_KEY = "auc@30"  # the validation pose metric plotted and summarised (train/val_metrics.py)


def read_metrics(path: Path) -> list[dict]:
    records = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # the last line of a killed run may be cut short; everything before it is still good
            print(f"warning: {path}:{i} is not valid JSON; skipped")
    return records


def summarize(records: list[dict]) -> dict:
    """First/last training loss (mean of the first/last 10 logged steps), throughput, validation, skips."""
    train = [r for r in records if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    val = [r for r in records if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
    if not train:
        return {}
    head, tail = train[:10], train[-10:]
    out = {
        "steps": train[-1]["step"],
        "first_loss": statistics.fmean(r["loss"] for r in head),
        "last_loss": statistics.fmean(r["loss"] for r in tail),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in train if "samples_per_s" in r),
        "images_per_s": statistics.median(r["images_per_s"] for r in train if "images_per_s" in r),
        "skipped_steps": sum(1 for r in records if r.get("split") == "train" and r.get("skipped")),
    }
    if val:
        out["first_val_loss"], out["last_val_loss"] = val[0]["loss"], val[-1]["loss"]
    auc = _auc_records(records)
    if auc:
        out["first_val_auc"], out["last_val_auc"] = auc[0][AUC_KEY], auc[-1][AUC_KEY]
    return out


def _auc_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("split") == "val" and isinstance(r.get(AUC_KEY), (int, float))]


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def numeric(r):  # a skipped (non-finite) step is logged with loss null
        return isinstance(r.get("loss"), (int, float))

    train = [r for r in records if r.get("split") == "train" and numeric(r)]
    val = [r for r in records if r.get("split") == "val" and numeric(r)]
    auc = _auc_records(records)
    if auc:  # a second panel below the losses, sharing the step axis
        fig, (ax, ax_auc) = plt.subplots(2, 1, figsize=(7, 6), dpi=120, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.5, label="train loss")
    if len(train) >= 10:
        k = max(5, len(train) // 20)
        smooth = [statistics.fmean(r["loss"] for r in train[max(0, i - k + 1): i + 1]) for i in range(len(train))]
        ax.plot([r["step"] for r in train], smooth, lw=2, label=f"train loss (mean of {k})")
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", lw=2, label="validation loss")
    ax.set_ylabel("objective")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("VGGT training")
    if auc:
        ax_auc.plot([r["step"] for r in auc], [r[AUC_KEY] for r in auc], "o-", lw=2, color="tab:green", label="validation AUC@30")
        ax_auc.set_ylabel("AUC@30 (%)")
        ax_auc.grid(True, alpha=0.3)
        ax_auc.legend()
        ax_auc.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
