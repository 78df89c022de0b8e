"""``meta-kd-sr-eval``: the SR protocol on benchmark HR folders for a checkpoint or the bicubic row.

Writes ``eval.json`` (means, per-image scores, the protocol, the checkpoint's distillation method when known,
the command's overrides) and, with ``save_dir=``, the SR images as PNG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from meta_kd_sr.cli import config_dir, hydra_log
from meta_kd_sr.data import ImageFolderSR, save_png
from meta_kd_sr.evaluation.inference import resolve_device, sr_function, tile_setting
from meta_kd_sr.evaluation.metrics import psnr_y, quantize, ssim_y
from meta_kd_sr.models.checkpoint import load_pretrained, read_checkpoint, student_from_checkpoint
from meta_kd_sr.runtime.console import format_outputs, one_line_errors
from meta_kd_sr.runtime.finite import finite_or_none

log = logging.getLogger(__name__)
SRFunction = Callable[[torch.Tensor], torch.Tensor]
# keys of eval.json next to the sets: a folder with one of these names is reported as "<name>_2"
_RESULT_KEYS = ("protocol", "checkpoint", "method", "overrides", "save_dir")


def protocol(scale: int, crop_border: int, ensemble: bool) -> dict[str, Any]:
    """The evaluation protocol, written next to every result."""
    return {
        "scale": scale,
        "channel": "Y of MATLAB rgb2ycbcr (16 + 65.481 R + 128.553 G + 24.966 B)",
        "crop_border": crop_border,
        "sr_quantized": "uint8",
        "average": "per image, then mean over images",
        "ssim": "11x11 Gaussian, sigma 1.5, valid window, Y in [0, 255]",
        "lq": "LR folder if present, else MATLAB bicubic (uint8) of the HR cropped to a multiple of scale",
        "self_ensemble": ensemble,
    }


def load_network(cfg: DictConfig, device: torch.device, scale: int | None = None) -> nn.Module | None:
    """The network of ``cfg.ckpt_path`` in eval mode on ``device``; ``None`` for ``ckpt_path=bicubic``.

    Our training checkpoint (``.ckpt``) or exported ``student.pt`` rebuilds itself from its saved config;
    an official EDSR/RCAN or BasicSR file needs the architecture, ``cfg.model`` (``model=<preset>``).
    Given ``scale``, a network of another scale is refused.
    """
    if str(cfg.ckpt_path) == "bicubic":
        return None
    if cfg.get("model"):
        net = load_pretrained(instantiate(cfg.model), cfg.ckpt_path, fmt=cfg.get("format"))
    else:
        net, _ = student_from_checkpoint(cfg.ckpt_path)
    if scale is not None and getattr(net, "scale", scale) != scale:
        raise ValueError(f"checkpoint {cfg.ckpt_path} is a x{net.scale} network but scale={scale} was asked")
    return net.to(device).eval()


def build_sr_function(cfg: DictConfig, device: torch.device) -> SRFunction:
    """The SR function of ``cfg.ckpt_path``: bicubic, our checkpoint/export, or an official checkpoint."""
    scale = int(cfg.scale)
    tile, overlap = tile_setting(cfg.get("tile"), cfg.get("tile_overlap", 16))
    net = load_network(cfg, device, scale)
    return sr_function(net, scale, tile, overlap, bool(cfg.self_ensemble))


def checkpoint_method(ckpt_path: str, official: bool = False) -> str | None:
    """The distillation method (``distill=`` preset) a checkpoint was trained with, when it can be told.

    ``"bicubic"`` for the bicubic row. For our files: the ``distill`` choice in the Hydra record of the
    training run (``.hydra/hydra.yaml`` in the folder of ``student.pt`` or above ``checkpoints/``), else
    ``"none"`` for a training checkpoint trained without a teacher. ``None`` when unknown (official files,
    a file moved out of its run folder).
    """
    if ckpt_path == "bicubic":
        return "bicubic"
    path = Path(ckpt_path)
    if official or not path.is_file():
        return None
    for run_dir in (path.parent, path.parent.parent):
        choice = _recorded_choice(run_dir / ".hydra" / "hydra.yaml", "distill")
        if choice is not None:
            return choice
    if path.suffix == ".ckpt":
        hparams = read_checkpoint(path).get("hyper_parameters")
        if isinstance(hparams, dict) and "teacher_config" in hparams and hparams["teacher_config"] is None:
            return "none"
    return None


def _recorded_choice(record: Path, group: str) -> str | None:
    """The option of config group ``group`` in a Hydra record (``.hydra/hydra.yaml``), if readable."""
    if not record.is_file():
        return None
    try:  # the record is data: one plain string is read, nothing is resolved or instantiated
        loaded = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(record), resolve=False))
        choices = loaded["hydra"]["runtime"]["choices"]
        choice = choices[group]
    except Exception:  # a damaged record only loses the method's name
        return None
    return choice if isinstance(choice, str) else None


def _command_overrides() -> list[str]:
    """The overrides of the running Hydra command (``[]`` when called from Python)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _set_name(hr_dir: Path, taken: dict[str, Any]) -> str:
    name = hr_dir.parent.name if hr_dir.name.upper() in ("HR", "GT", "GTMOD12") else hr_dir.name
    base, i = name, 2
    while name in taken or name in _RESULT_KEYS:
        name, i = f"{base}_{i}", i + 1
    return name


