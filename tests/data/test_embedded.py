from __future__ import annotations

import socket

import pytest
import skimage.data
import torch

from meta_kd_sr.data.embedded import EMBEDDED_PHOTOS, EmbeddedPhotos, load_photo
from meta_kd_sr.data.io import to_float
from meta_kd_sr.data.transforms import bicubic_downscale, crop_to_multiple


def test_every_embedded_photo_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert len(EMBEDDED_PHOTOS) >= 8
    for name in EMBEDDED_PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == torch.uint8 and photo.shape[0] == 3 and min(photo.shape[1:]) >= 256, name
        assert photo.float().std() > 10, name  # a real picture, not a blank


def test_photos_match_scikit_image():
    assert torch.equal(load_photo("coffee"), torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1))
    assert torch.equal(
        load_photo("motorcycle_right"), torch.from_numpy(skimage.data.stereo_motorcycle()[1]).permute(2, 0, 1)
    )


def test_eval_items_are_cropped_photos_with_bicubic_lr():
    ds = EmbeddedPhotos(["chelsea", "colorwheel"], 4, train=False)
    item = ds[1]
    gt = crop_to_multiple(load_photo("colorwheel"), 4).contiguous()  # 370 x 371 -> 368 x 368
    assert item["name"] == "colorwheel" and item["gt"].shape == (3, 368, 368)
    assert torch.equal(item["gt"], to_float(gt))
    assert torch.equal(item["lq"], to_float(bicubic_downscale(gt, 4)))


def test_train_items_are_patches():
    ds = EmbeddedPhotos(["chelsea", "coffee"], 2, train=True, patch_size=32, samples_per_epoch=5)
    items = [ds[i] for i in range(5)]
    assert len(ds) == 5 and [it["name"] for it in items] == [
        "chelsea",
        "coffee",
        "chelsea",
        "coffee",
        "chelsea",
    ]
    assert all(it["lq"].shape == (3, 16, 16) and it["gt"].shape == (3, 32, 32) for it in items)
    assert not torch.equal(items[0]["gt"], items[2]["gt"])  # different crops of the same photo


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown embedded photo 'lena': valid names are astronaut, chelsea, coffee"
    ):
        EmbeddedPhotos(["astronaut", "lena"], 4, train=False)


def test_cat_alias_resolves_to_chelsea_and_duplicates_are_refused():
    assert EmbeddedPhotos(["cat"], 4, train=False).image_names == ("chelsea",)
    with pytest.raises(
        ValueError, match=r"duplicate embedded photos \(after resolving aliases\): \['chelsea'\]"
    ):
        EmbeddedPhotos(["cat", "chelsea"], 4, train=False)


@pytest.mark.parametrize("names", ["astronaut", []])
def test_names_must_be_a_non_empty_list(names):
    with pytest.raises(ValueError, match="names must be a non-empty list of photo names"):
        EmbeddedPhotos(names, 4, train=False)
