"""CUDA: the non-finite checks take tensors on several devices (a checkpoint: CUDA weights, CPU counters)."""

from __future__ import annotations

import torch

from helpers.run_if import RunIf
from meta_kd_sr.runtime.finite import first_nonfinite_index, first_nonfinite_name


@RunIf(min_gpus=1)
def test_first_nonfinite_over_cpu_and_cuda_tensors():
    cpu, cuda = torch.ones(3), torch.ones(4, device="cuda")
    assert first_nonfinite_index([cpu, cuda]) is None
    bad = cuda.clone()
    bad[2] = float("nan")
    assert first_nonfinite_index([cpu, cuda, torch.full((2,), float("inf")), bad]) == 2
    assert first_nonfinite_index([cpu, bad]) == 1
    state = {"state_dict": {"student.w": bad, "step": torch.tensor(4.0)}}
    assert first_nonfinite_name(state) == "state_dict.student.w"
