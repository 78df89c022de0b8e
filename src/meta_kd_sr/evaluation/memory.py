"""Memory planning for upscaling large images: estimate before allocating, tile or refuse past a budget.

An untiled forward of a x4 network on a 5000 x 5000 image peaked at 19 GB; a 9000 x 9000 one was killed.
:func:`plan_upscale` estimates, from the image header alone, what an image needs: the decoded input and
the uint8 output with its PNG encoding (fixed), plus the network's activations (per HR pixel of a tile,
measured at about ``8 * width + 90`` bytes for EDSR; :data:`BYTES_PER_HR_PIXEL` keeps a margin). When the
whole image does not fit in the budget it picks the largest tile that does; when even the output does not
fit it refuses. :func:`tiled_uint8` then runs tile by tile into a uint8 output, never a float one.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch
from torch import nn

from meta_kd_sr.data.io import to_uint8
from meta_kd_sr.evaluation.inference import ModelFn, _windows

GB = 10**9
AUTO_FRACTION = 0.7  # memory_budget=auto: this share of the memory the process can still get
# bytes per pixel: input (uint8 + float32 per LR pixel); output (uint8, its HWC copy and PIL's RGBX image)
INPUT_BYTES, OUTPUT_BYTES = 15, 13
# activations per HR pixel of a tile: 10 * width + 128 (a margin over the 8 * width + 90 measured for EDSR)
# plus the float32 SR tile; bicubic counts as width 4
BYTES_PER_HR_PIXEL = (10, 128 + 12)


@dataclass(frozen=True)
class Plan:
    """How one image is upscaled: ``tile`` (``None``: whole), the estimated peak bytes, and ``stream``.

    ``stream``: tile by tile straight into a uint8 output (:func:`tiled_uint8`, the self-ensemble inside each
    tile); otherwise the float output of :func:`~meta_kd_sr.evaluation.inference.sr_function`
    (ensemble outside tiles).
    """

    tile: int | None
    bytes: int
    whole_bytes: int
    stream: bool = False


def parse_budget(value: object) -> int | None:
    """``memory_budget=`` in bytes: ``auto`` is ``None``; a number of GB (``8``), or ``512MB``, ``8GB``."""
    if value is None or str(value).lower() == "auto":
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GB|MB)?\s*", str(value), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"memory_budget={value!r}: expected auto, a number of GB (8) or a size (512MB, 8GB)")
    unit = 10**6 if (match[2] or "GB").upper() == "MB" else GB
    return int(float(match[1]) * unit)


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_left() -> int | None:
    """What ``RLIMIT_AS`` still allows this process (``None``: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        used = int(re.search(r"VmSize:\s+(\d+) kB", status)[1]) * 1024  # pyright: ignore[reportOptionalSubscript]
    except (OSError, TypeError):
        used = 0
    return max(soft - used, 0)


def memory_available() -> int:
    """The memory this process can still get: available RAM, or what ``RLIMIT_AS`` leaves if less."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [_meminfo("MemAvailable") or pages, _address_space_left()]
    return min(v for v in limits if v is not None)


def network_width(net: nn.Module | None) -> int:
    """The channels the network carries at HR resolution (input of its last 3-channel conv); 4 for bicubic."""
    if net is None:
        return 4
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    last = [m for m in convs if m.out_channels == 3]
    return last[-1].in_channels if last else max((m.out_channels for m in convs), default=64)


def _working(hr_pixels: int, width: int, ensemble: bool) -> int:
    per_pixel = BYTES_PER_HR_PIXEL[0] * width + BYTES_PER_HR_PIXEL[1]
    return hr_pixels * per_pixel * (2 if ensemble else 1)


def plan_upscale(
    size: tuple[int, int], scale: int, width: int, budget: int, tile: int | None, overlap: int, ensemble: bool
) -> Plan:
    """Whole image, a given tile, or the largest tile within ``budget`` bytes; ``ValueError`` if none fits.

    Args:
        size: LR (height, width) from the image header.
        scale: upscaling factor.
        width: :func:`network_width` of the network.
        budget: bytes the upscale may use.
        tile: the user's ``tile=`` (kept as given), or ``None`` to choose.
        overlap: LR context pixels around each tile.
        ensemble: the x8 self-ensemble (twice the working memory).
    """
    h, w = size
    fixed = INPUT_BYTES * h * w + OUTPUT_BYTES * h * w * scale**2
    whole = fixed + _working(h * w * scale**2, width, ensemble)
    if tile is None and whole <= budget:
        return Plan(None, whole, whole)
    float_output = 4 * 3 * h * w * scale**2 * (2 if ensemble else 1)
    if (
        tile is not None
        and fixed + float_output + _working(tile * tile * scale**2, width, ensemble) <= budget
    ):
        return Plan(tile, fixed + float_output + _working(tile * tile * scale**2, width, ensemble), whole)
    sides = [tile] if tile else [int(max(h, w) * 0.8**i) for i in range(40)]
    sides = [s for s in sides if s > 2 * overlap] or [2 * overlap + 1]
    for side in sides:
        need = fixed + _working(min(side, h) * min(side, w) * scale**2, width, ensemble)
        if need <= budget:
            return Plan(side, need, whole, stream=True)
    what = f"with tile={tile}" if tile else "even tiled"
    raise ValueError(
        f"a {w}x{h} image upscaled x{scale} ({w * scale}x{h * scale}) needs at least {need / GB:.1f} GB "
        f"{what}, over the memory budget of {budget / GB:.1f} GB: upscale a smaller image or a crop, "
        "or raise memory_budget= if the machine has the memory"
    )


@torch.no_grad()
def tiled_uint8(model_fn: ModelFn, lq: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """:func:`meta_kd_sr.evaluation.inference.tiled_forward` of one image into a uint8 (3, H, W) output.

    The stitched result equals ``to_uint8(tiled_forward(...).clamp(0, 1)[0])``, without a float HR buffer.
    """
    height, width = lq.shape[-2:]
    out = torch.empty(3, height * scale, width * scale, dtype=torch.uint8)
    for (y0, y1, ky0, ky1), (x0, x1, kx0, kx1) in product(
        _windows(height, tile, overlap), _windows(width, tile, overlap)
    ):
        sr = model_fn(lq[..., y0:y1, x0:x1])[0]
        kept = sr[:, (ky0 - y0) * scale : (ky1 - y0) * scale, (kx0 - x0) * scale : (kx1 - x0) * scale]
        out[:, ky0 * scale : ky1 * scale, kx0 * scale : kx1 * scale] = to_uint8(kept.clamp(0, 1)).cpu()
    return out
