"""End-to-end training through the composed Hydra config: supervised, every KD baseline, meta KD."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from helpers.train_config import compose_train
from meta_kd_sr.cli.train import build_module, train
from meta_kd_sr.cli.wandb_view import config_keys, history_keys, wait_for_finished_run
from meta_kd_sr.data.transforms import bicubic_downscale
from meta_kd_sr.evaluation.metrics import psnr_y
from meta_kd_sr.models.checkpoint import student_from_checkpoint

TEACHER = ["teacher.net.n_feats=16", "teacher.net.n_blocks=2"]
METHODS = ["none", "output", "fitnet", "at", "fsp", "fakd", "mkd", "mkd_static", "mkd_nocorr", "mkd_frozen"]


def _kd_overrides(method: str, ckpt) -> list[str]:
    data = ["data=embedded_meta"] if method.startswith("mkd") else []
    return ["experiment=tiny_kd", f"distill={method}", f"teacher.ckpt_path={ckpt}", *TEACHER, *data]


def test_supervised_run_writes_checkpoint_eval_and_student(tmp_path, photos_uint8):
    bench = tmp_path / "bench" / "Tiny" / "HR"  # a benchmark folder: reported under its parent's name
    bench.mkdir(parents=True)
    for name in ("chelsea", "coffee"):  # sides not multiples of 4: the protocol crops them
        Image.fromarray(photos_uint8[name][:45, :50]).save(bench / f"{name}.png")
    result = train(compose_train(tmp_path, ["experiment=tiny_sr", f"evaluation.hr_dirs=[{bench}]"]))
    assert result["iterations"] == 4
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["val"]["psnr_y"] == pytest.approx(result["val"]["psnr_y"])
    assert 5 < saved["val"]["psnr_y"] < 60 and 0 < saved["val"]["ssim_y"] <= 1
    net, config = student_from_checkpoint(saved["student"])
    assert config["_target_"] == "meta_kd_sr.models.EDSR" and net.scale == 4
    # the benchmark evaluation after fit == the protocol written out on the exported student
    expected = []
    for name in ("chelsea", "coffee"):
        hr = torch.from_numpy(photos_uint8[name][:44, :48].copy()).permute(2, 0, 1)
        lq = bicubic_downscale(hr, 4).float().unsqueeze(0) / 255
        with torch.no_grad():
            sr = net(lq).clamp(0, 1)
        expected.append(psnr_y(sr, hr.float().unsqueeze(0) / 255, crop_border=4).item())
    tiny = saved["benchmarks"]["Tiny"]
    assert tiny["n_images"] == 2 and tiny["psnr_y"] == pytest.approx(sum(expected) / 2, abs=1e-9)


def _fit(cfg, tmp_path):
    """Fit the module of ``cfg`` as train() does, keeping the module object to inspect it afterwards."""
    pl.seed_everything(cfg.seed)
    module = build_module(cfg)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[checkpoint])
    return module, trainer, checkpoint


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_student_and_leaves_teacher_untouched(tmp_path, tiny_teacher_ckpt, method):
    cfg = compose_train(tmp_path, _kd_overrides(method, tiny_teacher_ckpt))
    module, trainer, checkpoint = _fit(cfg, tmp_path)
    teacher0 = {k: v.clone() for k, v in module.teacher.state_dict().items()}  # parameters and buffers
    student0 = {k: v.clone() for k, v in module.student.state_dict().items()}
    krnet0 = {k: v.clone() for k, v in module.distiller.kd_losses.state_dict().items()}
    trainer.fit(module, datamodule=instantiate(cfg.data))
    assert trainer.global_step == cfg.trainer.max_steps
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher0[k]), f"teacher tensor {k} changed"
    assert not module.teacher.training
    state = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith("teacher.")], "teacher tensors leaked into the checkpoint"
    unchanged = [k for k, v in student0.items() if torch.equal(v, state[f"student.{k}"])]
    assert not unchanged, f"student tensors that did not move: {unchanged}"
    moved = [k for k, v in krnet0.items() if not torch.equal(v, module.distiller.kd_losses.state_dict()[k])]
    if method in ("mkd", "mkd_static", "mkd_nocorr"):
        assert sorted(moved) == sorted(krnet0), "every KRNet parameter must be trained by the meta-gradient"
        assert trainer.callback_metrics["train/meta_grad_norm"] > 0
        assert torch.isfinite(trainer.callback_metrics["train/loss_meta"])
    else:
        assert not moved


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_in_bf16_mixed(tmp_path, tiny_teacher_ckpt, method):
    """``trainer.precision=bf16-mixed``: every method trains, the meta step included, weights stay float32."""
    cfg = compose_train(tmp_path, [*_kd_overrides(method, tiny_teacher_ckpt), "trainer.precision=bf16-mixed"])
    module, trainer, checkpoint = _fit(cfg, tmp_path)
    student0 = {k: v.clone() for k, v in module.student.state_dict().items()}
    seen = []
    hook = module.student.conv_first.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    trainer.fit(module, datamodule=instantiate(cfg.data))
    hook.remove()
    assert trainer.global_step == cfg.trainer.max_steps
    assert torch.bfloat16 in seen, "the student's convolutions did not run in bfloat16"
    state = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)["state_dict"]
    assert all(
        v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point()
    )
    assert all(
        not torch.equal(v, state[f"student.{k}"]) for k, v in student0.items() if v.is_floating_point()
    )
    if method in ("mkd", "mkd_static", "mkd_nocorr"):
        assert trainer.callback_metrics["train/meta_grad_norm"] > 0
        assert trainer.callback_metrics["train/meta_skipped"] == 0


def test_teacher_psnr_is_logged_at_fit_start(tmp_path, tiny_teacher_ckpt):
    result = train(compose_train(tmp_path, _kd_overrides("output", tiny_teacher_ckpt)))
    assert result["train_metrics"]["val/teacher_psnr_y"] > 10


def test_max_steps_counts_iterations_with_two_optimizers(tmp_path, tiny_teacher_ckpt):
    result = train(compose_train(tmp_path, [*_kd_overrides("mkd", tiny_teacher_ckpt), "trainer.max_steps=3"]))
    assert result["iterations"] == 3


def test_kd_without_teacher_checkpoint_says_what_to_set(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", "teacher=edsr_tiny_teacher", "distill=fakd"])
    with pytest.raises(Exception, match="teacher.ckpt_path"):
        build_module(cfg)


def test_distiller_needing_teacher_without_one_is_refused(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", "distill=output"])
    with pytest.raises(ValueError, match="needs a teacher"):
        build_module(cfg)


def test_wandb_logger_writes_one_offline_run_per_training(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    results = {}
    for point in ("a", "b"):  # as two points of a local sweep in one process
        results[point] = train(compose_train(tmp_path / point, ["experiment=tiny_sr", "logger=wandb"]))
    for point in ("a", "b"):
        runs = list((tmp_path / point / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1
        records = wait_for_finished_run(runs[0])  # wandb's service process writes the file after finish()
        # one validation in fit, then the evaluation of the best (= that) checkpoint after fit
        logged = [float(v) for v in history_keys(records)["val/psnr_y"]]
        assert logged == pytest.approx([results[point]["val"]["psnr_y"]] * 2)
        assert "student_config" in config_keys(records)
