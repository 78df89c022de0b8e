"""Every command refuses a user error in one line naming the file or option, with exit status 2."""

from __future__ import annotations

import errno
import hashlib
import inspect
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers.train_config import FAST, compose_train
from meta_kd_sr.cli import config_dir, evaluate, export, prepare, train, upscale
from meta_kd_sr.cli.run_guard import RunDirGuard
from meta_kd_sr.data import save_png
from meta_kd_sr.models import EDSR
from meta_kd_sr.runtime.console import (
    ALEMBIC_NOTE,
    TORCHVISION_NOTE,
    WEIGHTS_ONLY_NOTE,
    drop_exact_log,
    error_line,
    quiet_known_noise,
)
from meta_kd_sr.training import recovery


def _run(monkeypatch, capsys, main, *argv: str) -> str:
    monkeypatch.setattr(sys, "argv", ["cmd", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_refused_run_dir_reuse_leaves_every_file_of_the_old_run_byte_identical(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    for name, text in {
        ".hydra/config.yaml": "distill: none-record\n",
        ".hydra/hydra.yaml": "hydra:\n  runtime:\n    choices:\n      distill: none\n",
        ".hydra/overrides.yaml": "- experiment=tiny_sr\n",
        "checkpoints/last.ckpt": "old checkpoint",
        "student.pt": "old student",
        "eval.json": "{}",
        "train.log": "old log\n",
    }.items():
        (run / name).write_text(text)
    before = _digests(run)
    err = _run(monkeypatch, capsys, train.main, "experiment=tiny_kd", f"hydra.run.dir={run}")
    assert err.startswith(f"meta-kd-sr-train: error: run dir '{run}' already holds a run"), err
    assert "overwrite=true" in err and f"resume={run / 'checkpoints' / 'last.ckpt'}" in err
    assert _digests(run) == before


def test_missing_teacher_is_one_line_naming_the_shipped_teacher_and_the_recipe(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["experiment=tiny_sr", "teacher=edsr_tiny_teacher", "distill=output", f"hydra.run.dir={run}"]
    err = _run(monkeypatch, capsys, train.main, *argv)
    assert err.startswith("meta-kd-sr-train: error: teacher.ckpt_path is not set"), err
    assert "tiny_teacher_x4.pt" in err and "experiment=tiny_teacher" in err


def test_unknown_speed_option_is_one_line_naming_the_known_ones(tmp_path, monkeypatch, capsys):
    argv = ["experiment=tiny_sr", "+speed.channel_last=true", f"hydra.run.dir={tmp_path / 'run'}"]
    err = _run(monkeypatch, capsys, train.main, *argv)
    assert err == (
        "meta-kd-sr-train: error: unknown speed option(s) ['channel_last']: "
        "choose from ['channels_last', 'compile_teacher', 'compile_student']"
    )
    module_options = inspect.signature(train.SRModule).parameters
    assert all(module_options[name].default is False for name in train.SPEED_OPTIONS)
    speed = OmegaConf.load(Path(config_dir()) / "train.yaml").speed
    assert tuple(speed) == train.SPEED_OPTIONS


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["cmd", "ckpt_path=bicubic", "input=/nope", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="input not found: /nope"):
        upscale.main()


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    folder = tmp_path / "HR"
    folder.mkdir()
    save_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), folder / "ok.png")
    return folder


def test_eval_bad_checkpoint(tmp_path, monkeypatch, capsys, hr_folder):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    argv = [f"ckpt_path={bad}", f"hr_dirs=[{hr_folder}]", f"hydra.run.dir={tmp_path / 'e'}"]
    err = _run(monkeypatch, capsys, evaluate.main, *argv)
    assert err.startswith("meta-kd-sr-eval: error: ") and str(bad) in err, err


def test_eval_corrupt_image(tmp_path, monkeypatch, capsys, hr_folder):
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    argv = ["ckpt_path=bicubic", f"hr_dirs=[{hr_folder}]", f"hydra.run.dir={tmp_path / 'e'}"]
    err = _run(monkeypatch, capsys, evaluate.main, *argv)
    assert err.startswith("meta-kd-sr-eval: error: ") and "broken.png" in err, err


def test_eval_image_too_small_for_the_scale(tmp_path, monkeypatch, capsys, hr_folder):
    save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), hr_folder / "tiny.png")
    argv = ["ckpt_path=bicubic", f"hr_dirs=[{hr_folder}]", f"hydra.run.dir={tmp_path / 'e'}"]
    err = _run(monkeypatch, capsys, evaluate.main, *argv)
    assert err.startswith("meta-kd-sr-eval: error: ") and "tiny.png" in err, err


def test_eval_missing_mandatory_option(tmp_path, monkeypatch, capsys):
    err = _run(monkeypatch, capsys, evaluate.main, "ckpt_path=bicubic", f"hydra.run.dir={tmp_path / 'e'}")
    assert (
        err == "meta-kd-sr-eval: error: hr_dirs= is required (it is ??? in the config): pass hr_dirs=<value>"
    )


