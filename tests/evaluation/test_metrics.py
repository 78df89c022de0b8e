from __future__ import annotations

import math
import re

import kornia
import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from helpers.oracles import load_oracle
from meta_kd_sr.data.imresize import imresize
from meta_kd_sr.evaluation.metrics import PSNRY, SSIMY, psnr_y, quantize, rgb_to_y, sr_metrics, ssim_y

ref = load_oracle("sr_metrics_reference")


def _to_tensor(images_uint8: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(im.copy()).permute(2, 0, 1) for im in images_uint8]).float() / 255


def _to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    return [ref.to_uint8(im.permute(1, 2, 0).double().numpy()) for im in batch]


@pytest.fixture(scope="module")
def gt_photos(photos_uint8) -> torch.Tensor:
    """(4, 3, 96, 128) float32 GT on uint8 levels: centre crops of real photos (non-square on purpose)."""
    crops = []
    for im in photos_uint8.values():
        top, left = (im.shape[0] - 96) // 2, (im.shape[1] - 128) // 2
        crops.append(im[top : top + 96, left : left + 128])
    return _to_tensor(crops)


@pytest.fixture(scope="module")
def distorted(gt_photos) -> dict[str, torch.Tensor]:
    """Realistic SR stand-ins: bicubic down + up, and noise of a different level per image."""
    noise = torch.randn(gt_photos.shape, generator=torch.Generator().manual_seed(0))
    levels = torch.tensor([0.005, 0.02, 0.05, 0.1]).view(-1, 1, 1, 1)
    return {
        "bicubic_x4": imresize(imresize(gt_photos, 1 / 4), 4),
        "bicubic_x2": imresize(imresize(gt_photos, 1 / 2), 2),
        "noise": gt_photos + levels * noise,  # values outside [0, 1] included
    }


@pytest.mark.parametrize("kind", ["bicubic_x4", "bicubic_x2", "noise"])
@pytest.mark.parametrize("crop_border", [0, 4])
def test_psnr_ssim_match_oracle_on_real_photos(gt_photos, distorted, kind, crop_border):
    sr = distorted[kind]
    psnr = psnr_y(sr, gt_photos, crop_border)
    ssim = ssim_y(sr, gt_photos, crop_border)
    sr_u8, gt_u8 = _to_uint8(sr), _to_uint8(gt_photos)
    expected_psnr = [ref.psnr(s, g, crop_border) for s, g in zip(sr_u8, gt_u8)]
    expected_ssim = [ref.ssim(s, g, crop_border) for s, g in zip(sr_u8, gt_u8)]
    assert psnr.shape == ssim.shape == (4,)
    assert psnr.dtype == ssim.dtype == torch.float64
    np.testing.assert_allclose(psnr.numpy(), expected_psnr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ssim.numpy(), expected_ssim, rtol=0, atol=1e-9)
    assert len(set(np.round(expected_psnr, 2))) == 4  # the images really differ from each other


def test_torchmetrics_recipe_agrees(gt_photos, distorted):
    sr = distorted["noise"].double()
    gt = gt_photos.double()
    sr_y, gt_y = rgb_to_y(quantize(sr))[..., 4:-4, 4:-4], rgb_to_y(quantize(gt))[..., 4:-4, 4:-4]
    tm_psnr = peak_signal_noise_ratio(sr_y, gt_y, data_range=255.0, reduction="none", dim=(1, 2, 3))
    _, full = structural_similarity_index_measure(sr_y, gt_y, data_range=255.0, return_full_image=True)
    tm_ssim = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    # torchmetrics takes log(data_range) of a float32 tensor: ~2e-6 dB apart
    torch.testing.assert_close(psnr_y(sr, gt, 4), tm_psnr, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssim_y(sr, gt, 4), tm_ssim, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["bicubic_x4", "noise"])
def test_kornia_valid_ssim_agrees(gt_photos, distorted, kind):
    sr, gt = distorted[kind], gt_photos
    sr_y, gt_y = (rgb_to_y(quantize(x.double()))[..., 4:-4, 4:-4] for x in (sr, gt))
    ssim_map = kornia.metrics.ssim(sr_y, gt_y, 11, max_val=255.0, padding="valid")
    # same definition, other operation order (reflect-padded filtering, then cropped): rounding apart only
    torch.testing.assert_close(ssim_y(sr, gt, 4), ssim_map.mean(dim=(1, 2, 3)), rtol=0, atol=1e-12)


def test_rgb_to_y_known_values():
    colours = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    y = rgb_to_y(colours.view(5, 3, 1, 1)).flatten()
    torch.testing.assert_close(y, torch.tensor([235.0, 16.0, 81.481, 144.553, 40.966], dtype=torch.float64))
    assert rgb_to_y(torch.rand(3, 5, 7)).shape == (1, 5, 7)


