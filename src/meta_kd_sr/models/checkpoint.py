"""Checkpoint files: read them, load their weights, rebuild networks from their configs, export the student.

- :func:`read_checkpoint` is ``torch.load(..., weights_only=True)``: no pickled objects.
- :func:`load_pretrained` takes the weights out of their wrapper (``params_ema``/``params``/``state_dict``, a
  Lightning checkpoint's ``student.`` entries, a ``module.``/``_orig_mod.`` prefix) and renames official
  keys with :mod:`meta_kd_sr.models.convert`.
- :func:`build_network` rebuilds a network from a saved ``{"_target_": name, **kwargs}``. A config read
  from a file is data, never code: ``_target_`` must be in the allow-list (the networks of
  :mod:`meta_kd_sr.models` and the classes given to :func:`register_network`) and is never imported; the
  arguments must be plain values that fit the class signature.
- :func:`export_student` writes the student alone, ``{"state_dict", "config"}``, which
  :func:`student_from_checkpoint` rebuilds with no distillation code.
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meta_kd_sr.runtime.atomic import atomic_save
from meta_kd_sr.runtime.finite import first_nonfinite_index

from .convert import FORMATS, check_mean_shift, convert_state_dict, detect_format
from .edsr import EDSR
from .rcan import RCAN

WRAPPERS = ("params_ema", "params", "state_dict")  # searched in this order when ``key`` is None
# torch's weights-only unpickler names the object it refused with one of these phrases
_NEEDS_PICKLE = ("global", "unrecognized function", "unsupported class")
_PLAIN = (type(None), bool, int, float, str)
_MAX_DEPTH = 16

Source = str | os.PathLike | Mapping[str, Any]


# ------------------------------------------------------------------------ reading and loading weights
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
    return _load_weights(model, raw, fmt, where, strict)


def _few(keys: set[str], n: int = 5) -> str:
    items = sorted(keys)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _load_weights(
    model: nn.Module, raw: dict[str, torch.Tensor], fmt: str, where: str, strict: bool
) -> nn.Module:
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


# ------------------------------------------------------------------------ the allow-list of networks
_REGISTRY: dict[str, type[nn.Module]] = {}


def register_network(cls: type[nn.Module], *aliases: str) -> type[nn.Module]:
    """Allow ``cls`` to be rebuilt from the configs saved in checkpoints; returns ``cls`` (a decorator).

    The class is registered under its defining path (``cls.__module__ + "." + cls.__qualname__``) and under
    each alias. Add as an alias the ``_target_`` your model config uses when it differs, e.g.
    ``register_network(MyNet, "mypkg.MyNet")`` for a class defined in ``mypkg/nets.py``. Register before a
    checkpoint is loaded, e.g. in the module that defines the class::

        from meta_kd_sr.models import register_network

        @register_network
        class MyNet(nn.Module): ...

    Raises:
        ValueError: ``cls`` is not an ``nn.Module`` class, or a name is registered to another class.
    """
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_network takes an nn.Module class, got {cls!r}")
    names = (f"{cls.__module__}.{cls.__qualname__}", *aliases)
    for name in names:
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"network name {name!r} is already registered to {_REGISTRY[name]!r}")
    _REGISTRY.update(dict.fromkeys(names, cls))
    return cls


def registered_networks() -> dict[str, type[nn.Module]]:
    """A copy of the allow-list: ``{_target_ name: class}``."""
    return dict(_REGISTRY)


for _net in (EDSR, RCAN):  # the SR networks of meta_kd_sr.models, under the name the model configs use
    register_network(_net, f"meta_kd_sr.models.{_net.__name__}")


# ------------------------------------------------------------------------ rebuilding from a config
def build_network(
    config: Mapping[str, Any], source: str | os.PathLike | None = None, entry: str = "config"
) -> nn.Module:
    """Rebuild ``config["_target_"](**kwargs)`` from a config read from a file, if the allow-list permits.

    Refused, each with a ValueError that names ``source`` and the offending entry: a ``_target_`` that is
    not registered (see :func:`register_network`; a name is never imported), any other key that starts with
    ``_`` (``_partial_``, ``_args_``, ...), a value that is not plain data (None, bool, int, float, str, and
    lists/tuples/dicts of them; no nested ``_target_``), and arguments that do not fit the class signature.

    Args:
        config: ``{"_target_": name, **kwargs}``, e.g. a checkpoint's ``hyper_parameters.student_config``.
        source: the file the config was read from, for the messages.
        entry: where the config sits in that file, for the messages.

    Returns:
        The network, freshly initialised (load its weights next).

    """
    where = f"checkpoint {os.fspath(source)!r}" if source is not None else "network config"
    cls, target, kwargs = _checked(config, where, entry)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {entry} does not build a {target}: {err}") from err


def _checked(config: Any, where: str, entry: str) -> tuple[type[nn.Module], str, dict[str, Any]]:
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{where}: {entry} must be a mapping {{'_target_': ..., **kwargs}}, got {config!r:.200}"
        )
    target = config.get("_target_")
    cls = _REGISTRY.get(target) if isinstance(target, str) else None
    if cls is None or not isinstance(target, str):
        raise ValueError(
            f"{where}: {entry}['_target_'] = {target!r:.200} is not a network that may be rebuilt from "
            f"a file (allowed: {sorted(_REGISTRY)}). Names read from a checkpoint are never imported. If it "
            "is your own network class, register it before loading: "
            "`from meta_kd_sr.models import register_network; register_network(MyNet)`."
        )
    for key in config:
        if not isinstance(key, str) or (key.startswith("_") and key != "_target_"):
            raise ValueError(
                f"{where}: {entry}[{key!r}] is refused: a network config holds '_target_' and keyword "
                "arguments only (no '_partial_', '_args_' or other special keys)"
            )
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    for key, value in kwargs.items():
        _check_plain(value, f"{entry}[{key!r}]", where)
    _check_signature(cls, target, kwargs, where, entry)
    return cls, target, kwargs


def _check_plain(value: Any, at: str, where: str, depth: int = 0) -> None:
    """Refuse anything but plain data at ``at`` (and below it): nothing in an argument is ever built."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: {at} is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{at}[{i}]", where, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_target_":
                raise ValueError(
                    f"{where}: {at} holds a nested '_target_' ({item!r:.200}): only the network itself is "
                    "rebuilt, nothing inside its arguments"
                )
            if not isinstance(key, str) or key.startswith("_"):
                raise ValueError(
                    f"{where}: {at}[{key!r}] is refused: no special keys inside a network config"
                )
            _check_plain(item, f"{at}[{key!r}]", where, depth + 1)
        return
    raise ValueError(
        f"{where}: {at} is a {type(value).__name__}; a network config holds only plain values "
        "(None, bool, int, float, str, and lists/tuples/dicts of them)"
    )


