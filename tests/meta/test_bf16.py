"""bf16 autocast (``trainer.precision=bf16-mixed``): the meta-gradient agrees with float32 on one batch."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from meta_kd_sr.distill import Distiller
from meta_kd_sr.distill.krnet import KRNetLoss
from meta_kd_sr.meta import ENGINES, PseudoStep, meta_gradient
from meta_kd_sr.models import EDSR


def build(seed: int = 0):
    """x4 EDSR student 8 x 3, teacher 32 x 4, the KRNets of conf/distill/mkd.yaml, 16px patches."""
    torch.manual_seed(seed)
    student, teacher = EDSR(4, n_feats=8, n_blocks=3), EDSR(4, n_feats=32, n_blocks=4).eval()
    distiller = Distiller(
        loss=functools.partial(KRNetLoss, n_kernels=8, hidden=64),
        student_channels=student.feature_channels,
        teacher_channels=teacher.feature_channels,
        feature_scale=1 / 255,
    )
    gen = torch.Generator().manual_seed(seed)
    lq, meta_lq = torch.rand(2, 4, 3, 16, 16, generator=gen)
    gt = F.interpolate(lq, scale_factor=4, mode="bicubic").clamp(0, 1)
    meta_gt = F.interpolate(meta_lq, scale_factor=4, mode="bicubic").clamp(0, 1)
    return student, teacher, distiller, (lq, gt, meta_lq, meta_gt)


def meta_grad(student, teacher, distiller, batch, engine: str, bf16: bool) -> torch.Tensor:
    lq, gt, meta_lq, meta_gt = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            sr_t, feats_t = teacher(lq, return_feats=True)

        def inner(sr, feats):
            return distiller(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

        result = meta_gradient(
            student,
            distiller.meta_parameters(),
            inner,
            lq,
            meta_lq,
            meta_gt,
            pseudo=PseudoStep(),
            engine=engine,
        )
    assert all(g.dtype == torch.float32 for g in result.grads)
    return torch.cat([g.reshape(-1) for g in result.grads])


@pytest.mark.parametrize("engine", ENGINES)
def test_bf16_meta_gradient_agrees_with_float32(engine):
    student, teacher, distiller, batch = build()
    seen = []
    hook = student.conv_first.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    f32 = meta_grad(student, teacher, distiller, batch, engine, bf16=False)
    b16 = meta_grad(student, teacher, distiller, batch, engine, bf16=True)
    hook.remove()
    assert seen.count(torch.bfloat16) >= 1 and seen.count(torch.float32) >= 1  # both precisions really ran
    cosine = F.cosine_similarity(f32, b16, dim=0).item()
    assert cosine >= 0.99, f"bf16 meta-gradient cosine to float32 is {cosine:.4f}"
    assert 0.5 < (b16.norm() / f32.norm()).item() < 2.0
