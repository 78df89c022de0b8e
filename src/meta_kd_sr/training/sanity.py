"""The check at the end of a run: a network that scores below bicubic upscaling has not learnt to upscale.

A run that diverges but stays finite (``optim.optimizer.lr=1``: a 6 dB student, loss 9e16) exits normally;
:func:`below_bicubic` gives the warning that ``train`` logs and writes into ``eval.json`` (``warnings``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from meta_kd_sr.evaluation.inference import upscale_bicubic
from meta_kd_sr.evaluation.metrics import psnr_y


@torch.no_grad()
def bicubic_psnr(dataset: Iterable[Mapping[str, Any]], scale: int, crop_border: int) -> tuple[float, int]:
    """Mean per-image PSNR_y of MATLAB bicubic over full-image items ``{"lq", "gt"}``, and the image count."""
    scores = [
        psnr_y(upscale_bicubic(item["lq"][None], scale).clamp(0, 1), item["gt"][None], crop_border).item()
        for item in dataset
    ]
    if not scores:
        raise ValueError("bicubic_psnr: the validation set has no images")
    return sum(scores) / len(scores), len(scores)


def below_bicubic(val_psnr: float | None, bicubic: float) -> str | None:
    """The warning for a final validation PSNR_y below bicubic's (``None`` when it is not below)."""
    if val_psnr is None or val_psnr >= bicubic:
        return None
    return (
        f"the final validation PSNR_y {val_psnr:.2f} dB is below bicubic's {bicubic:.2f} dB: the network has "
        "not learnt to upscale (a diverged run, e.g. too high optim.optimizer.lr, or far too few iterations)"
    )