def _check_signature(cls: type, target: str, kwargs: dict[str, Any], where: str, entry: str) -> None:
    params = inspect.signature(cls).parameters
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            raise ValueError(
                f"{where}: {entry}[{unknown[0]!r}] is not an argument of {target} (unknown: {unknown}; "
                f"{target} takes {named})"
            )
    missing = [n for n in named if params[n].default is params[n].empty and n not in kwargs]
    if missing:
        raise ValueError(f"{where}: {entry} lacks the required argument(s) {missing} of {target}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {entry} does not fit the signature of {target}: {err}") from err


# ------------------------------------------------------------------------ the student: rebuild and export
def _saved_config(ckpt: Any, path: str | os.PathLike) -> tuple[Any, str]:
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds a {type(ckpt).__name__}, not a checkpoint")
    if ckpt.get("config"):
        return ckpt["config"], "config"
    hparams = ckpt.get("hyper_parameters")
    if isinstance(hparams, Mapping) and hparams.get("student_config"):
        return hparams["student_config"], "hyper_parameters['student_config']"
    raise ValueError(
        f"{os.fspath(path)} carries no network config; evaluate it with an explicit architecture "
        "(model=<preset>)"
    )


def student_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student of a training checkpoint or an exported file (see :func:`build_network`).

    Returns:
        The network (eval mode, the file's weights) and its config.
    """
    ckpt = read_checkpoint(path)
    config, entry = _saved_config(ckpt, path)
    net = build_network(config, path, entry)
    _load_weights(net, _unwrap(ckpt, None), "ours", repr(os.fspath(path)), strict=True)
    return net.eval(), dict(config)


def exportable_student(ckpt_path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The student of a checkpoint (see :func:`student_from_checkpoint`), refused if a weight is NaN/inf."""
    net, config = student_from_checkpoint(ckpt_path)
    state = net.state_dict()
    names = [k for k, v in state.items() if v.is_floating_point()]
    bad = first_nonfinite_index([state[k] for k in names])
    if bad is not None:
        raise FloatingPointError(f"refusing to export {os.fspath(ckpt_path)}: {names[bad]} holds NaN/inf")
    return net, config


def save_student(net: nn.Module, config: dict[str, Any], out_path: str | os.PathLike) -> Path:
    """Write ``{"state_dict", "config"}`` of a network atomically (read by ``student_from_checkpoint``)."""
    return atomic_save({"state_dict": net.state_dict(), "config": config}, out_path)


def export_student(ckpt_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the student of a training checkpoint alone: weights and the config that rebuilds it."""
    return save_student(*exportable_student(ckpt_path), out_path)
