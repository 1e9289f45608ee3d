"""Training data, in the order it flows: sources (where frames come from: raw Co3D, converted shards, memory),
shards (converting raw Co3D once into sharded Arrow datasets, and reading/verifying them), pipeline (sampler,
worker stage, loader, device stage). Also the synthetic Co3D scenes used by tests and the demo.

Kept import-light: conversion workers import this package, and must not pay for `datasets` or torch. The
public names are imported on first use:

    from vggt_train.data import MultiViewDataset, Co3DSplit, StepPlanner, RankBatchStream, make_loader, finish_batch
"""

from vggt_train.data.shards.schema import decode_depth, decode_image
from vggt_train.lazy import lazy_exports

# name -> module, imported by __getattr__ on first access (PEP 562)
_LAZY = {
    "MultiViewDataset": "vggt_train.data.pipeline.dataset",
    "InMemorySource": "vggt_train.data.sources.memory",
    "Co3DSplit": "vggt_train.data.shards.reader",
    "AugmentConfig": "vggt_train.data.pipeline.transforms",
    "ColorJitterConfig": "vggt_train.data.pipeline.transforms",
    "StepPlanner": "vggt_train.data.pipeline.sampler",
    "RankBatchStream": "vggt_train.data.pipeline.loader",
    "make_loader": "vggt_train.data.pipeline.loader",
    "finish_batch": "vggt_train.data.pipeline.finish",
    "WorkerBatch": "vggt_train.data.pipeline.batch",
    "TrainBatch": "vggt_train.data.pipeline.batch",
    "collate_and_normalize": "vggt_train.data.pipeline.collate",
}

__all__ = ["decode_depth", "decode_image", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
