from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.oracles import load_oracle
from meta_kd_sr.data.imresize import imresize
from meta_kd_sr.evaluation.inference import self_ensemble, tiled_forward, upscale_bicubic


def _local_model(scale: int, layers: int, seed: int = 0) -> nn.Module:
    """Zero-padded 3x3 convs + pixel shuffle: receptive-field radius ``layers`` LR pixels, not equivariant."""
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3, 3, 3, padding=1) for _ in range(layers - 1)]
    body = [m for conv in convs for m in (conv, nn.Tanh())]
    return nn.Sequential(*body, nn.Conv2d(3, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale)).double()


def _d4_by_rot90(model, lq: torch.Tensor) -> torch.Tensor:
    """Mean over the dihedral group written as rotations (k quarter turns) with or without a mirror."""
    outputs = []
    for k in range(4):
        for mirror in (False, True):
            x = torch.rot90(lq.flip(-1) if mirror else lq, k, dims=(-2, -1))
            y = torch.rot90(model(x), -k, dims=(-2, -1))
            outputs.append(y.flip(-1) if mirror else y)
    return torch.stack(outputs).mean(dim=0)


@pytest.fixture(scope="module")
def lq(photo_batch) -> torch.Tensor:
    """(2, 3, 24, 40) float64 real-photo LR crops (non-square)."""
    return photo_batch[:2, :, 10:34, 20:60].double()


def test_self_ensemble_of_equivariant_function_is_the_function(lq):
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16

    # nearest x2, then a D4-symmetric blur with zero padding: equivariant to flips and transposes
    def isotropic(x):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.conv2d(up, kernel.expand(3, 1, 3, 3), padding=1, groups=3).sigmoid()

    torch.testing.assert_close(self_ensemble(isotropic, lq), isotropic(lq), rtol=0, atol=1e-12)


def test_self_ensemble_is_mean_of_the_eight_transformed_outputs(lq):
    model = _local_model(scale=2, layers=2)
    with torch.no_grad():
        result = self_ensemble(model, lq)
        expected = _d4_by_rot90(model, lq)
        plain = model(lq)
    assert result.shape == (2, 3, 48, 80)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    assert (result - plain).abs().max() > 1e-3  # the model is not equivariant: the ensemble changes it


def test_self_ensemble_passes_gradients(lq):
    model = _local_model(scale=2, layers=1)
    self_ensemble(model, lq).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_self_ensemble_rejects_shape_breaking_model(lq):
    def crops_width(x):
        return x[..., :, :20]

    with pytest.raises(ValueError, match=re.escape("self_ensemble: model_fn output maps back to shape")):
        self_ensemble(crops_width, lq)
    with pytest.raises(ValueError, match=re.escape("expects lq as a float (B, C, h, w) tensor")):
        self_ensemble(crops_width, lq[0])


@pytest.mark.parametrize(("layers", "overlap", "tile"), [(1, 1, 10), (1, 3, 16), (2, 2, 9), (3, 3, 12)])
def test_tiled_equals_full_forward_for_local_model(lq, layers, overlap, tile):
    model = _local_model(scale=3, layers=layers)
    calls = []

    def recorded(x):
        calls.append(tuple(x.shape[-2:]))
        return model(x)

    with torch.no_grad():
        tiled = tiled_forward(recorded, lq, scale=3, tile=tile, overlap=overlap)
        full = model(lq)
    assert tiled.shape == full.shape == (2, 3, 72, 120)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-12)
    assert len(calls) > 4 and max(max(c) for c in calls) <= tile  # really tiled, tiles never exceed `tile`


def test_too_small_overlap_leaves_seams(lq):
    model = _local_model(scale=2, layers=3)  # radius 3
    with torch.no_grad():
        diff = (tiled_forward(model, lq, scale=2, tile=12, overlap=1) - model(lq)).abs()
    assert diff.max() > 1e-4


def test_tiled_single_tile_and_gradient(lq):
    model = _local_model(scale=2, layers=2)
    torch.testing.assert_close(tiled_forward(model, lq, 2, tile=64, overlap=2), model(lq), rtol=0, atol=0)
    x_tiled = lq.clone().requires_grad_(True)
    x_full = lq.clone().requires_grad_(True)
    tiled_forward(model, x_tiled, 2, tile=10, overlap=2).sin().sum().backward()
    model(x_full).sin().sum().backward()
    torch.testing.assert_close(x_tiled.grad, x_full.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2, 8, 4), "tile must be larger than 2 * overlap, got tile=8, overlap=4"),
        ((0, 8, 1), "scale must be an int >= 1, got 0"),
        ((2, 8.0, 1), "tile must be an int >= 1, got 8.0"),
        ((2, 8, -1), "overlap must be an int >= 0, got -1"),
        ((3, 8, 1), "tiled_forward: model_fn returned shape (2, 3, 16, 16) for a 8x8 tile, "
         "expected spatial size 24x24 at scale=3"),
    ],
)  # fmt: skip
def test_tiled_forward_bad_inputs(lq, args, message):
    scale, tile, overlap = args
    model = _local_model(scale=2, layers=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        tiled_forward(model, lq, scale=scale, tile=tile, overlap=overlap)


def test_tiled_forward_rejects_non_batched_input(lq):
    with pytest.raises(ValueError, match=re.escape("got torch.float64 of shape (3, 24, 40)")):
        tiled_forward(_local_model(2, 1), lq[0], scale=2, tile=8, overlap=1)


def test_upscale_bicubic_is_matlab_bicubic(photo_batch):
    lq = photo_batch[:2, :, :24, :30]
    sr = upscale_bicubic(lq, 4)
    assert sr.shape == (2, 3, 96, 120)
    assert torch.equal(sr, imresize(lq, 4))
    oracle = load_oracle("matlab_imresize_reference")
    for image, out in zip(lq, sr):
        expected = oracle.matlab_imresize(image.permute(1, 2, 0).double().numpy(), 4)
        np.testing.assert_allclose(out.permute(1, 2, 0).double().numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [0, 2.5, True])
def test_upscale_bicubic_bad_scale(photo_batch, scale):
    with pytest.raises(ValueError, match=re.escape(f"scale must be an int >= 1, got {scale!r}")):
        upscale_bicubic(photo_batch, scale)
