"""Plain ``nn.Module`` SR networks that return named intermediate features, and their checkpoints."""

from __future__ import annotations

from .blocks import DIV2K_RGB_MEAN, FEATURE_NAMES, SRNet, accepts_features_only, third_points
from .checkpoint import (
    build_network,
    export_student,
    load_pretrained,
    load_state_dict_any,
    read_checkpoint,
    register_network,
    registered_networks,
    student_from_checkpoint,
)
from .convert import convert_state_dict, detect_format
from .edsr import EDSR
from .rcan import RCAN

__all__ = [
    "DIV2K_RGB_MEAN",
    "EDSR",
    "FEATURE_NAMES",
    "RCAN",
    "SRNet",
    "accepts_features_only",
    "build_network",
    "convert_state_dict",
    "detect_format",
    "export_student",
    "load_pretrained",
    "load_state_dict_any",
    "read_checkpoint",
    "register_network",
    "registered_networks",
    "student_from_checkpoint",
    "third_points",
]
