"""CUDA training: every method in bf16-mixed (trainer=gpu); precisions; checkpoints CPU <-> CUDA."""

from __future__ import annotations

import pytest
import torch

from helpers.run_if import RunIf
from helpers.train_config import compose_train
from meta_kd_sr.cli.train import train
from meta_kd_sr.models.checkpoint import read_checkpoint, student_from_checkpoint
from meta_kd_sr.training.recovery import RunRefused

TEACHER = ["teacher.net.n_feats=16", "teacher.net.n_blocks=2"]
METHODS = ["none", "output", "fitnet", "at", "fsp", "fakd", "mkd", "mkd_static", "mkd_nocorr", "mkd_frozen"]
GPU = ["trainer=gpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _kd(method: str, ckpt) -> list[str]:
    data = ["data=embedded_meta"] if method.startswith("mkd") else []
    return ["experiment=tiny_kd", f"distill={method}", f"teacher.ckpt_path={ckpt}", *TEACHER, *data]


def _gpu_train(tmp_path, overrides):
    return train(compose_train(tmp_path, [*GPU, *overrides], accelerator="gpu"))


@RunIf(bf16_cuda=True)
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_on_gpu_in_bf16_mixed(tmp_path, tiny_teacher_ckpt, method):
    result = _gpu_train(tmp_path, [*_kd(method, tiny_teacher_ckpt), "trainer.precision=bf16-mixed"])
    assert result["iterations"] == 4
    assert 5 < result["val"]["psnr_y"] < 60
    state = read_checkpoint(result["checkpoint"])["state_dict"]
    assert all(
        v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values() if v.is_floating_point()
    )
    if method in ("mkd", "mkd_static", "mkd_nocorr"):
        assert result["train_metrics"]["train/meta_grad_norm"] > 0


@RunIf(min_gpus=1)
def test_16_mixed_is_refused_with_meta_learning_and_trains_output_kd(tmp_path, tiny_teacher_ckpt):
    with pytest.raises(RunRefused, match=r"trainer.precision=16-mixed is not supported with meta-learning"):
        _gpu_train(tmp_path / "mkd", [*_kd("mkd", tiny_teacher_ckpt), "trainer.precision=16-mixed"])
    result = _gpu_train(
        tmp_path / "output", [*_kd("output", tiny_teacher_ckpt), "trainer.precision=16-mixed"]
    )
    assert result["iterations"] == 4 and 5 < result["val"]["psnr_y"] < 60


@RunIf(min_gpus=1)
@pytest.mark.parametrize("first", ["cpu", "gpu"])
def test_checkpoint_moves_between_cpu_and_cuda(tmp_path, tiny_teacher_ckpt, first):
    """A run trained on one device resumes on the other; its exported student gives the same SR on both."""
    second = "cpu" if first == "gpu" else "gpu"
    mkd = _kd("mkd", tiny_teacher_ckpt)
    run = train(compose_train(tmp_path / first, [*(GPU if first == "gpu" else []), *mkd], accelerator=first))
    resumed = train(
        compose_train(
            tmp_path / second,
            [*(GPU if second == "gpu" else []), *mkd, "trainer.max_steps=6", f"resume={run['checkpoint']}"],
            accelerator=second,
        )
    )
    assert resumed["iterations"] == 6
    net, _ = student_from_checkpoint(resumed["student"])
    lq = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        on_cpu = net(lq)
        on_cuda = net.cuda()(lq.cuda()).cpu()
    assert (on_cpu - on_cuda).abs().max().item() < 1e-3  # float32 (TF32 convolutions on CUDA)