@torch.no_grad()
def score_dataset(
    sr_fn: SRFunction,
    dataset: Iterable[dict[str, Any]] | Dataset,
    crop_border: int,
    device: torch.device | None = None,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    """Mean per-image PSNR_y / SSIM_y of ``sr_fn`` over full-image items ``{"lq", "gt", "name"}``.

    Args:
        sr_fn: lq (1, 3, h, w) -> sr (1, 3, H, W); its output is clamped to [0, 1].
        dataset: full-image items; ``name`` (optional, default the index) keys the per-image scores.
        crop_border: pixels removed on each side before the metrics.
        device: where ``sr_fn`` runs.
        save_dir: when given, each SR image is written there as ``<name>_x<scale>.png``, on the uint8 levels
            the metrics score (reading it back gives the same PSNR_y / SSIM_y).

    Returns:
        ``{"psnr_y", "ssim_y", "n_images", "per_image": {name: {"psnr_y", "ssim_y"}}}``; the means are the
        means of the per-image values.
    """
    per_image: dict[str, dict[str, float]] = {}
    for i, item in enumerate(cast(Iterable[dict[str, Any]], dataset)):  # a map-style Dataset iterates too
        gt = item["gt"][None].to(device)
        sr = sr_fn(item["lq"][None].to(device)).clamp(0, 1)
        name = str(item.get("name", i))
        name = name if name not in per_image else f"{name}_{i}"
        per_image[name] = {
            "psnr_y": psnr_y(sr, gt, crop_border).item(),
            "ssim_y": ssim_y(sr, gt, crop_border).item(),
        }
        if save_dir is not None:
            scale = sr.shape[-1] // item["lq"].shape[-1]
            save_png(
                quantize(sr[0]).mul(255).round().to(torch.uint8).cpu(), save_dir / f"{name}_x{scale}.png"
            )
    psnr = [r["psnr_y"] for r in per_image.values()]
    ssim = [r["ssim_y"] for r in per_image.values()]
    n = len(psnr)
    return {"psnr_y": sum(psnr) / n, "ssim_y": sum(ssim) / n, "n_images": n, "per_image": per_image}


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on every folder of ``cfg.hr_dirs``; write ``cfg.output_json`` when set; return the results.

    With ``cfg.save_dir`` the SR images of each folder go to ``<save_dir>/<set>/<name>_x<scale>.png``.
    """
    scale = int(cfg.scale)
    crop = scale if cfg.get("crop_border") is None else int(cfg.crop_border)
    device = resolve_device(str(cfg.device))
    sr_fn = build_sr_function(cfg, device)
    save_root = Path(cfg.save_dir) if cfg.get("save_dir") else None
    results: dict[str, Any] = {}
    for hr_dir in [Path(d) for d in cfg.hr_dirs]:
        dataset = ImageFolderSR(hr_dir, scale, lr_dir=None, train=False)
        name = _set_name(hr_dir, results)
        results[name] = score_dataset(sr_fn, dataset, crop, device, save_root / name if save_root else None)
    results["protocol"] = protocol(scale, crop, bool(cfg.self_ensemble))
    results["checkpoint"] = str(cfg.ckpt_path)
    results["method"] = checkpoint_method(str(cfg.ckpt_path), official=bool(cfg.get("model")))
    results["overrides"] = _command_overrides()
    results["save_dir"] = str(save_root) if save_root else None
    print(format_table(results))
    if cfg.get("output_json"):
        Path(cfg.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_json).write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False))
    if cfg.get("output_json") or save_root:
        entries = [("scores", cfg.get("output_json")), ("SR images", save_root), ("log", hydra_log())]
        print(format_outputs(entries), flush=True)
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table (one row per folder)."""
    rows = [f"{'set':<16} {'n':>5} {'PSNR_y':>9} {'SSIM_y':>8}"]
    for name, r in results.items():
        if isinstance(r, dict) and "psnr_y" in r:
            rows.append(f"{name:<16} {r['n_images']:>5} {r['psnr_y']:>9.4f} {r['ssim_y']:>8.5f}")
    return "\n".join(rows)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    """Console entry point (``meta-kd-sr-eval``)."""
    with one_line_errors("meta-kd-sr-eval"):  # a setting, file or disk to fix: one line, exit status 2
        log.info("eval config:\n%s", OmegaConf.to_yaml(cfg))
        if cfg.get("output_json") is None:
            cfg.output_json = str(Path(HydraConfig.get().runtime.output_dir) / "eval.json")
        evaluate(cfg)


if __name__ == "__main__":
    main()
