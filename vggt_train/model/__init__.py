"""Our VGGT implementation: official-checkpoint compatible, numerically equal to the reference model."""

from vggt_train.model.checkpoint import CheckpointMismatchError, LoadReport, export_official, load_pretrained, read_state_dict
from vggt_train.model.config import VGGTConfig, config_from_dict, preset_config
from vggt_train.model.vggt import VGGT

__all__ = [
    "VGGT",
    "VGGTConfig",
    "config_from_dict",
    "preset_config",
    "load_pretrained",
    "export_official",
    "read_state_dict",
    "LoadReport",
    "CheckpointMismatchError",
]
