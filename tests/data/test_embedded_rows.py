"""Embedded photos cut by rows: a meta split carved from the training photos, disjoint in pixels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from meta_kd_sr.cli import config_dir
from meta_kd_sr.data.datamodule import check_disjoint
from meta_kd_sr.data.embedded import EmbeddedPhotos, load_photo, row_span
from meta_kd_sr.data.io import to_float
from meta_kd_sr.data.paired import SampleKey
from meta_kd_sr.data.transforms import bicubic_downscale

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_row_spans_of_complementary_fractions_share_one_boundary() -> None:
    assert row_span(427, (0.0, 0.5), 4) == (0, 212) and row_span(427, (0.5, 1.0), 4) == (212, 424)
    assert row_span(500, (0.25, 0.75), 3) == (123, 375)


def test_a_region_is_the_photos_rows_with_its_own_bicubic_lr() -> None:
    EmbeddedPhotos(["astronaut"], 4, train=False)[
        0
    ]  # the whole photo first: its cache must not serve a region
    top = EmbeddedPhotos(["astronaut", "rocket"], 4, train=False, rows=[0.0, 0.5])
    bottom = EmbeddedPhotos(["astronaut", "rocket"], 4, train=False, rows=[0.5, 1.0])
    for i, name in enumerate(["astronaut", "rocket"]):
        photo = load_photo(name)
        (a, b), (c, d) = top.image_rows[name], bottom.image_rows[name]
        assert a == 0 and b == c and d == photo.shape[1] // 4 * 4  # adjacent, disjoint, all rows used
        for ds, (start, stop) in ((top, (a, b)), (bottom, (c, d))):
            gt = photo[:, start:stop, : photo.shape[2] // 4 * 4].contiguous()
            item = ds[i]
            assert torch.equal(item["gt"], to_float(gt)) and item["name"] == name
            assert torch.equal(item["lq"], to_float(bicubic_downscale(gt, 4)))


def test_carved_photos_are_cut_and_the_others_stay_whole() -> None:
    ds = EmbeddedPhotos(["retina", "rocket"], 2, train=False, rows=[0.0, 0.5], carved=["rocket"])
    assert ds.image_rows == {"rocket": (0, 212)}
    assert ds[0]["gt"].shape == (3, 1410, 1410) and ds[1]["gt"].shape == (3, 212, 640)


def test_train_patches_are_deterministic_and_come_from_the_region() -> None:
    kwargs = {"train": True, "patch_size": 32, "samples_per_epoch": 8, "rows": [0.5, 1.0]}
    a, b = EmbeddedPhotos(["astronaut"], 2, **kwargs), EmbeddedPhotos(["astronaut"], 2, **kwargs)
    region = to_float(load_photo("astronaut")[:, 256:512])
    for index in range(8):
        key = SampleKey(index, epoch=1, seed=3, stream=1)
        item = a[key]
        assert torch.equal(item["gt"], b[key]["gt"]) and torch.equal(item["lq"], b[key]["lq"])
        assert _found_in(item["gt"], region)
    assert not _found_in(to_float(load_photo("astronaut")[:, 200:232, 100:132]), region)  # a top-half crop


def _found_in(patch: torch.Tensor, region: torch.Tensor) -> bool:
    """Whether ``patch`` (maybe flipped/transposed) is a crop of ``region`` (3, H, W)."""
    views = [patch, patch.flip(-1), patch.flip(-2), patch.flip(-1, -2)]
    views += [v.transpose(-1, -2) for v in views]
    h, w = patch.shape[1:]
    for v in views:  # candidates: where the view's top-left pixel sits, then the whole crop
        ys, xs = (
            (region[:, : region.shape[1] - h + 1, : region.shape[2] - w + 1] == v[:, :1, :1])
            .all(0)
            .nonzero(as_tuple=True)
        )
        if any(torch.equal(region[:, y : y + h, x : x + w], v) for y, x in zip(ys.tolist(), xs.tolist())):
            return True
    return False


def test_check_disjoint_compares_rows_of_a_shared_photo() -> None:
    top = EmbeddedPhotos(["astronaut"], 4, train=False, rows=[0.0, 0.6])
    check_disjoint(top, EmbeddedPhotos(["astronaut"], 4, train=False, rows=[0.6, 1.0]))
    with pytest.raises(ValueError, match="meta images must be disjoint .*both contain: astronaut"):
        check_disjoint(top, EmbeddedPhotos(["astronaut"], 4, train=False, rows=[0.5, 1.0]))
    with pytest.raises(ValueError, match="both contain: astronaut"):
        check_disjoint(EmbeddedPhotos(["astronaut"], 4, train=False), top)  # whole photo in train


@pytest.mark.parametrize("rows", [[0.5, 0.5], [-0.1, 1.0], [0.0, 1.2], "01", [0.1]])
def test_bad_rows_are_refused(rows) -> None:
    with pytest.raises(ValueError, match=r"rows must be \[start, stop\] fractions .*, got"):
        EmbeddedPhotos(["astronaut"], 4, train=False, rows=rows)
    with pytest.raises(ValueError, match=r"carved=\['rocket'\] names photos to cut, but rows is None"):
        EmbeddedPhotos(["rocket"], 4, train=False, carved=["rocket"])


def test_natural_meta_preset_is_disjoint_from_train_and_the_heldout_photos() -> None:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=["experiment=tiny_mkd", "data=embedded_meta_natural", "paths.output_dir=."]
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # runs check_disjoint on the train and meta splits
    train, meta = datamodule.dataset("train"), datamodule.dataset("meta")
    assert set(meta.image_names) == {"astronaut", "rocket", "motorcycle_left", "motorcycle_right"}
    assert set(meta.image_names) < set(train.image_names)
    for name in meta.image_names:
        (a, b), (c, d) = train.image_rows[name], meta.image_rows[name]
        assert a == 0 < b == c < d  # the train split keeps the top rows, the meta split the bottom ones
    assert "retina" not in train.image_rows  # not carved: trains whole
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from quality.heldout import HELDOUT
    finally:
        sys.path.remove(str(BENCHMARKS))
    val = datamodule.dataset("val").image_names
    assert not set(HELDOUT) & {*train.image_names, *meta.image_names} and set(val) <= set(HELDOUT)
