"""Plain ``nn.Module`` SR networks that return named intermediate features, and checkpoint converters."""

from __future__ import annotations

from .blocks import DIV2K_RGB_MEAN, FEATURE_NAMES, SRNet, accepts_features_only, third_points
from .convert import detect_format, load_pretrained, load_state_dict_any
from .edsr import EDSR
from .rcan import RCAN

__all__ = [
    "DIV2K_RGB_MEAN",
    "EDSR",
    "FEATURE_NAMES",
    "RCAN",
    "SRNet",
    "accepts_features_only",
    "detect_format",
    "load_pretrained",
    "load_state_dict_any",
    "third_points",
]
