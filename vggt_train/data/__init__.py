"""Co3D data: raw-layout reading (co3d), conversion to Arrow shards (convert, merge, verify), synthetic scenes, and the
training pipeline (dataset, sampler, loader, finish).

Kept import-light: conversion workers import this package, and must not pay for `datasets` or torch. The
pipeline's names are imported on first use:

    from vggt_train.data import MultiViewDataset, StepPlanner, RankBatchStream, make_loader, finish_batch
"""

from vggt_train.data.schema import decode_depth, decode_image

# name -> module, imported by __getattr__ on first access (PEP 562)
_LAZY = {
    "MultiViewDataset": "vggt_train.data.dataset",
    "InMemorySource": "vggt_train.data.dataset",
    "AugmentConfig": "vggt_train.data.transforms",
    "ColorJitterConfig": "vggt_train.data.transforms",
    "StepPlanner": "vggt_train.data.sampler",
    "RankBatchStream": "vggt_train.data.loader",
    "make_loader": "vggt_train.data.loader",
    "finish_batch": "vggt_train.data.finish",
    "collate_and_normalize": "vggt_train.data.collate",
}

__all__ = ["decode_depth", "decode_image", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
