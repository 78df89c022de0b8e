"""Precision policy: with meta-learning on, only precisions the meta iteration honours may train."""

from __future__ import annotations

import subprocess
import sys

import lightning.pytorch as pl
import pytest

from helpers.meta_setup import tiny_kd_module
from helpers.train_config import FAST, compose_train
from meta_kd_sr.cli.train import train
from meta_kd_sr.meta.settings import META_PRECISIONS, precision_problem
from meta_kd_sr.training.recovery import RunRefused


@pytest.mark.parametrize("precision", ["16-mixed", "16-true", "bf16-true", "transformer-engine"])
def test_meta_learning_refuses_precisions_it_cannot_honour(precision):
    problem = precision_problem(precision, meta_enabled=True)
    assert problem.startswith(f"trainer.precision={precision} is not supported with meta-learning")
    assert "bf16-mixed" in problem and "mkd_frozen" in problem
    assert precision_problem(precision, meta_enabled=False) is None  # Lightning's own steps handle it


@pytest.mark.parametrize("precision", META_PRECISIONS)
def test_meta_learning_accepts_its_precisions(precision):
    assert precision_problem(precision, meta_enabled=True) is None


# On CPU Lightning runs a requested 16-mixed as bf16-mixed (which the meta step honours), so the CPU tests
# of the refusal use 16-true (float16 weights); tests/gpu covers 16-mixed on CUDA.


def test_lightning_runs_16_mixed_as_bf16_mixed_on_cpu():
    assert pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False).precision == "bf16-mixed"


def test_module_setup_refuses_16_true_before_any_step():
    """Library users (no CLI) get the same refusal from ``SRModule.setup``, before the first iteration."""
    module = tiny_kd_module()
    trainer = pl.Trainer(accelerator="cpu", precision="16-true", max_steps=1, logger=False)
    with pytest.raises(ValueError, match=r"trainer.precision=16-true is not supported with meta-learning"):
        trainer.fit(module, train_dataloaders=[])
    assert trainer.global_step == 0


def test_train_refuses_16_true_for_mkd_before_training(tmp_path, tiny_teacher_ckpt):
    kd = ["experiment=tiny_kd", f"teacher.ckpt_path={tiny_teacher_ckpt}", "data=embedded_meta"]
    kd += ["teacher.net.n_feats=16", "teacher.net.n_blocks=2", "trainer.precision=16-true"]
    with pytest.raises(RunRefused, match=r"16-true is not supported with meta-learning"):
        train(compose_train(tmp_path / "mkd", [*kd, "distill=mkd"]))
    assert not list((tmp_path / "mkd").rglob("*.ckpt"))  # refused before any training


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path, tiny_teacher_ckpt):
    args = [sys.executable, "-m", "meta_kd_sr.cli.train", *FAST, f"hydra.run.dir={tmp_path}"]
    args += [
        "experiment=tiny_kd",
        "distill=mkd",
        "data=embedded_meta",
        f"teacher.ckpt_path={tiny_teacher_ckpt}",
    ]
    args += ["teacher.net.n_feats=16", "teacher.net.n_blocks=2", "trainer.precision=16-true"]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "meta-kd-sr-train: error: trainer.precision=16-true is not supported with meta-learning (its "
        "gradients are not loss-scaled): use one of 32-true, 64-true, bf16-mixed (bf16-mixed on GPUs), or "
        "distill=mkd_frozen"
    )
    assert "Traceback" not in run.stderr
