"""CUDA: the three meta engines agree in float64 (and with CPU); bf16 autocast agrees with float32."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from helpers.run_if import RunIf
from meta_kd_sr.distill import Distiller
from meta_kd_sr.distill.krnet import KRNetLoss
from meta_kd_sr.meta import ENGINES, PseudoStep, meta_gradient
from meta_kd_sr.models import EDSR


def build(device: str, dtype: torch.dtype, seed: int = 0):
    """x4 EDSR student 8 x 3, teacher 32 x 4, the KRNets of conf/distill/mkd.yaml (built on CPU, moved)."""
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
    nets = [m.to(device, dtype) for m in (student, teacher, distiller)]
    return (*nets, [t.to(device, dtype) for t in (lq, gt, meta_lq, meta_gt)])


def meta_grad(student, teacher, distiller, batch, engine: str, bf16: bool = False) -> torch.Tensor:
    lq, gt, meta_lq, meta_gt = batch
    with torch.autocast(lq.device.type, dtype=torch.bfloat16, enabled=bf16):
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
    return torch.cat([g.reshape(-1) for g in result.grads]).cpu()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@RunIf(min_gpus=1)
@pytest.mark.parametrize("engine", ENGINES)
def test_engines_agree_on_cuda_in_float64(engine):
    on_cpu = meta_grad(*build("cpu", torch.float64), "reference")  # the textbook engine on CPU
    on_cuda = meta_grad(*build("cuda", torch.float64), engine)
    assert on_cpu.abs().sum() > 0
    assert rel(on_cuda, on_cpu) <= 1e-10, f"{engine} on CUDA vs reference on CPU: {rel(on_cuda, on_cpu):.2e}"


@RunIf(bf16_cuda=True)
@pytest.mark.parametrize("engine", ENGINES)
def test_bf16_meta_gradient_agrees_with_float32_on_cuda(engine):
    parts = build("cuda", torch.float32)
    f32 = meta_grad(*parts, engine)
    b16 = meta_grad(*parts, engine, bf16=True)
    cosine = F.cosine_similarity(f32, b16, dim=0).item()
    assert cosine >= 0.99, f"bf16 meta-gradient cosine to float32 on CUDA is {cosine:.4f}"
    assert 0.5 < (b16.norm() / f32.norm()).item() < 2.0
