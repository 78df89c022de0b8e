"""Test helpers: a tiny SR student with three features, tiny KRNets, a hand-derived meta-gradient."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meta_kd_sr.distill import Distiller
from meta_kd_sr.distill.krnet import KRNetLoss
from meta_kd_sr.meta import MetaSettings
from meta_kd_sr.models import EDSR
from meta_kd_sr.training.module import SRModule

SCALE = 2


class TinyStudent(nn.Module):
    """x2 SR net: conv -> tanh conv (+skip) -> conv -> pixel shuffle; features f1, f2, f3 at LR size."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Conv2d(channels, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3 * SCALE**2, 3, padding=1)
        self.up = nn.PixelShuffle(SCALE)

    def forward(self, lq, return_feats=False):
        f1 = self.head(lq)
        f2 = torch.tanh(self.body(f1))
        f3 = f1 + f2
        sr = self.up(self.tail(f3))
        return (sr, {"f1": f1, "f2": f2, "f3": f3}) if return_feats else sr


@dataclass
class Setup:
    student: TinyStudent
    krnets: nn.ModuleDict
    feats_t: dict
    lq: torch.Tensor
    gt: torch.Tensor
    meta_lq: torch.Tensor
    meta_gt: torch.Tensor

    @property
    def meta_params(self) -> list[torch.Tensor]:
        return list(self.krnets.parameters())

    def inner_loss(self, sr, feats):
        kd = sum(self.krnets[k](feats[k], self.feats_t[k]) for k in self.krnets)
        return F.l1_loss(sr, self.gt) + kd

    def args(self):
        return (self.student, self.meta_params, self.inner_loss, self.lq, self.meta_lq, self.meta_gt)


def build_setup(dtype=torch.float64, channels=4, size=6, batch=2, seed=0, **krnet_kwargs) -> Setup:
    torch.manual_seed(seed)
    student = TinyStudent(channels).to(dtype)
    teacher = TinyStudent(channels).to(dtype)
    kw = {"n_kernels": 3, "hidden": 5, **krnet_kwargs}
    krnets = nn.ModuleDict({k: KRNetLoss(channels, **kw) for k in ("f1", "f2", "f3")}).to(dtype)
    lq, meta_lq = torch.rand(2, batch, 3, size, size, dtype=dtype)
    gt, meta_gt = torch.rand(2, batch, 3, SCALE * size, SCALE * size, dtype=dtype)
    with torch.no_grad():
        feats_t = teacher(lq, return_feats=True)[1]
    return Setup(student, krnets, feats_t, lq, gt, meta_lq, meta_gt)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a, b) -> float:
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


def meta_loss_grad_at(student: nn.Module, new_params, meta_lq, meta_gt):
    """v = grad of L1(S_theta'(meta_lq), meta_gt) at theta' as constants, on a copy loaded with theta'."""
    fast = copy.deepcopy(student)
    with torch.no_grad():
        for q, p in zip(fast.parameters(), new_params):
            q.copy_(p)
    loss = F.l1_loss(fast(meta_lq), meta_gt)
    return torch.autograd.grad(loss, list(fast.parameters()))


def inner_grads(s: Setup):
    """grad_theta inner_loss(theta, phi) with the graph kept (depends on phi)."""
    loss = s.inner_loss(*s.student(s.lq, return_feats=True))
    return torch.autograd.grad(loss, list(s.student.parameters()), create_graph=True)


def hand_sgd_meta_grad(s: Setup, alphas) -> list[torch.Tensor]:
    """dL_meta/dphi = -sum_i alpha_i d/dphi [g_i(theta, phi) . v_i], v = grad L_meta(theta') held constant."""
    params = list(s.student.parameters())
    g = inner_grads(s)
    new = [p - a * gi for p, a, gi in zip(params, alphas, g)]
    v = meta_loss_grad_at(s.student, new, s.meta_lq, s.meta_gt)
    weighted_dot = sum(a * (gi * vi).sum() for a, gi, vi in zip(alphas, g, v))
    return [-d for d in torch.autograd.grad(weighted_dot, s.meta_params)]


def tiny_kd_module(
    engine: str = "higher",
    n_blocks: int = 2,
    teacher_feats: int = 8,
    dtype: torch.dtype = torch.float64,
    output_weight: float = 0.0,
    meta_learn: bool = True,
):
    """A seeded x2 SRModule: EDSR student (6 ch), teacher, tiny KRNets, Adam 1e-3, meta alpha 0.5, lr 1e-2."""
    torch.manual_seed(0)
    student = EDSR(2, n_feats=6, n_blocks=n_blocks).to(dtype)
    teacher = EDSR(2, n_feats=teacher_feats, n_blocks=n_blocks).to(dtype)
    distiller = Distiller(
        loss=functools.partial(KRNetLoss, n_kernels=3, hidden=5),
        student_channels=student.feature_channels,
        teacher_channels=teacher.feature_channels,
        feature_scale=1 / 255,
        output_weight=output_weight,
        meta_learn=meta_learn,
    ).to(dtype)
    return SRModule(
        student,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        scale=2,
        distiller=distiller,
        teacher=teacher,
        meta=MetaSettings(engine=engine, alpha=0.5, lr=1e-2),
    )
