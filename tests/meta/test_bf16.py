"""bf16 autocast (``trainer.precision=bf16-mixed``): the meta-gradient agrees with float32 on one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.meta_grads import build, meta_grad
from meta_kd_sr.meta import ENGINES


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
