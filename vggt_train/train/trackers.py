"""Experiment trackers of a run (train.log_with): which accelerate trackers, their start, and images sent to them.

    tensorboard  <output_dir>/tensorboard/ (the default; `tensorboard --logdir <output_dir>`)
    wandb        Weights & Biases, project $WANDB_PROJECT or "vggt-train", run files under $WANDB_DIR or
                 <output_dir> (WANDB_MODE=offline keeps everything local); needs `pip install .[wandb]`
    all          both of the above (not accelerate's "all", which would start every tracker package installed)
    none         no tracker: metrics.jsonl only

Only the main process starts trackers; elsewhere `accelerator.trackers` is empty and every call here does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

TENSORBOARD_DIR = "tensorboard"  # accelerate's project name: the TensorBoard run directory under output_dir


def tracker_names(log_with: str) -> List[str]:
    """The trackers train.log_with selects, by accelerate name."""
    return {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"], "none": []}[log_with]


def accelerate_log_with(log_with: str, output_dir: str) -> Optional[list]:
    """What Accelerator(log_with=...) takes for train.log_with: names, and a ready WandBTracker for wandb (so that
    its project is not the TensorBoard directory's name, which accelerate would pass as wandb's project)."""
    out: list = []
    for name in tracker_names(log_with):
        if name == "wandb":
            from accelerate.tracking import WandBTracker

            project = os.environ.get("WANDB_PROJECT") or "vggt-train"
            out.append(WandBTracker(project, dir=os.environ.get("WANDB_DIR") or str(Path(output_dir)),
                                    name=Path(output_dir).resolve().name))
        else:
            out.append(name)
    return out or None


def start(accelerator, hparams: Dict[str, Any], banner: str) -> None:
    """Start the trackers (main process) with the run's hparams (config + run facts); TensorBoard also gets the
    banner as text (wandb keeps the console output itself)."""
    if accelerator.log_with:
        Path(accelerator.project_dir or ".").mkdir(parents=True, exist_ok=True)  # wandb's dir must exist
        accelerator.init_trackers(TENSORBOARD_DIR, config=hparams)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            writer = tracker.tracker
            writer.add_text("run_info", "\n".join("    " + line for line in banner.splitlines()), 0)  # indented: verbatim
            writer.flush()


def wants_images(accelerator) -> bool:
    """True when some tracker of this process takes images (so they are worth drawing)."""
    return any(t.name in ("tensorboard", "wandb") for t in accelerator.trackers)


def log_image(accelerator, tag: str, image: np.ndarray, step: int) -> None:
    """One [H, W, 3] uint8 image to every tracker that takes images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.tracker.add_image(tag, image, step, dataformats="HWC")
            tracker.tracker.flush()
        elif tracker.name == "wandb":
            tracker.log_images({tag: [image]}, step=step)