def test_training_image_too_small_for_the_patch(tmp_path, monkeypatch, capsys):
    hr = tmp_path / "div2k" / "DIV2K_train_HR"
    hr.mkdir(parents=True)
    save_png(torch.randint(0, 256, (3, 200, 200), dtype=torch.uint8), hr / "0001.png")
    save_png(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8), hr / "0002.png")
    argv = [
        "data=div2k",
        f"paths.div2k={tmp_path / 'div2k'}",
        "data.train.index_range=[1,2]",
        "data.val=null",
    ]
    argv += [
        "data.num_workers=0",
        "data.persistent_workers=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    err = _run(monkeypatch, capsys, train.main, *argv)
    assert err.startswith("meta-kd-sr-train: error: 1 of 2 training images cannot be used"), err
    assert f"{hr / '0002.png'}: HR 40x40" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    train.train(compose_train(out, ["experiment=tiny_sr"]))
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("lq_patch=12", "lq_patch=8 but this run asks lq_patch=12"),
        ("data.batch_size=2", "data.batch_size=4 but"),
    ],
)
def test_resume_with_another_patch_or_batch_is_refused(
    tmp_path, monkeypatch, capsys, finished_run, change, message
):
    last = finished_run / "checkpoints" / "last.ckpt"
    argv = [*FAST, "experiment=tiny_sr", f"resume={last}", change, f"hydra.run.dir={tmp_path / 'r'}"]
    err = _run(monkeypatch, capsys, train.main, *argv)
    assert err.startswith(f"meta-kd-sr-train: error: resume={last} was trained with"), err
    assert message in err


def test_read_only_upscale_output_names_the_file(tmp_path, monkeypatch, capsys):
    save_png(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8), tmp_path / "in.png")

    def read_only(path, durable=True):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(upscale, "atomic_path", read_only)
    monkeypatch.setattr("meta_kd_sr.data.io.atomic_path", read_only)
    out = tmp_path / "out"
    argv = ["ckpt_path=bicubic", "scale=2", f"input={tmp_path / 'in.png'}", f"output={out}"]
    err = _run(monkeypatch, capsys, upscale.main, *argv, f"hydra.run.dir={tmp_path / 'r'}")
    assert err == (
        f"meta-kd-sr-upscale: error: Permission denied: {out / 'in_x2.png'} "
        "(fix its permissions or choose another folder)"
    )


def test_full_disk_names_the_checkpoint_and_what_to_do(tmp_path, monkeypatch):
    def full(obj, f):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos\nbasic_ios::clear: iostream error"
        )

    monkeypatch.setattr(recovery.torch, "save", full)
    monkeypatch.setattr(recovery.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as err:
        recovery.atomic_save({"x": 1}, tmp_path / "ckpt" / "last.ckpt")
    assert error_line(err.value) == (
        f"could not write: no space left on device: {tmp_path / 'ckpt' / 'last.ckpt'} "
        "(the disk is full: free some space or choose another folder)"
    )
    assert not list((tmp_path / "ckpt").iterdir())  # no temporary left behind


@pytest.fixture
def student_pt(tmp_path) -> Path:
    net = EDSR(scale=2, n_feats=8, n_blocks=2)
    config = {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 2}
    torch.save({"state_dict": net.state_dict(), "config": config}, tmp_path / "student.pt")
    return tmp_path / "student.pt"


def test_export_takes_key_value_like_the_other_commands_and_the_old_form(tmp_path, student_pt, capsys):
    export.main([f"ckpt_path={student_pt}", f"out={tmp_path / 'a'}", "formats=[pt]"])
    export.main([str(student_pt), str(tmp_path / "b.pt"), "--formats", "pt"])
    assert (tmp_path / "a.pt").is_file() and (tmp_path / "b.pt").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export.main([f"ckpt_path={student_pt}", "formats=[pt]", "opset=x"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("meta-kd-sr-export: error: out= is required"), err
    with pytest.raises(SystemExit) as exit_info:
        export.main([f"ckpt_path={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'c'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "nope.ckpt" in err and len(err.splitlines()) == 1, err


def test_export_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "ckpt_path=" in out and "``" not in out


def test_prepare_missing_folder(tmp_path, monkeypatch, capsys):
    argv = [f"hr_dir={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'p'}"]
    err = _run(monkeypatch, capsys, prepare.main, *argv)
    assert err.startswith("meta-kd-sr-prepare: error: ") and str(tmp_path / "nope") in err, err


def test_known_noise_is_dropped_by_its_exact_text(caplog):
    quiet_known_noise()
    drop_exact_log(*TORCHVISION_NOTE)
    notes = [(*WEIGHTS_ONLY_NOTE, None), (*TORCHVISION_NOTE, "torchvision::nms"), (*ALEMBIC_NOTE, "x")]
    for name, text, arg in notes:
        logger = logging.getLogger(name)
        with caplog.at_level(logging.INFO, logger=name):
            logger.warning(text, arg) if arg else logger.warning(text)
            logger.warning("another message")
    assert [r.getMessage() for r in caplog.records] == ["another message"] * 3


@pytest.mark.parametrize(
    ("extra", "env", "refused"),
    [
        ([], {}, True),
        (["overwrite=true"], {}, False),
        (["resume=RUN/checkpoints/last.ckpt"], {}, False),
        ([], {"LOCAL_RANK": "1"}, False),  # a DDP rank started by Lightning: rank 0 has checked the dir
    ],
)
def test_run_dir_guard_allows_resume_overwrite_and_other_ranks(
    tmp_path, monkeypatch, capsys, extra, env, refused
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text("{}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    overrides = [o.replace("RUN", str(run)) for o in extra]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.run.dir={run}", *overrides], return_hydra_config=True)
    if refused:
        with pytest.raises(SystemExit):
            RunDirGuard().on_run_start(cfg)
        assert "already holds a run (eval.json)" in capsys.readouterr().err
    else:
        RunDirGuard().on_run_start(cfg)
