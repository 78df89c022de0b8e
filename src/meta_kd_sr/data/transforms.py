"""Pure transforms on (lq, gt) image pairs; every random choice comes from an explicit ``torch.Generator``."""

from __future__ import annotations

import torch

from meta_kd_sr.data.imresize import imresize_uint8

SUPPORTED_SCALES = (2, 3, 4)


def check_scale(scale: int) -> int:
    """Return ``scale`` if it is a supported SR factor (2, 3 or 4), else raise ``ValueError`` naming it."""
    if isinstance(scale, bool) or scale not in SUPPORTED_SCALES:
        raise ValueError(f"unsupported scale {scale!r}: supported scales are {SUPPORTED_SCALES}")
    return int(scale)


def check_pair_sizes(lq: torch.Tensor, gt: torch.Tensor, scale: int, name: str = "image") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``gt`` is exactly ``lq`` upscaled by ``scale`` in size.

    Args:
        lq: (C, h, w) tensor.
        gt: (C, h * scale, w * scale) tensor.
        scale: SR factor.
        name: image name or file used in the message.
    """
    if lq.dim() != 3 or gt.dim() != 3:
        raise ValueError(
            f"{name}: expected (C, H, W) images, got lq {tuple(lq.shape)} and gt {tuple(gt.shape)}"
        )
    (c, h, w), (gc, gh, gw) = lq.shape, gt.shape
    if c != gc or (gh, gw) != (h * scale, w * scale):
        raise ValueError(
            f"{name}: HR/LR size mismatch: gt is {gc}x{gh}x{gw} but lq {c}x{h}x{w} x{scale} "
            f"needs gt {c}x{h * scale}x{w * scale}"
        )


def crop_to_multiple(gt: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right border so that height and width are multiples of ``scale`` (the SR protocol).

    Args:
        gt: (..., H, W) tensor.
        scale: SR factor.

    Returns:
        (..., H - H % scale, W - W % scale) view of ``gt``.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = gt.shape[-2:]
    return gt[..., : h - h % scale, : w - w % scale]


def bicubic_downscale(gt: torch.Tensor, scale: int) -> torch.Tensor:
    """Make the LR image of an HR image as MATLAB ``imresize(gt, 1 / scale, 'bicubic')`` does on uint8.

    MATLAB keeps the uint8 class between its two one-dimensional passes (rounded half up and saturated after
    each), which is how DIV2K's official LR images were made; the result is what a saved LR PNG holds, so an
    LR generated in memory equals one read back from disk.

    Args:
        gt: (3, H, W) uint8 tensor, H and W multiples of ``scale``.
        scale: SR factor.

    Returns:
        (3, H / scale, W / scale) uint8 tensor.
    """
    if gt.dtype != torch.uint8 or gt.dim() != 3:
        raise ValueError(
            f"bicubic_downscale expects a (3, H, W) uint8 tensor, got {gt.dtype} {tuple(gt.shape)}"
        )
    h, w = gt.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}: crop_to_multiple first")
    return imresize_uint8(gt, 1.0 / scale)


def check_patch_fits(
    lq_height: int, lq_width: int, patch_size_lq: int, scale: int, name: str = "image"
) -> None:
    """Raise ``ValueError`` naming the sizes when an LR image is smaller than the LR patch."""
    if lq_height < patch_size_lq or lq_width < patch_size_lq:
        raise ValueError(
            f"{name}: image is smaller than the patch: lq {lq_height}x{lq_width} "
            f"(gt {lq_height * scale}x{lq_width * scale}) < patch {patch_size_lq}x{patch_size_lq} "
            f"(gt {patch_size_lq * scale}x{patch_size_lq * scale})"
        )


def random_crop_coords(
    lq_height: int, lq_width: int, patch_size_lq: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Draw the top-left corner of an LR patch uniformly (two draws from ``generator``: top, then left)."""
    top = int(torch.randint(0, lq_height - patch_size_lq + 1, (1,), generator=generator))
    left = int(torch.randint(0, lq_width - patch_size_lq + 1, (1,), generator=generator))
    return top, left


def random_crop_pair(
    lq: torch.Tensor,
    gt: torch.Tensor,
    patch_size_lq: int,
    scale: int,
    generator: torch.Generator | None = None,
    name: str = "image",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop aligned patches: the gt patch covers exactly the lq patch (coordinates x ``scale``).

    Args:
        lq: (C, h, w) tensor.
        gt: (C, h * scale, w * scale) tensor.
        patch_size_lq: LR patch side; the gt patch side is ``patch_size_lq * scale``.
        scale: SR factor.
        generator: source of the crop position.
        name: image name used in error messages.

    Returns:
        lq patch (C, p, p) and gt patch (C, p * scale, p * scale), views of the inputs.
    """
    if patch_size_lq < 1:
        raise ValueError(f"patch_size_lq must be >= 1, got {patch_size_lq}")
    check_pair_sizes(lq, gt, scale, name)
    h, w = lq.shape[-2:]
    check_patch_fits(h, w, patch_size_lq, scale, name)
    top, left = random_crop_coords(h, w, patch_size_lq, generator)
    p, gp = patch_size_lq, patch_size_lq * scale
    lq_patch = lq[:, top : top + p, left : left + p]
    gt_patch = gt[:, top * scale : top * scale + gp, left * scale : left * scale + gp]
    return lq_patch, gt_patch


def augment_pair(
    lq: torch.Tensor,
    gt: torch.Tensor,
    hflip: bool = True,
    vflip: bool = True,
    transpose: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the same random h-flip, v-flip and transpose (each with p = 0.5) to both images.

    Three coin flips are always drawn from ``generator`` (h-flip, v-flip, transpose) so that disabling an
    operation does not shift the random stream of the others.

    Args:
        lq: (C, h, w) tensor.
        gt: (C, H, W) tensor.
        hflip: allow a horizontal flip.
        vflip: allow a vertical flip.
        transpose: allow swapping height and width (with the flips this covers all 8 dihedral poses).
        generator: source of the coin flips.

    Returns:
        The transformed (lq, gt), contiguous.
    """
    coins = torch.rand(3, generator=generator) < 0.5
    for enabled, coin, op in zip((hflip, vflip, transpose), coins.tolist(), _OPS):
        if enabled and coin:
            lq, gt = op(lq), op(gt)
    return lq.contiguous(), gt.contiguous()


_OPS = (
    lambda x: x.flip(-1),
    lambda x: x.flip(-2),
    lambda x: x.transpose(-2, -1),
)
