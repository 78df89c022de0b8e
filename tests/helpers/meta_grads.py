"""The meta-gradient of a small x4 distillation setup on any device and dtype, optionally in bf16."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from meta_kd_sr.distill import Distiller
from meta_kd_sr.distill.krnet import KRNetLoss
from meta_kd_sr.meta import PseudoStep, meta_gradient
from meta_kd_sr.models import EDSR


def build(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """x4 EDSR student 8 x 3, teacher 32 x 4, the KRNets of conf/distill/mkd.yaml, 16 px patches.

    Built on CPU with ``seed``, then moved: the same weights and batches on every device.
    Returns ``(student, teacher, distiller, (lq, gt, meta_lq, meta_gt))``.
    """
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
    return (*nets, tuple(t.to(device, dtype) for t in (lq, gt, meta_lq, meta_gt)))


def meta_grad(student, teacher, distiller, batch, engine: str, bf16: bool = False) -> torch.Tensor:
    """The flat meta-gradient of the KRNets (on CPU), the whole step under bf16 autocast when ``bf16``."""
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
    assert all(g.dtype == lq.dtype for g in result.grads)  # meta-gradients stay in the weights' dtype
    return torch.cat([g.reshape(-1) for g in result.grads]).cpu()
