"""``RunIf``: one decorator for the conditions a test needs (in the style of lightning-hydra-template's).

``@RunIf(min_gpus=1)`` marks a test ``gpu`` and skips it where CUDA is absent; ``@RunIf(bf16_cuda=True)`` also
needs a GPU with bf16. ``pytest -m gpu`` selects exactly the GPU tests, and a CPU-only run skips them with the
reason. Conditions are read when the test module is imported, so ``CUDA_VISIBLE_DEVICES`` set before pytest
starts is honoured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch


def cuda_count() -> int:
    """Visible CUDA devices (0 on a CPU-only build or machine)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class RunIf:
    """Skip a test unless every given condition holds; a GPU condition also adds the ``gpu`` marker."""

    def __new__(cls, min_gpus: int = 0, bf16_cuda: bool = False, **kwargs: Any) -> Callable:
        if kwargs:
            raise ValueError(f"RunIf: unknown conditions {sorted(kwargs)}")
        reasons, gpu = [], min_gpus > 0 or bf16_cuda
        need = max(min_gpus, 1 if bf16_cuda else 0)
        if cuda_count() < need:
            reasons.append(f"needs {need} CUDA device(s), found {cuda_count()}")
        elif bf16_cuda and not torch.cuda.is_bf16_supported():
            reasons.append("needs a CUDA device with bf16 support")
        skip = pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "conditions hold")

        def mark(test: Callable) -> Callable:
            test = skip(test)
            return pytest.mark.gpu(test) if gpu else test

        return mark
