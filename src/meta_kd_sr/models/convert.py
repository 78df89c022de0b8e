"""Rename checkpoint keys to :class:`EDSR` and :class:`RCAN`'s names: pure functions on state dicts.

Reading files and loading weights into a network live in :mod:`meta_kd_sr.models.checkpoint`. Formats,
detected from the key names (or forced with ``fmt``):

- ``"ours"``: a state dict of our classes. BasicSR's EDSR uses the same names, so it is ``"ours"`` too.
- ``"official"``: EDSR-PyTorch / RCAN (``head.0``, ``body.N...``, ``tail.0``/``tail.1``, and the frozen
  ``sub_mean``/``add_mean`` 1x1 convs, which are checked against the model's mean shift and dropped).
- ``"basicsr"``: BasicSR's RCAN (``residual_group``, ``rcab``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

FORMATS = ("ours", "official", "basicsr")
_MEAN_SHIFT = ("sub_mean.", "add_mean.")

_OFFICIAL_COMMON = [
    (r"^head\.0\.", "conv_first."),
    (r"^tail\.0\.", "upsample."),
    (r"^tail\.1\.", "conv_last."),
]
_OFFICIAL_EDSR = [
    *_OFFICIAL_COMMON,
    (r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
    (r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
    (r"^body\.\d+\.(weight|bias)$", r"conv_after_body.\1"),
]
_OFFICIAL_RCAN = [
    *_OFFICIAL_COMMON,
    (r"^body\.(\d+)\.body\.(\d+)\.body\.0\.", r"body.\1.blocks.\2.conv1."),
    (r"^body\.(\d+)\.body\.(\d+)\.body\.2\.", r"body.\1.blocks.\2.conv2."),
    (r"^body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.0\.", r"body.\1.blocks.\2.attention.down."),
    (r"^body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.2\.", r"body.\1.blocks.\2.attention.up."),
    (r"^body\.(\d+)\.body\.\d+\.(weight|bias)$", r"body.\1.conv.\2"),  # group-end conv
    (r"^body\.\d+\.(weight|bias)$", r"conv_after_body.\1"),
]
_BASICSR_RCAN = [
    (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.0\.", r"body.\1.blocks.\2.conv1."),
    (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.2\.", r"body.\1.blocks.\2.conv2."),
    (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.", r"body.\1.blocks.\2.attention.down."),
    (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.", r"body.\1.blocks.\2.attention.up."),
]


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the key convention of an (unwrapped) state dict: ``"ours"``, ``"official"`` or ``"basicsr"``."""
    keys = list(state_dict)
    if any(k.startswith(("head.", "tail.", *_MEAN_SHIFT)) for k in keys):
        return "official"
    if any(".residual_group." in k or ".rcab." in k for k in keys):
        return "basicsr"
    if any(k.startswith("conv_first.") for k in keys):
        return "ours"
    raise ValueError(
        f"unknown checkpoint format: keys match none of {FORMATS} (first keys: {keys[:5]}); "
        "expected 'conv_first.*' (ours/BasicSR) or 'head.*'/'tail.*' (EDSR-PyTorch/RCAN)"
    )


def _rename(sd: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, k)
            if n:
                k = new
                break
        out[k] = v
    return out


def convert_state_dict(sd: Mapping[str, torch.Tensor], fmt: str | None = None) -> dict[str, torch.Tensor]:
    """Rename an unwrapped state dict from ``fmt`` (detected if None) to our key names.

    Official MeanShift entries (``sub_mean``/``add_mean``) are dropped; see :func:`check_mean_shift`.
    """
    fmt = detect_format(sd) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")
    if fmt == "official":
        rcan = any(".conv_du." in k for k in sd)
        sd = {k: v for k, v in sd.items() if not k.startswith(_MEAN_SHIFT)}
        return _rename(sd, _OFFICIAL_RCAN if rcan else _OFFICIAL_EDSR)
    if fmt == "basicsr":
        return _rename(sd, _BASICSR_RCAN)  # BasicSR's EDSR names are ours already
    return dict(sd)


def check_mean_shift(sd: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Check that official ``sub_mean``/``add_mean`` convs equal the model's ``(lq - mean) * img_range``.

    EDSR-PyTorch's MeanShift is ``weight = I / std``, ``bias = sign * rgb_range * mean / std``; our models
    have ``std = 1`` and shift by ``img_range * mean``. Missing entries are not an error.
    """
    if not hasattr(model, "mean") or not hasattr(model, "img_range"):
        return
    mean, img_range = cast(Tensor, model.mean), cast(float, model.img_range)
    want = (mean.flatten() * img_range).double().cpu()
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
        if f"{name}.weight" not in sd or f"{name}.bias" not in sd:
            continue
        weight = sd[f"{name}.weight"].double().reshape(3, 3)
        if not torch.allclose(weight, torch.eye(3, dtype=torch.float64), atol=1e-6):
            raise ValueError(f"checkpoint {name} divides by an rgb_std != 1, which these models cannot do")
        got = sign * sd[f"{name}.bias"].double().flatten()
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise ValueError(
                f"checkpoint {name} shifts by rgb_range * rgb_mean = {got.tolist()} but the model by "
                f"img_range * mean = {want.tolist()}; build the model with a matching img_range/rgb_mean"
            )
