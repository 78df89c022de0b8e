"""Load checkpoints (ours, official EDSR-PyTorch/RCAN, BasicSR) into :class:`EDSR` and :class:`RCAN`.

Files are always read with ``torch.load(..., weights_only=True)``: a checkpoint that needs arbitrary
pickled objects is refused. Formats, detected from the key names (or forced with ``fmt``):

- ``"ours"``: a state dict of our classes; also inside ``{"state_dict": ..., "config": ...}`` (our
  export) or a Lightning checkpoint whose ``state_dict`` holds the network under ``student.``. BasicSR's
  EDSR uses the same names, so it loads as ``"ours"``.
- ``"official"``: EDSR-PyTorch / RCAN (``head.0``, ``body.N...``, ``tail.0``/``tail.1``, and the frozen
  ``sub_mean``/``add_mean`` 1x1 convs, which are checked against the model's mean shift and dropped).
- ``"basicsr"``: BasicSR's RCAN (``residual_group``, ``rcab``) inside ``params_ema``/``params``.

A ``module.`` (DataParallel) or ``_orig_mod.`` (``torch.compile``) prefix is stripped.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

FORMATS = ("ours", "official", "basicsr")
WRAPPERS = ("params_ema", "params", "state_dict")  # searched in this order when ``key`` is None
_MEAN_SHIFT = ("sub_mean.", "add_mean.")
# torch's weights-only unpickler names the object it refused with one of these phrases
_NEEDS_PICKLE = ("global", "unrecognized function", "unsupported class")

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

Source = str | os.PathLike | Mapping[str, Any]


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``, with clear errors for missing or unsafe files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(path)!r}")
    unreadable = f"cannot read checkpoint {os.fspath(path)!r}: not a PyTorch file, or corrupted"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if any(s in str(err).lower() for s in _NEEDS_PICKLE):
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} needs pickle to load arbitrary Python objects; it is "
                "refused for safety (weights_only=True). Re-save its tensors as a plain state dict."
            ) from err
        raise ValueError(unreadable) from err
    except Exception as err:  # zip, pickle and unpickler errors of a broken file all end here
        raise ValueError(unreadable) from err


def _unwrap(obj: Any, key: str | None) -> dict[str, torch.Tensor]:
    """Pick the state dict out of a wrapper and strip ``module.``/``_orig_mod.``/``student.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"unknown checkpoint format: expected a mapping, got {type(obj).__name__}")
    if key is not None:
        if key not in obj or not isinstance(obj[key], Mapping):
            raise ValueError(f"checkpoint has no state dict under {key!r}; top-level keys: {list(obj)[:8]}")
        obj = obj[key]
    else:
        obj = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), obj)
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"unknown checkpoint format: no tensors found (keys: {list(obj)[:8]})")
    if any(k.startswith("student.") for k in sd):  # Lightning: keep the network, drop KRNets/adapters
        sd = {k[len("student.") :]: v for k, v in sd.items() if k.startswith("student.")}
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


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
    want = (model.mean.flatten() * model.img_range).double().cpu()
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


def load_state_dict_any(
    source: Source, fmt: str | None = None, key: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (or take a loaded mapping) and return its weights in our key names.

    Args:
        source: path to a ``.pt``/``.pth``/``.ckpt`` file, or an already loaded checkpoint mapping.
        fmt: ``"ours"``, ``"official"`` or ``"basicsr"``; None detects it from the key names.
        key: wrapper entry to read (e.g. ``"params"``); None takes the first of ``params_ema``, ``params``,
            ``state_dict`` that exists, else the mapping itself.

    Returns:
        ``{name: tensor}`` with our names (MeanShift entries dropped).

    """
    return convert_state_dict(*_prepare(source, fmt, key)[:2])


def _prepare(source: Source, fmt: str | None, key: str | None) -> tuple[dict[str, torch.Tensor], str, str]:
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")
    if isinstance(source, Mapping):
        where, obj = "<state dict>", source
    elif isinstance(source, str | os.PathLike):
        where, obj = repr(os.fspath(source)), read_checkpoint(source)
    else:
        raise ValueError(f"expected a checkpoint path or a loaded mapping, got {type(source).__name__}")
    sd = _unwrap(obj, key)
    return sd, fmt or detect_format(sd), where


def _few(keys: set[str], n: int = 5) -> str:
    items = sorted(keys)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def load_pretrained(
    model: nn.Module, path: Source, strict: bool = True, key: str | None = None, fmt: str | None = None
) -> nn.Module:
    """Load a checkpoint of any supported format into ``model`` (in place) and return it.

    Args:
        model: an :class:`EDSR` or :class:`RCAN` (any module with our key names works).
        path: checkpoint file or loaded mapping (see :func:`load_state_dict_any`).
        strict: require the keys to match exactly; shapes must always match.
        key: wrapper entry to read, e.g. ``"params"`` to prefer BasicSR's non-EMA weights.
        fmt: force the key convention instead of detecting it.

    Returns:
        ``model``, with the checkpoint's weights.

    """
    raw, fmt, where = _prepare(path, fmt, key)
    if fmt == "official":
        check_mean_shift(raw, model)
    sd = convert_state_dict(raw, fmt)
    own = model.state_dict()
    for k in own:
        if k in sd and sd[k].shape != own[k].shape:
            raise ValueError(
                f"checkpoint {where} does not fit the model: {k} has shape {tuple(sd[k].shape)} in the "
                f"checkpoint but {tuple(own[k].shape)} in the model (another scale or width?)"
            )
    missing, unexpected = own.keys() - sd.keys(), sd.keys() - own.keys()
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint {where} (format {fmt!r}) does not fit the model (another architecture, depth or "
            f"scale?): missing keys: [{_few(missing)}]; unexpected keys: [{_few(unexpected)}]"
        )
    model.load_state_dict(sd, strict=strict)
    return model
