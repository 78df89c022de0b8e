"""Validation panels: what the student makes of one fixed crop, and the kernels the KRNets make for it.

At each validation during fit, for a centre crop of the first validation image(s):

- ``val/panels``: one row LQ (nearest) | bicubic | SR (student) | teacher | GT, all at HR size, 2 px white
  gaps between them (the teacher column only when there is a teacher);
- ``val/kernels`` (KRNet runs): the texture kernels the KRNets make for that crop, one row per distilled
  position, one cell per kernel, blue (< 0) - white (0) - red (> 0), scaled by the largest magnitude.

Images go to W&B (``log_image``) and TensorBoard (``add_image``) loggers; other loggers (CSV) get none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from meta_kd_sr.data.io import to_uint8
from meta_kd_sr.evaluation.inference import upscale_bicubic

Features = dict[str, Tensor]

GAP = 2  # white pixels between the columns of a panel
PANEL_COLUMNS = ("LQ", "bicubic", "SR", "teacher", "GT")


def centre_crop(lq: Tensor, gt: Tensor, size: int, scale: int) -> tuple[Tensor, Tensor]:
    """The centre ``size`` x ``size`` LR crop of ``lq`` (smaller if the image is) and its HR twin in ``gt``.

    Args:
        lq: (3, h, w) LR image.
        gt: (3, scale*h, scale*w) its HR image.
        size: side of the LR crop.
        scale: SR factor.
    """
    h, w = lq.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    lq_crop = lq[..., top : top + ch, left : left + cw]
    gt_crop = gt[..., scale * top : scale * (top + ch), scale * left : scale * (left + cw)]
    return lq_crop, gt_crop


def hstack(images: Sequence[Tensor], gap: int = GAP) -> Tensor:
    """(3, H, W_i) images side by side with ``gap`` white columns between them."""
    white = torch.ones(3, images[0].shape[-2], gap, dtype=images[0].dtype)
    parts = [images[0]]
    for image in images[1:]:
        parts += [white, image]
    return torch.cat(parts, dim=-1)


def diverging(values: Tensor) -> Tensor:
    """(...) values in [-1, 1] -> (3, ...) RGB: blue for negative, white for 0, red for positive."""
    pos, neg = values.clamp(min=0), (-values).clamp(min=0)
    return torch.stack([1 - neg, 1 - pos - neg, 1 - pos]).clamp(0, 1)


def kernel_grid(kernels: Mapping[str, Tensor], cell: int = 8, gap: int = 3) -> Tensor:
    """The kernels of each position as one row of ``cell``-times enlarged k x k squares.

    Args:
        kernels: ``{position: (N, k, k)}``.
        cell: pixels per kernel tap.
        gap: white pixels between cells and rows.

    Returns:
        (3, P*(k*cell+gap)-gap, N*(k*cell+gap)-gap) in [0, 1]: ``diverging(kernel / max |kernel|)``.
    """
    peak = max(float(k.abs().max()) for k in kernels.values()) or 1.0
    rows = []
    for k in kernels.values():
        cells = [
            diverging(kernel / peak).repeat_interleave(cell, -1).repeat_interleave(cell, -2) for kernel in k
        ]
        rows.append(hstack(cells, gap))
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    return torch.cat([torch.cat([r, torch.ones(3, gap, width)], -2) for r in rows], -2)[:, :-gap]


def to_hwc_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, quantised as a saved PNG (``data.io.to_uint8``)."""
    return to_uint8(image.detach().float()).permute(1, 2, 0).cpu().numpy()