def test_rgb_to_y_is_studio_range_kornia(photo_batch):
    x = photo_batch.double()
    full_range = kornia.color.rgb_to_ycbcr(x)[:, :1]
    torch.testing.assert_close(rgb_to_y(x), 16 + 219 * full_range, rtol=0, atol=1e-10)
    assert (rgb_to_y(x) - 255 * full_range).abs().max() > 10  # kornia's own Y is full range (JPEG), not ours


def test_quantize_snaps_to_uint8_levels():
    x = torch.tensor([-0.2, 0.0, 0.3 / 255, 0.6 / 255, 100.4 / 255, 1.0, 1.7])
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 100.0, 255.0, 255.0]) / 255
    torch.testing.assert_close(quantize(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("offset", [0.4 / 255, -0.4 / 255])
def test_sub_level_offset_vanishes_after_quantisation(gt_photos, offset):
    interior = gt_photos.clamp(1 / 255, 254 / 255)  # keep gt +- offset inside [0, 1]
    gt = quantize(interior)
    sr = gt + offset
    assert torch.equal(quantize(sr), gt)
    assert torch.isinf(psnr_y(sr, gt, 4)).all()
    assert torch.equal(ssim_y(sr, gt, 4), torch.ones(4, dtype=torch.float64))


def test_per_image_mean_is_not_pooled_mse():
    gt = torch.full((2, 3, 24, 24), 128 / 255)
    sr = gt + torch.tensor([1 / 255, 10 / 255]).view(2, 1, 1, 1)  # Y error 219/255 and 2190/255 levels
    psnr = psnr_y(sr, gt, crop_border=2)
    first = 20 * math.log10(255 / (219 / 255))
    torch.testing.assert_close(psnr, torch.tensor([first, first - 20], dtype=torch.float64))
    metric = PSNRY(crop_border=2)
    metric.update(sr, gt)
    mse = torch.tensor([(219 / 255) ** 2, (2190 / 255) ** 2], dtype=torch.float64)
    pooled = 10 * torch.log10(255**2 / mse.mean())
    torch.testing.assert_close(metric.compute(), psnr.mean())
    # mean of per-image PSNR - PSNR of the pooled MSE = 10 log10(AM / GM of the two MSEs) = 10 log10(5.05)
    expected_gap = torch.tensor(10 * math.log10(5.05), dtype=torch.float64)
    torch.testing.assert_close(metric.compute() - pooled, expected_gap)


def test_crop_border_removes_border_pixels(gt_photos):
    sr = gt_photos.clone()
    border = torch.ones_like(sr, dtype=torch.bool)
    border[..., 4:-4, 4:-4] = False
    sr[border] = 1 - sr[border]
    assert torch.isinf(psnr_y(sr, gt_photos, 4)).all()
    assert torch.equal(ssim_y(sr, gt_photos, 4), torch.ones(4, dtype=torch.float64))
    assert torch.isfinite(psnr_y(sr, gt_photos, 3)).all()
    assert (ssim_y(sr, gt_photos, 3) < 1).all()
    expected = [ref.psnr(s, g, 0) for s, g in zip(_to_uint8(sr), _to_uint8(gt_photos))]
    np.testing.assert_allclose(psnr_y(sr, gt_photos, 0).numpy(), expected, rtol=0, atol=1e-4)


def test_single_image_gives_0d_tensor(gt_photos, distorted):
    sr = distorted["noise"]
    assert psnr_y(sr[1], gt_photos[1], 4).shape == ()
    torch.testing.assert_close(psnr_y(sr[1], gt_photos[1], 4), psnr_y(sr, gt_photos, 4)[1])
    torch.testing.assert_close(ssim_y(sr[1], gt_photos[1], 4), ssim_y(sr, gt_photos, 4)[1])


@pytest.mark.parametrize(("metric_cls", "fn"), [(PSNRY, psnr_y), (SSIMY, ssim_y)])
def test_metric_is_mean_over_images_across_updates(gt_photos, distorted, metric_cls, fn):
    sr = distorted["noise"]
    metric = metric_cls(crop_border=4)
    metric.update(sr[:3], gt_photos[:3])
    metric.update(sr[3], gt_photos[3])  # a single (3, H, W) image counts once
    expected = fn(sr, gt_photos, 4).mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-12)
    assert int(metric.count) == 4


@pytest.mark.parametrize(("metric_cls", "fn"), [(PSNRY, psnr_y), (SSIMY, ssim_y)])
def test_metric_states_merge_like_ddp(gt_photos, distorted, metric_cls, fn):
    sr = distorted["bicubic_x4"]
    rank0, rank1 = metric_cls(crop_border=4), metric_cls(crop_border=4)
    rank0.update(sr[:1], gt_photos[:1])  # unequal shares of the images
    rank1.update(sr[1:], gt_photos[1:])
    rank0.merge_state(rank1)  # applies dist_reduce_fx, as the sync across processes does
    torch.testing.assert_close(rank0.compute(), fn(sr, gt_photos, 4).mean(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("metric_cls", "fn"), [(PSNRY, psnr_y), (SSIMY, ssim_y)])
def test_metric_stays_float64_after_a_device_move(gt_photos, distorted, metric_cls, fn):
    sr = distorted["noise"]
    owner = torch.nn.ModuleDict({"metric": metric_cls(crop_border=4)}).to("cpu")  # as Lightning moves it
    owner["metric"].update(sr, gt_photos)
    value = owner["metric"].compute()
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, fn(sr, gt_photos, 4).mean(), rtol=0, atol=1e-12)


def test_nan_image_makes_the_mean_nan(gt_photos, distorted):
    sr = distorted["noise"].clone()
    sr[1, :, 10:12, 10:12] = float("nan")  # a broken SR output must show, not drop out of the mean
    metric = PSNRY(crop_border=4)
    metric.update(sr, gt_photos)
    assert torch.isnan(metric.compute())
    assert int(metric.count) == 4


def test_sr_metrics_collection(gt_photos, distorted):
    sr = distorted["bicubic_x2"]
    metrics = sr_metrics(crop_border=2, prefix="val/")
    metrics.update(sr[:2], gt_photos[:2])
    metrics.update(sr[2:], gt_photos[2:])
    values = metrics.compute()
    assert set(values) == {"val/psnr_y", "val/ssim_y"}
    torch.testing.assert_close(values["val/psnr_y"], psnr_y(sr, gt_photos, 2).mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(values["val/ssim_y"], ssim_y(sr, gt_photos, 2).mean(), rtol=0, atol=1e-12)


def _bad(shape=(2, 3, 32, 32), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


SAME_SHAPE = "{name} expects sr and gt of the same shape, got (2, 3, 32, 32) and (2, 3, 32, 30)"
RGB = "{name} expects (B, 3, H, W) or (3, H, W) RGB images, got shape "
FLOAT = "{name} expects float tensors in [0, 1], got sr torch.uint8 and gt torch.float32"
CROP = "crop_border must be a non-negative int, got "
TOO_SMALL = (
    "{name} needs at least {n}x{n} pixels left after removing crop_border=16 on each side, got 32x32 images"
)


@pytest.mark.parametrize("fn", [psnr_y, ssim_y])
@pytest.mark.parametrize(
    ("sr", "gt", "crop", "message"),
    [
        (_bad(), _bad((2, 3, 32, 30)), 0, SAME_SHAPE),
        (_bad((2, 1, 32, 32)), _bad((2, 1, 32, 32)), 0, RGB + "(2, 1, 32, 32)"),
        (_bad((32, 32)), _bad((32, 32)), 0, RGB + "(32, 32)"),
        (_bad(dtype=torch.uint8), _bad(), 0, FLOAT),
        (_bad(), _bad(), -1, CROP + "-1"),
        (_bad(), _bad(), 2.0, CROP + "2.0"),
        (_bad(), _bad(), 16, TOO_SMALL),
    ],
)  # fmt: skip
def test_bad_inputs(fn, sr, gt, crop, message):
    name = fn.__name__
    n = 11 if fn is ssim_y else 1
    with pytest.raises(ValueError, match=re.escape(message.format(name=name, n=n))):
        fn(sr, gt, crop)


def test_ssim_needs_a_full_window_after_cropping():
    x = torch.zeros(1, 3, 20, 30)
    with pytest.raises(ValueError, match=re.escape("crop_border=5 on each side, got 20x30 images")):
        ssim_y(x, x, 5)
    assert torch.isinf(psnr_y(x, x, 5)).all()
    assert ssim_y(x[..., :19, :], x[..., :19, :], 4).item() == 1.0  # 11x11 left: one window position


def test_other_bad_inputs():
    message = "rgb_to_y expects (B, 3, H, W) or (3, H, W) RGB, got shape (2, 4, 8, 8)"
    with pytest.raises(ValueError, match=re.escape(message)):
        rgb_to_y(torch.zeros(2, 4, 8, 8))
    message = "quantize expects a float tensor in [0, 1], got torch.uint8"
    with pytest.raises(ValueError, match=re.escape(message)):
        quantize(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=re.escape("crop_border must be a non-negative int, got -2")):
        PSNRY(crop_border=-2)
