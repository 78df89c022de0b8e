"""Offline generation of MATLAB-bicubic LR folders from HR folders, resumable after an interruption."""

from __future__ import annotations

import logging
from pathlib import Path

from meta_kd_sr.data.datasets import lr_dir_for
from meta_kd_sr.data.io import (
    list_images,
    read_image,
    read_image_size,
    save_png,
)
from meta_kd_sr.data.sizes import ImageSize, check_downscalable
from meta_kd_sr.data.transforms import bicubic_downscale, check_scale, crop_to_multiple
from meta_kd_sr.runtime.atomic import remove_stale_temporaries

log = logging.getLogger(__name__)


def default_lr_dir(hr_dir: str | Path, scale: int) -> Path:
    """Where the LR images of ``hr_dir`` go by default: the folder the datasets read (:func:`lr_dir_for`).

    Args:
        hr_dir: HR folder, ``DIV2K_{train,valid}_HR`` or a set's ``HR`` folder.
        scale: 2, 3 or 4.

    Returns:
        ``DIV2K_*_LR_bicubic/X{scale}`` beside a DIV2K HR folder, ``<set>/LR_bicubic/X{scale}`` beside
        ``<set>/HR``.
    """
    lr_dir = lr_dir_for(hr_dir, scale)
    if lr_dir is None:
        raise ValueError(
            f"no default LR folder for {hr_dir}: the datasets read LR images beside DIV2K_train_HR / "
            "DIV2K_valid_HR (DIV2K_*_LR_bicubic/X{s}) or beside a set's HR folder (<set>/HR -> "
            "<set>/LR_bicubic/X{s}); put the images in <set>/HR/ or choose the output folder"
        )
    return lr_dir


def generate_lr_folder(
    hr_dir: str | Path, lr_dir: str | Path, scale: int, name_format: str = "{stem}x{scale}.png"
) -> list[Path]:
    """Write the LR image of every HR image of ``hr_dir`` into ``lr_dir``; finish an interrupted run.

    Each HR image is cropped to a multiple of ``scale``, downscaled as MATLAB's ``imresize`` does on uint8
    images (:func:`~meta_kd_sr.data.transforms.bicubic_downscale`), then written to a temporary file in
    ``lr_dir`` and renamed, so a killed run never leaves a half-written PNG under the final name. Running
    again keeps every LR PNG that decodes to the right size, rewrites the others (missing, truncated or of
    another size) and removes the temporary files that killed runs left. Every HR size is checked from the
    file headers before anything is written.

    Args:
        hr_dir: folder of HR images (PNG, BMP, JPEG, TIFF).
        lr_dir: destination folder (created); must differ from ``hr_dir``.
        scale: 2, 3 or 4.
        name_format: LR file name, formatted with ``stem`` (HR file name without extension) and ``scale``;
            the default gives the DIV2K naming ``0001x4.png``, which every reader accepts.

    Returns:
        The LR file of every HR image, in sorted HR order (finished files are listed, not rewritten).
    """
    scale = check_scale(scale)
    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"HR folder not found: {hr_dir}")
    if lr_dir.resolve() == hr_dir.resolve():
        raise ValueError(f"lr_dir must differ from the HR folder {hr_dir}")
    if not name_format.endswith(".png"):
        raise ValueError(f"name_format must produce .png files, got {name_format!r}")
    files = list_images(hr_dir)
    if not files:
        raise FileNotFoundError(f"no images in HR folder {hr_dir}")
    sizes = [ImageSize(str(f), read_image_size(f)) for f in files]
    check_downscalable(sizes, scale)
    for stale in remove_stale_temporaries(lr_dir):
        log.info("removed %s, left by an interrupted run", stale)
    targets = []
    for hr_file, size in zip(files, sizes):
        target = lr_dir / name_format.format(stem=hr_file.stem, scale=scale)
        if not _finished(target, (size.hr[0] // scale, size.hr[1] // scale)):
            gt = crop_to_multiple(read_image(hr_file), scale).contiguous()
            save_png(bicubic_downscale(gt, scale), target)
        targets.append(target)
    return targets


def _finished(target: Path, lr_size: tuple[int, int]) -> bool:
    """Whether ``target`` is a PNG that decodes completely to ``lr_size``."""
    if not target.is_file():
        return False
    try:
        image = read_image(target)
    except ValueError:
        log.info("rewriting %s: corrupt or truncated", target)
        return False
    if tuple(image.shape[1:]) != lr_size:
        log.info("rewriting %s: %s, expected %s", target, tuple(image.shape[1:]), lr_size)
        return False
    return True
