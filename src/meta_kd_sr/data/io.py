"""Image files: strict 8-bit RGB decoding, atomic PNG/NPY writes, uint8 <-> float conversion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageOps

from meta_kd_sr.runtime.atomic import atomic_path

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_TO_RGB_MODES = ("RGB", "L", "1", "CMYK", "YCbCr")


def read_image(path: str | os.PathLike, upright: bool = False) -> torch.Tensor:
    """Decode an 8-bit image file into an RGB uint8 tensor.

    Policy (the SR protocol is defined on 8-bit RGB):

    - missing file: ``FileNotFoundError`` naming the path;
    - corrupt or truncated file: ``ValueError`` naming the path (pixels are decoded eagerly, truncated
      files are never padded);
    - grayscale (``L``, ``1``) and palette (``P``) images: converted to RGB (gray replicated on 3 channels);
    - images with alpha (``RGBA``, ``LA``, palette transparency): converted to RGB when the alpha channel is
      fully opaque, otherwise ``ValueError`` ("has transparency");
    - 16-bit or float images (``I;16``, ``I``, ``F``, 48/64-bit PNG): ``ValueError``, only 8-bit images are
      supported.

    Args:
        path: image file (any format PIL decodes: PNG, BMP, JPEG, TIFF, ...).
        upright: turn the pixels by the file's EXIF orientation (``PIL.ImageOps.exif_transpose``), as image
            viewers show them; ``False`` (datasets) keeps them as stored.

    Returns:
        (3, H, W) uint8 tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            _check_8bit(im, path)
            im.load()
            if upright:
                im = ImageOps.exif_transpose(im)
            im = _to_rgb(im, path)
            array = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: corrupt or truncated file ({err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Height and width of an image file, read from its header (the pixels are not decoded).

    Args:
        path: image file.

    Returns:
        ``(H, W)``, the size :func:`read_image` decodes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: corrupt or truncated file ({err})") from err
    return height, width


def _check_8bit(im: Image.Image, path: Path) -> None:
    # PIL silently truncates 48/64-bit PNGs to 8-bit RGB(A); their raw mode still says ";16".
    tiles = getattr(im, "tile", None) or []  # the decoder tiles of a file not yet loaded (not in PIL's stubs)
    raw_modes = " ".join(str(tile[3]) for tile in tiles if len(tile) > 3)
    if im.mode.startswith(("I", "F")) or ";16" in raw_modes:
        raise ValueError(
            f"{path}: only 8-bit images are supported (got mode {im.mode} {raw_modes}); "
            "the SR protocol is defined on 8-bit images"
        )


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in _ALPHA_MODES:
        im = im.convert("RGBA")
        alpha_min = cast(int, im.getchannel("A").getextrema()[0])  # one band: (min, max)
        if alpha_min < 255:
            raise ValueError(f"{path} has transparency (alpha < 255); only opaque images are supported")
    if im.mode not in _TO_RGB_MODES and im.mode != "RGBA":
        raise ValueError(f"{path}: unsupported image mode {im.mode}")
    return im.convert("RGB")


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 tensor as PNG, atomically (temporary file + ``os.replace``).

    Readers in other processes never see a half-written file. Parent folders are created.

    Args:
        image: (3, H, W) uint8 tensor.
        path: destination file.

    Returns:
        The destination path.
    """
    if not torch.is_tensor(image) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"save_png expects a (3, H, W) uint8 tensor, got {_describe(image)}")
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(array, mode="RGB").save(tmp, format="PNG")
    return Path(path)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a numpy array as ``.npy``, atomically (temporary file + ``os.replace``)."""
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    return Path(path)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, case-insensitive) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.name)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """Map uint8 levels to float32 in [0, 1].

    Args:
        image: uint8 tensor of any shape, e.g. (3, H, W).

    Returns:
        float32 tensor of the same shape, ``image / 255``.
    """
    if not torch.is_tensor(image) or image.dtype != torch.uint8:
        raise ValueError(f"to_float expects a uint8 tensor, got {_describe(image)}")
    return image.float().div_(255.0)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Quantise a float image in [0, 1] to uint8 levels exactly as saving a PNG does.

    Values are scaled by 255, clamped to [0, 255] and rounded half up (MATLAB's ``im2uint8``).

    Args:
        image: float tensor of any shape, nominally in [0, 1].

    Returns:
        uint8 tensor of the same shape.
    """
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ValueError(f"to_uint8 expects a float tensor, got {_describe(image)}")
    return (image * 255.0).clamp_(0.0, 255.0).add_(0.5).floor_().to(torch.uint8)


def _describe(x: object) -> str:
    if torch.is_tensor(x):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
