"""Speed levers (``speed.*``): channels-last and the compiled teacher give the results of the default path."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.meta_setup import tiny_kd_module
from helpers.train_config import compose_train
from meta_kd_sr.cli.train import build_module
from meta_kd_sr.training.module import SRModule, _channels_last


def with_levers(module: SRModule, **levers) -> SRModule:
    """A copy of ``module`` (same weights, KRNets and settings) with ``levers`` switched on."""
    return SRModule(
        copy.deepcopy(module.student),
        optimizer=module.optimizer_factory,
        scale=module.scale,
        distiller=copy.deepcopy(module.distiller),
        teacher=copy.deepcopy(module.teacher),
        meta=module.meta,
        **levers,
    )


def batch(dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(3)
    lq, meta_lq = torch.rand(2, 2, 3, 8, 8, generator=gen, dtype=dtype)
    gt, meta_gt = torch.rand(2, 2, 3, 16, 16, generator=gen, dtype=dtype)
    return {"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}}


def two_iterations(module: SRModule, data: dict) -> dict[str, torch.Tensor]:
    opts = [entry["optimizer"] for entry in module.configure_optimizers()]
    for _ in range(2):
        module.iteration(data, opts[0], opts[1])
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_channels_last_meta_iterations_equal_the_default_layout():
    base = tiny_kd_module(dtype=torch.float64)
    nhwc = with_levers(base, channels_last=True)
    assert nhwc.student.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.teacher.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    data = batch(torch.float64)
    _, feats = nhwc.teacher_forward(_channels_last(data)["train"]["lq"])
    assert feats["f1"].is_contiguous(memory_format=torch.channels_last)
    expected, got = two_iterations(base, data), two_iterations(nhwc, data)
    assert expected.keys() == got.keys()
    for key, value in expected.items():  # student, adapters and meta-learned KRNets alike
        assert torch.allclose(got[key], value, rtol=1e-10, atol=1e-12), key
    assert any(
        not torch.equal(v, tiny_kd_module(dtype=torch.float64).state_dict()[k]) for k, v in got.items()
    )


def test_compiled_teacher_gives_the_eager_features_and_stays_out_of_the_state_dict():
    base = tiny_kd_module(dtype=torch.float32)
    compiled = with_levers(base, compile_teacher=True)
    lq = batch(torch.float32)["train"]["lq"]
    _, eager = base.teacher_forward(lq)
    _, feats = compiled.teacher_forward(lq)
    assert set(feats) == set(eager)
    for key in eager:
        assert torch.allclose(feats[key], eager[key], rtol=1e-5, atol=1e-5), key
    assert compiled.state_dict().keys() == base.state_dict().keys()  # no _orig_mod entries


@pytest.mark.parametrize("lever", ["channels_last", "compile_teacher", "compile_student"])
def test_speed_options_reach_the_module(tmp_path, lever):
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", f"speed.{lever}=true"])
    assert getattr(build_module(cfg), lever) is True
    assert getattr(build_module(compose_train(tmp_path, ["experiment=tiny_sr"])), lever) is False


def plain_iterations(module: SRModule, data: dict, n: int = 2) -> dict[str, torch.Tensor]:
    opt = module.configure_optimizers()[0]["optimizer"]
    for _ in range(n):
        module.iteration(data["train"], opt)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_compiled_student_serves_plain_iterations_with_the_eager_results():
    base = tiny_kd_module(dtype=torch.float32, meta_learn=False)  # KRNets frozen: plain iterations only
    compiled = with_levers(base, compile_student=True)
    data = batch(torch.float32)
    expected, got = plain_iterations(base, data), plain_iterations(compiled, data)
    assert "student" in compiled._compiled and "student" not in base._compiled
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-6), key
    assert compiled.state_dict().keys() == base.state_dict().keys()


def test_meta_iterations_keep_the_eager_student_when_compile_student_is_set():
    base = tiny_kd_module(dtype=torch.float64)
    lever = with_levers(base, compile_student=True)
    data = batch(torch.float64)
    expected, got = two_iterations(base, data), two_iterations(lever, data)
    assert "student" not in lever._compiled  # higher patches the eager module
    assert all(torch.equal(got[k], v) for k, v in expected.items())
