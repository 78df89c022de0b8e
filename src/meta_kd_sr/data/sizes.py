"""Image sizes checked when a dataset is built: HR/LR agreement, the training patch, MATLAB bicubic's minimum.

A folder of 800 DIV2K images is checked from the image headers in a second, instead of failing hours into a
run when the one image that is too small is first drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meta_kd_sr.data.imresize import min_resizable

# At most this many offending images are listed in one message.
MAX_LISTED = 20


@dataclass(frozen=True)
class ImageSize:
    """The stored sizes of one image pair.

    Attributes:
        name: what the user is shown: the HR file, or the image name when there is no file.
        hr: (H, W) of the HR image as stored (before it is cropped to a multiple of the scale).
        lr_file: the LR file on disk; ``None`` when the LR is generated from the HR image.
        lr: (h, w) of ``lr_file``.
    """

    name: str
    hr: tuple[int, int]
    lr_file: Path | None = None
    lr: tuple[int, int] | None = None


def min_lr_side(scale: int, lq_patch: int | None, generated: bool) -> int:
    """The smallest LR side an image may have.

    Args:
        scale: SR factor.
        lq_patch: LR patch side in training; ``None`` in evaluation, where the LR is upscaled by MATLAB
            bicubic for the bicubic baseline.
        generated: the LR is made from the HR image by MATLAB bicubic downscaling.

    Returns:
        The minimum LR side in pixels (the HR side is ``scale`` times it).
    """
    needs = [1 if lq_patch is None else lq_patch]
    if generated:
        needs.append(min_resizable(1.0 / scale, scale) // scale)
    if lq_patch is None:
        needs.append(min_resizable(float(scale)))
    return max(needs)


def check_image_sizes(sizes: list[ImageSize], scale: int, lq_patch: int | None) -> None:
    """Raise one ``ValueError`` listing every image that cannot be used, with its sizes and what it needs.

    An LR file must be exactly the HR size (cropped to a multiple of ``scale``) divided by ``scale``; every
    LR side must reach :func:`min_lr_side` (the training patch, and the sizes MATLAB bicubic resizing needs).

    Args:
        sizes: the stored sizes of every image pair of a dataset.
        scale: SR factor.
        lq_patch: LR patch side in training; ``None`` for full-image evaluation.
    """
    problems = [p for size in sizes if (p := _problem(size, scale, lq_patch))]
    kind = "training" if lq_patch is not None else "evaluation"
    _raise(problems, len(sizes), f"{kind} images", _requirement(scale, lq_patch))


def check_downscalable(sizes: list[ImageSize], scale: int) -> None:
    """Raise one ``ValueError`` listing the HR images too small for MATLAB bicubic downscaling by ``scale``.

    Args:
        sizes: the stored HR sizes of the images.
        scale: SR factor.
    """
    need = min_lr_side(scale, 1, generated=True)
    problems = [_too_small(size, scale, need) for size in sizes if min(size.hr) // scale < need]
    requirement = f"MATLAB bicubic downscaling needs HR sides of at least {need * scale}"
    _raise(problems, len(sizes), "HR images", requirement)


def _raise(problems: list[str], total: int, what: str, requirement: str) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        shown.append(f"... and {len(problems) - MAX_LISTED} more")
    raise ValueError(
        f"{len(problems)} of {total} {what} cannot be used ({requirement}); remove or replace them:\n  "
        + "\n  ".join(shown)
    )


def _problem(size: ImageSize, scale: int, lq_patch: int | None) -> str | None:
    (hr_h, hr_w), s = size.hr, scale
    expected = (hr_h // s, hr_w // s)
    if size.lr is not None and tuple(size.lr) != expected:
        h, w = size.lr
        return (
            f"{size.lr_file}: HR/LR size mismatch: LR is {h}x{w} but HR {size.name} is {hr_h}x{hr_w}, "
            f"which needs LR {expected[0]}x{expected[1]} at x{s}"
        )
    need = min_lr_side(s, lq_patch, generated=size.lr is None)
    return None if min(expected) >= need else _too_small(size, s, need)


def _too_small(size: ImageSize, scale: int, need: int) -> str:
    (hr_h, hr_w), s = size.hr, scale
    return (
        f"{size.name}: HR {hr_h}x{hr_w} (LR {hr_h // s}x{hr_w // s}) is smaller than "
        f"HR {need * s}x{need * s} (LR {need}x{need})"
    )


def _requirement(scale: int, lq_patch: int | None) -> str:
    down = min_resizable(1.0 / scale, scale)
    if lq_patch is None:
        need = min_lr_side(scale, None, generated=False)
        return (
            f"x{scale} evaluation needs HR images of at least {need * scale}x{need * scale} "
            f"(LR {need}x{need}): MATLAB bicubic upscales the LR for the bicubic baseline, and makes a "
            f"missing LR from HR sides >= {down}"
        )
    hr = lq_patch * scale
    return (
        f"the x{scale} training patch is HR {hr}x{hr} = LR {lq_patch}x{lq_patch}; MATLAB bicubic makes "
        f"a missing LR from HR sides >= {down}"
    )
