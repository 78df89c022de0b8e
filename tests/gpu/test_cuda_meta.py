"""CUDA: the three meta engines agree in float64 (and with CPU); bf16 autocast agrees with float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.meta_grads import build, meta_grad
from helpers.run_if import RunIf
from meta_kd_sr.meta import ENGINES


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@RunIf(min_gpus=1)
@pytest.mark.parametrize("engine", ENGINES)
def test_engines_agree_on_cuda_in_float64(engine):
    on_cpu = meta_grad(*build(device="cpu", dtype=torch.float64), "reference")  # the textbook engine on CPU
    on_cuda = meta_grad(*build(device="cuda", dtype=torch.float64), engine)
    assert on_cpu.abs().sum() > 0
    assert rel(on_cuda, on_cpu) <= 1e-10, f"{engine} on CUDA vs reference on CPU: {rel(on_cuda, on_cpu):.2e}"


@RunIf(bf16_cuda=True)
@pytest.mark.parametrize("engine", ENGINES)
def test_bf16_meta_gradient_agrees_with_float32_on_cuda(engine):
    parts = build(device="cuda")
    f32 = meta_grad(*parts, engine)
    b16 = meta_grad(*parts, engine, bf16=True)
    cosine = F.cosine_similarity(f32, b16, dim=0).item()
    assert cosine >= 0.99, f"bf16 meta-gradient cosine to float32 on CUDA is {cosine:.4f}"
    assert 0.5 < (b16.norm() / f32.norm()).item() < 2.0
