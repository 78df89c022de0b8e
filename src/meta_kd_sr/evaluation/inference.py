"""Inference helpers: x8 geometric self-ensemble, tiled forward, the bicubic baseline, a plain export module.

:func:`sr_function` puts them together into the ``lq -> sr`` function that ``meta-kd-sr-eval`` and
``meta-kd-sr-upscale`` run; :class:`SRForward` is the ``lq -> sr`` module that ``meta-kd-sr-export`` writes as
TorchScript and ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from typing import cast

import torch
from torch import Tensor, nn

from meta_kd_sr.data.imresize import imresize
from meta_kd_sr.models.blocks import SRNet

ModelFn = Callable[[Tensor], Tensor]


def _check_lq(name: str, lq: Tensor) -> None:
    if not hasattr(lq, "is_floating_point") or not lq.is_floating_point() or lq.dim() != 4:
        raise ValueError(
            f"{name} expects lq as a float (B, C, h, w) tensor, got "
            f"{getattr(lq, 'dtype', type(lq).__name__)} of shape {tuple(getattr(lq, 'shape', ()))}"
        )


def _check_positive_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _transform(x: Tensor, transpose: bool, vflip: bool, hflip: bool) -> Tensor:
    if transpose:
        x = x.transpose(-2, -1)
    if vflip:
        x = x.flip(-2)
    if hflip:
        x = x.flip(-1)
    return x


def _inverse(x: Tensor, transpose: bool, vflip: bool, hflip: bool) -> Tensor:
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if transpose:
        x = x.transpose(-2, -1)
    return x


def self_ensemble(model_fn: ModelFn, lq: Tensor) -> Tensor:
    """Geometric self-ensemble x8 (EDSR's "+"): the mean over the 8 flips/transposes, each mapped back.

    Each of the 8 combinations of transpose, vertical flip and horizontal flip is applied to ``lq``, the
    model is run, the output is mapped back, and the 8 results are averaged. Gradients are not disabled:
    call it under ``torch.no_grad()`` for evaluation.

    Args:
        model_fn: any callable lq (B, C, h, w) -> sr (B, C', h * s, w * s); it receives transposed
            (w x h) inputs too.
        lq: (B, C, h, w) float input.

    Returns:
        (B, C', h * s, w * s) the averaged SR output.
    """
    _check_lq("self_ensemble", lq)
    total = None
    for transpose, vflip, hflip in product((False, True), repeat=3):
        sr = _inverse(model_fn(_transform(lq, transpose, vflip, hflip)), transpose, vflip, hflip)
        if total is not None and sr.shape != total.shape:
            raise ValueError(
                f"self_ensemble: model_fn output maps back to shape {tuple(sr.shape)} for transform "
                f"(transpose={transpose}, vflip={vflip}, hflip={hflip}) "
                f"but {tuple(total.shape)} for the identity"
            )
        total = sr if total is None else total + sr
    return cast(Tensor, total) / 8  # eight transforms ran


def _windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, end) of the input window and (lo, hi) of the part kept, LR coords.

    Windows have size ``tile`` (the last one is shifted to end at ``length``); each keeps its centre, with
    ``overlap`` context pixels dropped on sides that are not an image border. The kept parts cover
    [0, length); where two overlap (only next to the last window) both hold the same values for a model
    whose receptive-field radius is at most ``overlap``.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    stride = tile - 2 * overlap
    starts = [*range(0, length - tile, stride), length - tile]
    return [
        (s, s + tile, s + overlap if s > 0 else 0, s + tile - overlap if s + tile < length else length)
        for s in starts
    ]


def tiled_forward(model_fn: ModelFn, lq: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """Run ``model_fn`` tile by tile on a large LR input and stitch the SR tiles by centre-cropping.

    Every LR tile is ``tile x tile`` pixels (smaller only if the image is) and carries ``overlap`` pixels of
    context on each side facing another tile; that context is cropped from the SR tile before stitching
    (``overlap * scale`` SR pixels), so no averaging is needed. For a model whose receptive-field radius in
    LR pixels is at most ``overlap`` (and which pads like at the image border), the result equals the full
    forward pass.

    Args:
        model_fn: callable lq (B, C, h, w) -> sr (B, C', h * scale, w * scale).
        lq: (B, C, H, W) float input.
        scale: the model's upscaling factor.
        tile: LR tile size in pixels, larger than ``2 * overlap``.
        overlap: LR context pixels on each inner side of a tile.

    Returns:
        (B, C', H * scale, W * scale) the stitched SR output.
    """
    _check_lq("tiled_forward", lq)
    _check_positive_int("scale", scale, 1)
    _check_positive_int("tile", tile, 1)
    _check_positive_int("overlap", overlap, 0)
    if tile <= 2 * overlap:
        raise ValueError(f"tile must be larger than 2 * overlap, got tile={tile}, overlap={overlap}")
    height, width = lq.shape[-2:]
    out = None
    for (y0, y1, ky0, ky1), (x0, x1, kx0, kx1) in product(
        _windows(height, tile, overlap), _windows(width, tile, overlap)
    ):
        sr = model_fn(lq[..., y0:y1, x0:x1])
        expected = ((y1 - y0) * scale, (x1 - x0) * scale)
        if sr.dim() != 4 or tuple(sr.shape[-2:]) != expected:
            raise ValueError(
                f"tiled_forward: model_fn returned shape {tuple(sr.shape)} for a {y1 - y0}x{x1 - x0} tile, "
                f"expected spatial size {expected[0]}x{expected[1]} at scale={scale}"
            )
        if out is None:
            out = sr.new_zeros(sr.shape[0], sr.shape[1], height * scale, width * scale)
        out[..., ky0 * scale : ky1 * scale, kx0 * scale : kx1 * scale] = sr[
            ..., (ky0 - y0) * scale : (ky1 - y0) * scale, (kx0 - x0) * scale : (kx1 - x0) * scale
        ]
    return cast(Tensor, out)  # every image has at least one window


def upscale_bicubic(lq: Tensor, scale: int) -> Tensor:
    """The bicubic baseline: MATLAB-compatible bicubic upscaling (no clamping; the metric quantises).

    Args:
        lq: (B, C, h, w) or (C, h, w) float input in [0, 1].
        scale: integer upscaling factor >= 1.

    Returns:
        (B, C, h * scale, w * scale) or (C, h * scale, w * scale), same dtype as ``lq``.
    """
    _check_positive_int("scale", scale, 1)
    return imresize(lq, scale)


def sr_function(
    net: ModelFn | None, scale: int, tile: int | None = None, overlap: int = 16, ensemble: bool = False
) -> ModelFn:
    """The ``lq -> sr`` function of a network, run whole or in tiles, with or without the x8 self-ensemble.

    Args:
        net: callable lq (B, 3, h, w) -> sr (B, 3, h * scale, w * scale); ``None`` is the bicubic baseline
            (MATLAB bicubic, for which ``tile`` and ``ensemble`` change nothing and are ignored).
        scale: upscaling factor.
        tile: LR tile size (see :func:`tiled_forward`); ``None`` or 0 runs the whole image at once.
        overlap: LR context pixels on each inner side of a tile.
        ensemble: average the 8 flips/transposes (:func:`self_ensemble`), each run whole or tiled.

    Returns:
        The function; call it under ``torch.no_grad()`` for inference. Its output is not clamped.
    """
    _check_positive_int("scale", scale, 1)
    if net is None:
        return lambda lq: upscale_bicubic(lq, scale)

    def run(lq: Tensor) -> Tensor:
        return tiled_forward(net, lq, scale=scale, tile=int(tile), overlap=int(overlap)) if tile else net(lq)

    return (lambda lq: self_ensemble(run, lq)) if ensemble else run


def tile_setting(tile: object, overlap: object = 16) -> tuple[int | None, int]:
    """A command's ``tile=`` and ``tile_overlap=`` as ints; ``tile=null`` runs the whole image.

    Raises:
        ValueError: naming the option, for a value that is not an integer, ``tile`` <= ``2 * tile_overlap``
            (``tile=0`` included: ``null`` means no tiling), or a negative overlap.
    """
    values = []
    for name, value in (("tile_overlap", overlap), ("tile", tile)):
        if value is None and name == "tile":
            values.append(None)
            continue
        try:
            number = int(str(value))
        except ValueError:
            raise ValueError(f"{name}={value!r}: expected an integer number of LR pixels") from None
        values.append(number)
    overlap_px, tile_px = values
    if overlap_px < 0:
        raise ValueError(f"tile_overlap={overlap_px}: expected >= 0 LR pixels")
    if tile_px is not None and tile_px <= 2 * overlap_px:
        raise ValueError(
            f"tile={tile_px}: expected an LR tile larger than 2 * tile_overlap = {2 * overlap_px} "
            "(e.g. tile=256), or tile=null for the whole image"
        )
    return tile_px, overlap_px


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device name; CUDA must be available if named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here: use device=cpu or device=auto")
    return device


class SRForward(nn.Module):
    """A plain ``lq -> sr`` module over the parts of an :class:`~meta_kd_sr.models.blocks.SRNet`.

    ``SRNet.forward`` also returns features on request (a dict, a union return type) and the network has a
    ``feature_channels`` property: neither compiles with ``torch.jit.script``. This module runs the same
    layers (it shares them, no copy) without the feature path, so it scripts and exports to ONNX with
    dynamic batch, height and width; its output equals ``net(lq)`` exactly.

    Args:
        net: an EDSR, RCAN or any other ``SRNet``.
    """

    def __init__(self, net: SRNet) -> None:
        super().__init__()
        if not isinstance(net, SRNet):
            raise ValueError(f"SRForward takes an SRNet (EDSR, RCAN), got {type(net).__name__}")
        self.scale = int(net.scale)
        self.img_range = float(net.img_range)
        self.register_buffer("mean", net.mean.detach().clone(), persistent=False)
        self.conv_first, self.body, self.conv_after_body = net.conv_first, net.body, net.conv_after_body
        self.upsample, self.conv_last = net.upsample, net.conv_last

    def forward(self, lq: Tensor) -> Tensor:
        """lq: (B, 3, h, w) float in [0, 1] -> sr: (B, 3, h * scale, w * scale), not clamped."""
        if lq.dim() != 4 or lq.size(1) != 3:
            raise ValueError("lq must be a (B, 3, h, w) tensor")
        # a buffer: torch types it Tensor | Module, and TorchScript rejects a class-level annotation
        mean = self.mean.to(lq.dtype)
        x = self.conv_first((lq - mean) * self.img_range)  # pyright: ignore[reportOperatorIssue]
        res = self.conv_after_body(self.body(x))
        return self.conv_last(self.upsample(res + x)) / self.img_range + mean
