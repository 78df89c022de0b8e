"""``meta-kd-sr-eval``: the SR protocol on benchmark HR folders for a checkpoint or the bicubic row."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from meta_kd_sr.cli import config_dir
from meta_kd_sr.data import ImageFolderSR
from meta_kd_sr.inference import self_ensemble, tiled_forward, upscale_bicubic
from meta_kd_sr.metrics import psnr_y, ssim_y
from meta_kd_sr.models.checkpoint import load_pretrained, student_from_checkpoint

log = logging.getLogger(__name__)
SRFunction = Callable[[torch.Tensor], torch.Tensor]


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


def build_sr_function(cfg: DictConfig, device: torch.device) -> SRFunction:
    """The SR function of ``cfg.ckpt_path``: bicubic, our checkpoint/export, or an official checkpoint."""
    scale = int(cfg.scale)
    if str(cfg.ckpt_path) == "bicubic":
        return lambda lq: upscale_bicubic(lq, scale)
    if cfg.get("model"):
        net = load_pretrained(instantiate(cfg.model), cfg.ckpt_path, fmt=cfg.get("format"))
    else:
        net, _ = student_from_checkpoint(cfg.ckpt_path)
    if getattr(net, "scale", scale) != scale:
        raise ValueError(f"checkpoint {cfg.ckpt_path} is a x{net.scale} network but scale={scale} was asked")
    net = net.to(device).eval()

    def run(lq: torch.Tensor) -> torch.Tensor:
        if cfg.tile:
            return tiled_forward(net, lq, scale=scale, tile=int(cfg.tile), overlap=int(cfg.tile_overlap))
        return net(lq)

    return (lambda lq: self_ensemble(run, lq)) if cfg.self_ensemble else run


def _set_name(hr_dir: Path, taken: dict[str, Any]) -> str:
    name = hr_dir.parent.name if hr_dir.name.upper() in ("HR", "GT", "GTMOD12") else hr_dir.name
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


@torch.no_grad()
def score_dataset(
    sr_fn: SRFunction, dataset: Iterable[dict[str, Any]], crop_border: int, device: torch.device | None = None
) -> dict[str, Any]:
    """Mean per-image PSNR_y / SSIM_y of ``sr_fn`` over full-image items ``{"lq", "gt"}`` (SR clamped)."""
    psnr, ssim = [], []
    for item in dataset:
        gt = item["gt"][None].to(device)
        sr = sr_fn(item["lq"][None].to(device)).clamp(0, 1)
        psnr.append(psnr_y(sr, gt, crop_border).item())
        ssim.append(ssim_y(sr, gt, crop_border).item())
    return {"psnr_y": sum(psnr) / len(psnr), "ssim_y": sum(ssim) / len(ssim), "n_images": len(psnr)}


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on every folder of ``cfg.hr_dirs``; write ``cfg.output_json`` when set; return the results."""
    scale = int(cfg.scale)
    crop = scale if cfg.get("crop_border") is None else int(cfg.crop_border)
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    sr_fn = build_sr_function(cfg, device)
    results: dict[str, Any] = {}
    for hr_dir in [Path(d) for d in cfg.hr_dirs]:
        dataset = ImageFolderSR(hr_dir, scale, lr_dir=None, train=False)
        results[_set_name(hr_dir, results)] = score_dataset(sr_fn, dataset, crop, device)
    results["protocol"] = protocol(scale, crop, bool(cfg.self_ensemble))
    results["checkpoint"] = str(cfg.ckpt_path)
    if cfg.get("output_json"):
        Path(cfg.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_json).write_text(json.dumps(results, indent=2))
    print(format_table(results))
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
    log.info("eval config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
