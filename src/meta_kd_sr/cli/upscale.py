"""``meta-kd-sr-upscale``: super-resolve your own images with a trained network (or bicubic).

``meta-kd-sr-upscale ckpt_path=<student.pt | .ckpt | official file | bicubic> input=<file | folder>
output=<folder>`` writes ``<output>/<stem>_x<scale>.png`` for every image. Files that are not images, cannot
be decoded (corrupt, 16-bit, transparent) or whose output exists already are skipped with a reason; an input
file is never overwritten. Grayscale images are upscaled as gray replicated on RGB and written as gray.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.evaluate import load_network
from meta_kd_sr.data.io import IMAGE_EXTENSIONS, read_image, save_png, to_float, to_uint8
from meta_kd_sr.evaluation.inference import resolve_device, sr_function, tile_setting
from meta_kd_sr.evaluation.memory import (
    AUTO_FRACTION,
    GB,
    Plan,
    memory_available,
    network_width,
    parse_budget,
    plan_upscale,
    tiled_uint8,
)
from meta_kd_sr.runtime.atomic import atomic_path
from meta_kd_sr.runtime.console import format_outputs, one_line_errors

GRAY_MODES = ("1", "L", "LA", "La")
Jobs = list[tuple[Path, Path]]


def collect_inputs(source: Path, output_dir: Path) -> tuple[list[Path], dict[Path, str]]:
    """The image files of ``source`` (a file, or a folder's files by name) and the entries skipped, with why.

    The output folder is left out silently when it lies inside the input folder.
    """
    if source.is_file():
        entries = [source]
    elif source.is_dir():
        entries = sorted(source.iterdir(), key=lambda p: p.name)
    else:
        raise FileNotFoundError(f"input not found: {source}")
    files, skipped = [], {}
    for path in entries:
        if path.is_dir():
            if path.resolve() != output_dir.resolve():
                skipped[path] = "a folder (sub-folders are not read)"
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            kind = f"'{path.suffix}'" if path.suffix else "no extension"
            skipped[path] = f"not an image file ({kind}; reads {', '.join(IMAGE_EXTENSIONS)})"
        else:
            files.append(path)
    return files, skipped


def plan_outputs(
    files: list[Path], output_dir: Path, scale: int, overwrite: bool
) -> tuple[Jobs, dict[Path, str]]:
    """Pair each input with ``<output_dir>/<stem>_x<scale>.png``; skip clashes and existing outputs.

    Raises:
        ValueError: an output would replace one of the input files (nothing has been written then).
    """
    inputs = {f.resolve(): f for f in files}
    jobs: Jobs = []
    skipped: dict[Path, str] = {}
    taken: dict[Path, Path] = {}
    for src in files:
        dst = output_dir / f"{src.stem}_x{scale}.png"
        if dst.resolve() in inputs:
            raise ValueError(
                f"the output of {src} would overwrite the input image {inputs[dst.resolve()]}: choose an "
                "output= folder other than the input folder"
            )
        if dst in taken:
            skipped[src] = f"same output name {dst.name} as {taken[dst].name}"
        elif dst.exists() and not overwrite:
            skipped[src] = f"output {dst} exists (overwrite=true replaces it)"
        else:
            taken[dst] = src
            jobs.append((src, dst))
    return jobs, skipped


def read_input(path: Path) -> tuple[torch.Tensor, bool]:
    """An image as (3, H, W) uint8 RGB, turned upright by its EXIF orientation, and whether it is gray.

    Decoding follows :func:`meta_kd_sr.data.io.read_image` (8-bit only, opaque only, gray replicated).
    """
    image = read_image(path, upright=True)
    with Image.open(path) as im:  # the header only: the mode
        gray = im.mode in GRAY_MODES
    return image, gray


def write_output(sr: torch.Tensor, path: Path, gray: bool) -> Path:
    """Write (3, H, W) uint8 ``sr`` as an RGB PNG, or as a gray PNG (ITU-R 601-2 luma, PIL's ``L``)."""
    if not gray:
        return save_png(sr, path)
    rgb = Image.fromarray(np.ascontiguousarray(sr.permute(1, 2, 0).cpu().numpy()), mode="RGB")
    with atomic_path(path, durable=False) as tmp:
        rgb.convert("L").save(tmp, format="PNG")
    return path


def _network_and_scale(cfg: DictConfig, device: torch.device) -> tuple[nn.Module | None, int]:
    needs_scale = str(cfg.ckpt_path) == "bicubic" or bool(cfg.get("model"))
    if cfg.scale is None and needs_scale:
        what = "ckpt_path=bicubic" if str(cfg.ckpt_path) == "bicubic" else "model=<preset> (official weights)"
        raise ValueError(f"scale= is required with {what}, e.g. scale=4")
    net = load_network(cfg, device, None if cfg.scale is None else int(cfg.scale))
    scale = int(cfg.scale) if cfg.scale is not None else getattr(net, "scale", None)
    if scale is None:
        raise ValueError(f"the network of {cfg.ckpt_path} does not say its scale: pass scale=")
    return net, int(scale)


def upscale(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Upscale ``cfg.input`` into ``cfg.output`` (else ``output_dir``); print a summary; return what was done.

    Every image is planned from its header before any is read: an image whose whole upscale would pass
    ``cfg.memory_budget`` is tiled, one that cannot fit even tiled is refused (``ValueError``) before anything
    is allocated or written.

    Returns:
        ``{"output_dir", "scale", "written": {input: output}, "skipped": {input: reason}, "failed": [inputs
        that could not be decoded], "tiles": {input: tile}}`` (paths as strings).
    """
    out = Path(cfg.output) if cfg.get("output") else output_dir
    if out is None:
        raise ValueError("output= is required: the folder the upscaled images go to")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file: output= must be a folder")
    tile, overlap = tile_setting(cfg.get("tile"), cfg.get("tile_overlap", 16))
    files, skipped = collect_inputs(Path(cfg.input), out)
    device = resolve_device(str(cfg.device))
    net, scale = _network_and_scale(cfg, device)
    jobs, clashes = plan_outputs(files, out, scale, bool(cfg.get("overwrite", False)))
    plans = plan_jobs(jobs, cfg, net, scale, tile, overlap)
    run = upscaler(net, scale, overlap, bool(cfg.self_ensemble))
    written, failed = run_jobs(jobs, run, device, plans)
    skipped |= clashes | failed
    print(summary(written, skipped, out, scale), flush=True)
    return {
        "output_dir": str(out),
        "scale": scale,
        "written": {str(k): str(v) for k, v in written.items()},
        "skipped": {str(k): v for k, v in skipped.items()},
        "failed": [str(p) for p in failed],
        "tiles": {str(src): plans[src].tile for src in written if src in plans},
    }


def plan_jobs(
    jobs: Jobs, cfg: DictConfig, net: nn.Module | None, scale: int, tile: int | None, overlap: int
) -> dict[Path, Plan]:
    """The memory plan of each input (whole or tiled), from its header; refuse one that cannot fit.

    Raises:
        ValueError: an image needs more than the budget even tiled (nothing has been read or written).
    """
    budget = parse_budget(cfg.get("memory_budget", "auto"))
    budget = budget if budget is not None else int(AUTO_FRACTION * memory_available())
    width, plans = network_width(net), {}
    for src, _ in jobs:
        try:
            with Image.open(src) as im:
                w, h = im.size
        except Exception:  # undecodable: run_jobs reports it with the reader's reason
            continue
        try:
            plans[src] = plan_upscale((h, w), scale, width, budget, tile, overlap, bool(cfg.self_ensemble))
        except ValueError as err:
            raise ValueError(f"{src}: {err}") from None
        if plans[src].tile is not None and tile is None:
            print(
                f"{src}: tiled automatically (tile={plans[src].tile}): the whole image would need "
                f"~{plans[src].whole_bytes / GB:.1f} GB, over the memory budget of {budget / GB:.1f} GB",
                flush=True,
            )
    return plans


def upscaler(
    net: nn.Module | None, scale: int, overlap: int, ensemble: bool
) -> Callable[[torch.Tensor, Plan], torch.Tensor]:
    """``run(lq, plan)``: lq (1, 3, h, w) in [0, 1] -> sr (3, H, W) uint8, whole, tiled or streamed."""

    def run(lq: torch.Tensor, plan: Plan) -> torch.Tensor:
        if plan.stream:  # tile by tile into a uint8 output: no float HR buffer
            return tiled_uint8(
                sr_function(net, scale, None, overlap, ensemble), lq, scale, cast(int, plan.tile), overlap
            )
        return to_uint8(sr_function(net, scale, plan.tile, overlap, ensemble)(lq).clamp(0, 1)[0]).cpu()

    return run


@torch.no_grad()
def run_jobs(
    jobs: Jobs,
    run: Callable[[torch.Tensor, Plan], torch.Tensor],
    device: torch.device,
    plans: dict[Path, Plan],
) -> tuple[dict[Path, Path], dict[Path, str]]:
    """Read, upscale (clamped, uint8 levels) and write each ``(input, output)`` pair; one line per image.

    ``run`` is :func:`upscaler`'s; each input runs by its plan (whole image when it has none).

    Returns:
        ``{input: output}`` written and ``{input: reason}`` for the inputs that could not be decoded.
    """
    written, failed = {}, {}
    for src, dst in jobs:
        try:
            image, gray = read_input(src)
        except (ValueError, FileNotFoundError) as err:
            failed[src] = str(err)
            continue
        sr = run(to_float(image)[None].to(device), plans.get(src, Plan(None, 0, 0)))
        written[src] = write_output(sr, dst, gray)
        sizes = f"{image.shape[2]}x{image.shape[1]} -> {sr.shape[2]}x{sr.shape[1]}"
        print(f"{src} -> {dst} ({sizes}{', gray' if gray else ''})", flush=True)
    return written, failed


def summary(written: dict[Path, Path], skipped: dict[Path, str], output_dir: Path, scale: int) -> str:
    """The closing report: counts, every skipped file with its reason, where the images are."""
    lines = [f"upscaled {len(written)} image(s) x{scale}; skipped {len(skipped)}"]
    lines += [f"  skipped {path}: {reason}" for path, reason in sorted(skipped.items())]
    lines.append(format_outputs([("images", output_dir.resolve())]))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="upscale")
def main(cfg: DictConfig) -> None:
    """Console entry point (``meta-kd-sr-upscale``); exit status 1 when an image could not be decoded."""
    with one_line_errors("meta-kd-sr-upscale"):  # a setting, file or disk to fix: one line, exit status 2
        result = upscale(cfg, Path(HydraConfig.get().runtime.output_dir))
    if result["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
