"""A teacher from an official EDSR-PyTorch/RCAN checkpoint equals our own checkpoint of the same weights."""

from __future__ import annotations

import pytest
import torch

from helpers import official_oracle as ORACLE
from meta_kd_sr.models import EDSR, RCAN
from meta_kd_sr.training.teacher import load_teacher

CASES = [
    (
        lambda: ORACLE.OfficialEDSR(n_resblocks=3, n_feats=16, scale=4),
        lambda: EDSR(scale=4, n_feats=16, n_blocks=3),
    ),
    (
        lambda: ORACLE.OfficialRCAN(n_resgroups=3, n_resblocks=2, n_feats=16, reduction=4, scale=2),
        lambda: RCAN(scale=2, n_feats=16, n_groups=3, n_blocks=2, reduction=4),
    ),
]


@pytest.mark.parametrize(("official", "ours"), CASES)
def test_official_checkpoint_teacher_equals_our_checkpoint(tmp_path, official, ours):
    torch.manual_seed(0)
    ref = official().eval()
    torch.save(ref.state_dict(), tmp_path / "official.pt")
    from_official = load_teacher(ours(), tmp_path / "official.pt")
    torch.save(from_official.state_dict(), tmp_path / "ours.pt")
    from_ours = load_teacher(ours(), tmp_path / "ours.pt")
    lq = torch.rand(2, 3, 10, 12)
    with torch.no_grad():
        sr_official, feats_official = from_official(lq, return_feats=True)
        sr_ours, feats_ours = from_ours(lq, return_feats=True)
        expected = ref(lq * 255) / 255  # the official code works on [0, 255]
    assert torch.equal(sr_official, sr_ours)
    for k in feats_ours:
        assert torch.equal(feats_official[k], feats_ours[k])
    torch.testing.assert_close(sr_ours, expected, rtol=0, atol=1e-5)
    assert not from_ours.training and not any(p.requires_grad for p in from_ours.parameters())


def test_teacher_without_checkpoint_is_refused():
    with pytest.raises(ValueError, match="teacher.ckpt_path is not set"):
        load_teacher(EDSR(scale=2, n_feats=8, n_blocks=1), None)


def test_teacher_checkpoint_of_other_architecture_names_the_key(tmp_path):
    torch.save(EDSR(scale=4, n_feats=8, n_blocks=1).state_dict(), tmp_path / "x4.pt")
    with pytest.raises(ValueError, match="upsample"):
        load_teacher(EDSR(scale=3, n_feats=8, n_blocks=1), tmp_path / "x4.pt")
