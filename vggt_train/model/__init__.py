"""Our VGGT implementation: official-checkpoint compatible, numerically equal to the reference model.

The names below are imported on first use, so that `vggt_train.model.config` (presets, HEADS) stays free of
torch for the light commands that only read a config.
"""

_LAZY = {
    "VGGT": "vggt_train.model.vggt",
    "VGGTConfig": "vggt_train.model.config",
    "config_from_dict": "vggt_train.model.config",
    "preset_config": "vggt_train.model.config",
    "load_pretrained": "vggt_train.model.weights",
    "export_official": "vggt_train.model.weights",
    "read_state_dict": "vggt_train.model.weights",
    "LoadReport": "vggt_train.model.weights",
    "CheckpointMismatchError": "vggt_train.model.weights",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