def log_images(
    loggers: Sequence[Logger],
    key: str,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    captions: Sequence[str],
    step: int,
) -> None:
    """(H, W, 3) uint8 images to W&B (one list under ``key``) and TensorBoard (``key/name`` each)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, list(images), step=step, caption=list(captions))
        elif isinstance(logger, TensorBoardLogger):
            for name, image in zip(names, images):
                logger.experiment.add_image(f"{key}/{name}", image, step, dataformats="HWC")


def has_krnets(pl_module: Any) -> bool:
    """Whether the module distils through KD losses that make kernels (KRNets), from a teacher."""
    distiller = getattr(pl_module, "distiller", None)
    if distiller is None or getattr(pl_module, "teacher", None) is None:
        return False
    return any(callable(getattr(m, "kernels", None)) for m in distiller.kd_losses.values())


def krnet_kernels(
    pl_module: Any, lq: Tensor, feats: tuple[Features, Features | None] | None = None
) -> dict[str, Tensor]:
    """``{position: (N, k, k)}`` kernels the KRNets make for ``lq`` (1, 3, h, w); ``{}`` without KRNets.

    ``feats``: the student's and teacher's features of ``lq`` when already computed. Per-pixel kernels are
    shown at the crop's centre pixel.
    """
    if not has_krnets(pl_module):
        return {}
    if feats is None:
        feats = pl_module.student(lq, return_feats=True)[1], pl_module.teacher(lq, return_feats=True)[1]
    feats_s, feats_t = feats
    distiller = pl_module.distiller
    out = {}
    for pos, k in distiller.kernels(feats_s, feats_t).items():
        if k.dim() == 6:  # (B, N, H, W, k, k): the centre pixel's kernels
            k = k[:, :, k.shape[2] // 2, k.shape[3] // 2]
        out[pos] = k[0].float().cpu()
    return out


class ValidationPanels(pl.Callback):
    """Log LQ | bicubic | SR | teacher | GT crops and the KRNets' kernels at each validation during fit.

    Args:
        crop: LR side of the centre crop (at x4, 32 gives 128 px high panels).
        n_images: how many of the first validation images to show.
        kernels: also log the KRNets' kernels (KRNet runs only).
        kernel_cell: pixels per kernel tap in the kernel grid.
    """

    def __init__(self, crop: int = 32, n_images: int = 1, kernels: bool = True, kernel_cell: int = 8) -> None:
        if crop < 1 or n_images < 1 or kernel_cell < 1:
            raise ValueError(
                f"crop, n_images and kernel_cell must be >= 1, got {crop}, {n_images}, {kernel_cell}"
            )
        self.crop, self.n_images, self.kernels, self.kernel_cell = crop, n_images, kernels, kernel_cell
        self._crops: list[tuple[str, Tensor, Tensor]] | None = None

    def fixed_crops(self, trainer: pl.Trainer, scale: int) -> list[tuple[str, Tensor, Tensor]]:
        """``[(name, lq (3, c, c), gt (3, s*c, s*c))]`` of the first validation images, read once."""
        if self._crops is None:
            loader = trainer.val_dataloaders
            dataset = getattr(
                loader[0] if isinstance(loader, (list, tuple)) and loader else loader, "dataset", None
            )
            self._crops = []
            dataset = [] if dataset is None else dataset
            for i in range(min(self.n_images, len(dataset))):
                item = dataset[i]
                lq, gt = centre_crop(item["lq"], item["gt"], self.crop, scale)
                self._crops.append((str(item.get("name", i)), lq.float(), gt.float()))
        return self._crops

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Render and log the panels (rank 0, during fit, not in the sanity check)."""
        sinks = [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if not (sinks and fitting and trainer.is_global_zero):
            return
        module: Any = pl_module  # an SRModule (evaluation does not import training)
        crops = self.fixed_crops(trainer, int(module.scale))
        if not crops:
            return
        panels, grids = self.render(pl_module, trainer.precision_plugin, crops)
        names, step = [name for name, _, _ in crops], trainer.global_step
        columns = " | ".join(c for c in PANEL_COLUMNS if c != "teacher" or module.teacher is not None)
        log_images(sinks, "val/panels", panels, names, [f"{n}: {columns}" for n in names], step)
        if grids:
            rows = ", ".join(module.distiller.positions)
            captions = [f"{n}: rows {rows}; blue < 0 < red" for n in names]
            log_images(sinks, "val/kernels", grids, names, captions, step)

    def render(
        self, pl_module: Any, precision: Any, crops: Sequence[tuple[str, Tensor, Tensor]]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The panels and (KRNet runs) kernel grids of ``crops``, as (H, W, 3) uint8 images."""
        panels, grids = [], []
        teacher, scale = pl_module.teacher, int(pl_module.scale)
        with torch.no_grad(), precision.forward_context():
            for _, lq, gt in crops:
                batch = precision.convert_input(lq[None].to(pl_module.device))
                sr_s, feats_s = pl_module.student(
                    batch, return_feats=True
                )  # one forward for panel and kernels
                sr_t, feats_t = teacher(batch, return_feats=True) if teacher is not None else (None, None)
                panels.append(
                    to_hwc_uint8(self.panel(lq, gt, scale, sr_s[0], None if sr_t is None else sr_t[0]))
                )
                show = self.kernels and has_krnets(pl_module)
                kernels = krnet_kernels(pl_module, batch, (feats_s, feats_t)) if show else {}
                if kernels:
                    grids.append(to_hwc_uint8(kernel_grid(kernels, self.kernel_cell)))
        return panels, grids

    @staticmethod
    def panel(lq: Tensor, gt: Tensor, scale: int, sr: Tensor, sr_teacher: Tensor | None) -> Tensor:
        """(3, H, W) LQ (nearest) | bicubic | SR | teacher | GT of a crop (the teacher column when given)."""
        columns = [lq.repeat_interleave(scale, -1).repeat_interleave(scale, -2), upscale_bicubic(lq, scale)]
        columns.append(sr.float().cpu())
        if sr_teacher is not None:
            columns.append(sr_teacher.float().cpu())
        columns.append(gt)
        return hstack([c.clamp(0, 1) for c in columns])
