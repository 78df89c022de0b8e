"""Key converters: official EDSR-PyTorch/RCAN and BasicSR layouts give their reference outputs; key errors."""

from __future__ import annotations

import pytest
import torch

from helpers.model_helpers import same_output, save, tiny_edsr, tiny_rcan
from helpers.official_oracle import BasicEDSR, BasicRCAN, OfficialEDSR, OfficialRCAN
from meta_kd_sr.models import EDSR, RCAN, detect_format, load_pretrained, load_state_dict_any


# ------------------------------------------------------------------------ official and BasicSR layouts
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_edsr_checkpoint_gives_the_official_output(tmp_path, scale):
    torch.manual_seed(1)
    official = OfficialEDSR(n_resblocks=3, n_feats=8, scale=scale, res_scale=0.1)
    path = save(official.state_dict(), tmp_path)
    model = load_pretrained(EDSR(scale=scale, n_feats=8, n_blocks=3, res_scale=0.1), path)
    assert same_output(official, model, scale_a=255.0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_rcan_checkpoint_gives_the_official_output(tmp_path, scale):
    torch.manual_seed(1)
    official = OfficialRCAN(n_resgroups=3, n_resblocks=2, n_feats=16, reduction=4, scale=scale)
    path = save(official.state_dict(), tmp_path)
    assert detect_format(torch.load(path, weights_only=True)) == "official"
    model = load_pretrained(tiny_rcan(scale, seed=5), path)
    assert same_output(official, model, scale_a=255.0)


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_basicsr_checkpoint_gives_the_basicsr_output(tmp_path, arch):
    torch.manual_seed(1)
    if arch == "edsr":
        ref, model = BasicEDSR(num_feat=8, num_block=3, upscale=4), tiny_edsr(seed=5)
    else:
        ref, model = BasicRCAN(num_feat=16, num_group=3, num_block=2, squeeze_factor=4), tiny_rcan(seed=5)
    path = save({"params": ref.state_dict()}, tmp_path)
    load_pretrained(model, path)
    assert same_output(ref, model)


def test_full_size_official_rcan_layout_loads_strictly():
    official = OfficialRCAN(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=4)
    sd = load_state_dict_any(official.state_dict())
    model = RCAN()
    assert sd.keys() == model.state_dict().keys()
    load_pretrained(model, official.state_dict())
    assert torch.equal(
        model.body[9].blocks[19].attention.up.weight, official.body[9].body[19].body[3].conv_du[2].weight
    )


def test_detect_format_and_unknown_format(tmp_path):
    assert detect_format(OfficialEDSR(1, 4).state_dict()) == "official"
    assert detect_format(BasicRCAN(8, 1, 1, 4).state_dict()) == "basicsr"
    assert detect_format(BasicEDSR(8, 1).state_dict()) == "ours"  # BasicSR's EDSR names are ours
    assert detect_format(tiny_rcan().state_dict()) == "ours"
    with pytest.raises(
        ValueError, match=r"unknown checkpoint format: keys match none of .*first keys: \['enc.weight'\]"
    ):
        detect_format({"enc.weight": torch.zeros(1)})
    with pytest.raises(
        ValueError,
        match=r"unknown checkpoint format 'caffe'; choose one of \('ours', 'official', 'basicsr'\)",
    ):
        load_state_dict_any(tiny_edsr().state_dict(), fmt="caffe")
    with pytest.raises(ValueError, match="unknown checkpoint format: no tensors found"):
        load_state_dict_any({"epoch": 3})
    with pytest.raises(ValueError, match="unknown checkpoint format: expected a mapping, got list"):
        load_pretrained(tiny_edsr(), save([torch.zeros(1)], tmp_path))
    with pytest.raises(ValueError, match="expected a checkpoint path or a loaded mapping, got int"):
        load_state_dict_any(3)


def test_explicit_fmt_overrides_detection():
    ref = BasicRCAN(num_feat=16, num_group=3, num_block=2, squeeze_factor=4)
    sd = load_state_dict_any(ref.state_dict(), fmt="basicsr")
    assert sd.keys() == tiny_rcan().state_dict().keys()
    with pytest.raises(
        ValueError, match=r"format 'ours'.*missing keys: \[body.0.blocks.0.attention.down.bias"
    ):
        load_pretrained(tiny_rcan(), ref.state_dict(), fmt="ours")


# ------------------------------------------------------------------------ errors a user sees
def test_keys_that_do_not_fit_are_listed():
    with pytest.raises(
        ValueError, match=r"missing keys: \[body.3.conv1.bias, body.3.conv1.weight.*\]; unexpected keys: \[\]"
    ):
        load_pretrained(tiny_edsr(n_blocks=4), tiny_edsr(n_blocks=3).state_dict())
    # an x2 checkpoint has one upsampling stage, an x4 model two
    with pytest.raises(ValueError, match=r"missing keys: \[upsample.2.bias, upsample.2.weight\]"):
        load_pretrained(tiny_edsr(scale=4), tiny_edsr(scale=2).state_dict())
    with pytest.raises(
        ValueError,
        match=r"\(format 'ours'\) does not fit.*unexpected keys: \[body.0.blocks.0.*\(\d+ in all\)",
    ):
        load_pretrained(tiny_edsr(n_feats=16), tiny_rcan().state_dict())


def test_shapes_that_do_not_fit_name_the_key_and_both_shapes(tmp_path):
    path = save(tiny_edsr(scale=3).state_dict(), tmp_path)
    msg = (
        rf"checkpoint '{path}' does not fit the model: upsample.0.weight has shape \(72, 8, 3, 3\) in the "
        r"checkpoint but \(32, 8, 3, 3\) in the model"
    )
    with pytest.raises(ValueError, match=msg):
        load_pretrained(tiny_edsr(scale=4), path)
    with pytest.raises(
        ValueError, match=r"conv_first.weight has shape \(16, 3, 3, 3\) in the checkpoint but \(8, 3, 3, 3\)"
    ):
        load_pretrained(tiny_edsr(n_feats=8), tiny_edsr(n_feats=16).state_dict(), strict=False)


def test_official_mean_shift_must_match_the_model():
    official = OfficialEDSR(n_resblocks=1, n_feats=8, rgb_range=1)  # trained on [0, 1] images
    with pytest.raises(
        ValueError,
        match=r"sub_mean shifts by rgb_range \* rgb_mean = \[0.448.*but the model by img_range \* mean = \[1",
    ):
        load_pretrained(EDSR(n_feats=8, n_blocks=1), official.state_dict())
    model = load_pretrained(EDSR(n_feats=8, n_blocks=1, img_range=1.0), official.state_dict())
    assert same_output(official, model)
    with pytest.raises(ValueError, match="sub_mean divides by an rgb_std != 1"):
        load_pretrained(EDSR(n_feats=8, n_blocks=1), OfficialEDSR(1, 8, rgb_std=(0.5, 1, 1)).state_dict())
