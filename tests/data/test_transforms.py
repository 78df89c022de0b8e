from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from meta_kd_sr.data.imresize import imresize
from meta_kd_sr.data.io import to_float, to_uint8
from meta_kd_sr.data.transforms import (
    augment_pair,
    bicubic_downscale,
    check_pair_sizes,
    check_scale,
    crop_to_multiple,
    random_crop_coords,
    random_crop_pair,
)


@pytest.fixture
def gt(photos_uint8) -> torch.Tensor:
    """(3, 96, 120) uint8 crop of a real photo."""
    return torch.from_numpy(photos_uint8["astronaut"][20:116, 150:270].copy()).permute(2, 0, 1).contiguous()


def _nearest_up(lq: torch.Tensor, scale: int) -> torch.Tensor:
    return lq.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def _oracle():
    path = Path(__file__).parents[1] / "oracles" / "matlab_imresize_reference.py"
    spec = importlib.util.spec_from_file_location("_oracle_matlab_imresize_transforms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_downscale_is_matlab_imresize_on_uint8(gt, scale):
    gt = crop_to_multiple(gt, scale).contiguous()
    lq = bicubic_downscale(gt, scale)
    assert lq.dtype == torch.uint8 and lq.shape == (3, gt.shape[1] // scale, gt.shape[2] // scale)
    reference = _oracle().matlab_imresize_uint8(gt.permute(1, 2, 0).numpy(), 1 / scale)
    assert np.array_equal(lq.permute(1, 2, 0).numpy(), reference)
    # Close to, but not always equal to, quantising the double-precision result (MATLAB rounds per pass).
    double = to_uint8(imresize(to_float(gt).double(), 1 / scale))
    assert (double.int() - lq.int()).abs().max() <= 3


def test_bicubic_downscale_needs_a_multiple_of_the_scale(gt):
    with pytest.raises(ValueError, match="HR size 95x120 is not a multiple of scale 4"):
        bicubic_downscale(gt[:, :95], 4)


@pytest.mark.parametrize("scale", [1, 5, 8, 2.5, True])
def test_unsupported_scale_is_named(scale):
    with pytest.raises(ValueError, match=f"unsupported scale {scale!r}"):
        check_scale(scale)


def test_crop_to_multiple_keeps_the_top_left(gt):
    cropped = crop_to_multiple(gt[:, :95, :118], 4)
    assert cropped.shape == (3, 92, 116)
    assert torch.equal(cropped, gt[:, :92, :116])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_random_crop_pair_is_aligned(gt, scale):
    gt = crop_to_multiple(gt, scale)
    lq = bicubic_downscale(gt, scale)
    patch = 8
    for seed in range(5):
        lq_p, gt_p = random_crop_pair(lq, gt, patch, scale, torch.Generator().manual_seed(seed))
        top, left = random_crop_coords(lq.shape[1], lq.shape[2], patch, torch.Generator().manual_seed(seed))
        assert torch.equal(lq_p, lq[:, top : top + patch, left : left + patch])
        s = scale
        assert torch.equal(gt_p, gt[:, top * s : (top + patch) * s, left * s : (left + patch) * s])
        # Independent check of alignment: away from the patch border (the bicubic support), downscaling the
        # gt patch reproduces the lq patch up to rounding. A one-pixel shift breaks this by many levels.
        own = bicubic_downscale(gt_p.contiguous(), s)[:, 2:-2, 2:-2].int()
        assert (own - lq_p[:, 2:-2, 2:-2].int()).abs().max() <= 1


def test_random_crop_pair_covers_every_position(gt):
    lq = bicubic_downscale(gt, 4)  # 24 x 30, patch 20 -> 5 x 11 positions
    generator = torch.Generator().manual_seed(0)
    seen = {random_crop_coords(24, 30, 20, generator) for _ in range(600)}
    assert seen == set(itertools.product(range(5), range(11)))
    assert lq.shape[1:] == (24, 30)


def test_patch_larger_than_image_names_the_sizes(gt):
    lq = bicubic_downscale(gt, 4)
    with pytest.raises(
        ValueError, match=r"img7: image is smaller than the patch: lq 24x30 \(gt 96x120\) < patch 32x32"
    ):
        random_crop_pair(lq, gt, 32, 4, name="img7")


def test_pair_size_mismatch_names_the_image(gt):
    lq = bicubic_downscale(gt, 4)
    with pytest.raises(ValueError, match=r"0042.png: HR/LR size mismatch: gt is 3x96x120 but lq 3x24x29 x4"):
        check_pair_sizes(lq[:, :, :29], gt, 4, name="0042.png")
    with pytest.raises(ValueError, match="HR/LR size mismatch"):
        random_crop_pair(lq, gt, 8, 3)


def test_augment_applies_the_same_op_to_both(gt):
    lq = bicubic_downscale(gt, 4)
    gt_near = _nearest_up(lq, 4)
    poses = set()
    for seed in range(40):
        a_lq, a_gt = augment_pair(lq, gt_near, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a_gt, _nearest_up(a_lq, 4))  # the pair relation survives only if ops agree
        poses.add(tuple(a_lq[0, :2, :2].flatten().tolist()) + (a_lq.shape[1],))
    assert len(poses) == 8  # all dihedral poses of h-flip, v-flip, transpose occur


def test_augment_matches_the_definition(gt):
    lq = bicubic_downscale(gt, 4)
    coins = (torch.rand(3, generator=torch.Generator().manual_seed(3)) < 0.5).tolist()
    expected = lq
    if coins[0]:
        expected = expected.flip(-1)
    if coins[1]:
        expected = expected.flip(-2)
    if coins[2]:
        expected = expected.transpose(-2, -1)
    out, _ = augment_pair(lq, gt, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, expected)


def test_augment_disabled_is_identity(gt):
    lq = bicubic_downscale(gt, 4)
    for seed in range(8):
        out_lq, out_gt = augment_pair(lq, gt, False, False, False, torch.Generator().manual_seed(seed))
        assert torch.equal(out_lq, lq) and torch.equal(out_gt, gt)
