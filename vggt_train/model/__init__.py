"""Our VGGT implementation: official-checkpoint compatible, numerically equal to the reference model.

The names below are imported on first use, so that `vggt_train.model.config` (presets, HEADS) stays free of
torch for the light commands that only read a config.
"""

from vggt_train.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
