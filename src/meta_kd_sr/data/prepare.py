"""Offline generation of MATLAB-bicubic LR folders from HR folders."""

from __future__ import annotations

from pathlib import Path

from meta_kd_sr.data.io import list_images, read_image, save_png
from meta_kd_sr.data.transforms import bicubic_downscale, check_scale, crop_to_multiple


def generate_lr_folder(
    hr_dir: str | Path, lr_dir: str | Path, scale: int, name_format: str = "{stem}x{scale}.png"
) -> list[Path]:
    """Write the LR image of every HR image of ``hr_dir`` into ``lr_dir``, skipping existing files.

    Each HR image is cropped to a multiple of ``scale``, downscaled as MATLAB's ``imresize`` does on uint8
    images (:func:`~meta_kd_sr.data.transforms.bicubic_downscale`), then saved as PNG atomically, so an
    interrupted run can simply be restarted.

    Args:
        hr_dir: folder of HR images (PNG, BMP, JPEG, TIFF).
        lr_dir: destination folder (created); must differ from ``hr_dir``.
        scale: 2, 3 or 4.
        name_format: LR file name, formatted with ``stem`` (HR file name without extension) and ``scale``;
            the default gives the DIV2K naming ``0001x4.png``.

    Returns:
        The LR file of every HR image, in sorted HR order (existing files are listed, not rewritten).
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
    targets = []
    for hr_file in files:
        target = lr_dir / name_format.format(stem=hr_file.stem, scale=scale)
        if not target.is_file():
            gt = crop_to_multiple(read_image(hr_file), scale).contiguous()
            save_png(bicubic_downscale(gt, scale), target)
        targets.append(target)
    return targets
