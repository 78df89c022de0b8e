"""Every preset composes and builds the objects it names (no training, no data on disk needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.names import readable_override, short_run_name
from meta_kd_sr.models import EDSR, RCAN

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
DISTILL = sorted(p.stem for p in (Path(config_dir()) / "distill").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = _compose(
        [f"experiment={name}", "teacher.ckpt_path=/some/teacher.pt"]
        if "kd" in name
        else [f"experiment={name}"]
    )
    assert cfg.model._target_ in ("meta_kd_sr.models.EDSR", "meta_kd_sr.models.RCAN")
    assert cfg.data.train.patch_size == cfg.lq_patch * cfg.scale
    if "mkd" in name:
        assert cfg.data.meta is not None and cfg.distill.loss._target_.endswith("KRNetLoss")


@pytest.mark.parametrize("name", DISTILL)
def test_distill_presets_build(name):
    cfg = _compose([f"distill={name}"])
    distiller = instantiate(
        cfg.distill,
        student_channels={"f1": 8, "f2": 8, "f3": 8},
        teacher_channels={"f1": 16, "f2": 16, "f3": 16},
    )
    assert distiller.needs_teacher == (name != "none")
    assert bool(distiller.meta_parameters()) == (name.startswith("mkd") and name != "mkd_frozen")


@pytest.mark.parametrize(
    ("preset", "cls", "params"),
    [("edsr_baseline", EDSR, 1_517_571), ("rcan_student", RCAN, 5_171_315)],
)
def test_model_presets_are_the_spec_sizes(preset, cls, params):
    net = instantiate(_compose([f"model={preset}"]).model)
    assert isinstance(net, cls) and sum(p.numel() for p in net.parameters()) == params


def test_scale_and_patch_follow_one_number():
    cfg = _compose(["experiment=div2k_edsr", "scale=3"])  # the paper recipe: 48 LR pixels at every scale
    assert cfg.model.scale == cfg.data.train.scale == 3 and cfg.data.train.patch_size == 144


def test_gpu_trainer_preset_builds_a_cuda_trainer_config():
    """trainer=gpu: one CUDA device in float32 (TF32 convolutions), no cuDNN autotuning (README: measured)."""
    cfg = _compose(["trainer=gpu"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 1, "32-true")
    assert cfg.trainer.benchmark is False and cfg.trainer.max_steps == _compose([]).trainer.max_steps


def test_the_bare_command_is_a_quick_cpu_run_and_the_paper_recipe_one_override_away():
    bare = _compose([])
    assert bare.model.n_feats == 16 and bare.trainer.accelerator == "cpu"
    assert bare.trainer.max_steps <= 2000 and bare.data.train._target_.endswith("EmbeddedPhotos")
    paper = _compose(["experiment=div2k_edsr_kd", "teacher.ckpt_path=/some/teacher.pt"])
    assert (paper.model.n_feats, paper.model.n_blocks, paper.trainer.max_steps) == (64, 16, 200000)
    assert paper.lq_patch == 48 and paper.data.batch_size == 16 and paper.optim.optimizer.lr == 1.0e-4


def test_sweep_run_dirs_are_short_and_readable():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused"], return_hydra_config=True)
    overrides = (
        "distill.kd_weight=3.1622776601683795,meta.alpha=0.012345678901234567,meta.lr=0.00012345678901234"
    )
    cfg.hydra.job.num, cfg.hydra.job.override_dirname = 3, overrides
    assert cfg.hydra.sweep.subdir == "3_distill.kd_weight=3.16,meta.alpha=0.0123,meta.lr=0.000123"
    many = ",".join(f"model.option_{i}=0.12345678901234" for i in range(8))
    name = short_run_name(many)
    assert len(name) == 96 and name.startswith("model.option_0=0.123,") and short_run_name(many + "1") != name
    assert readable_override("seed=3") == "seed=3" and readable_override("data=div2k") == "data=div2k"
