"""The console scripts as a user runs them: train -> eval (vs the bicubic row), prepare, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from meta_kd_sr.data import EmbeddedPhotos, imresize_uint8, read_image, save_png
from meta_kd_sr.models import EDSR
from meta_kd_sr.models.checkpoint import export_student, student_from_checkpoint

BIN = Path(sys.executable).parent
SMALL = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "lq_patch=8",
    "data.batch_size=4",
    "data.train.samples_per_epoch=32",
]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}


# A guard against a hung command only: the short commands here take seconds even on a loaded machine.
HANG_GUARD_S = 1800


def _command(*args: str, timeout: float | None = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)


def _run(*args: str, timeout: float | None = HANG_GUARD_S) -> subprocess.CompletedProcess:
    proc = _command(*args, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory) -> Path:
    """The embedded validation photos as an HR folder (how users hand benchmark sets to meta-kd-sr-eval)."""
    folder = tmp_path_factory.mktemp("embedded_val") / "HR"
    folder.mkdir()
    for item in EmbeddedPhotos(["chelsea", "coffee"], 4, train=False):
        save_png((item["gt"] * 255).round().to(torch.uint8), folder / f"{item['name']}.png")
    return folder


def _train_then_evaluate(tmp_path: Path, val_folder: Path, train_args: list[str]) -> tuple[dict, dict]:
    """``meta-kd-sr-train experiment=tiny_sr`` then ``meta-kd-sr-eval`` of its checkpoint and of bicubic.

    Returns the run's eval.json and ``{"bicubic" | "ckpt": eval output}``; no timeout (a training).
    """
    run_dir = tmp_path / "run"
    train = [str(BIN / "meta-kd-sr-train"), "experiment=tiny_sr", f"hydra.run.dir={run_dir}", *train_args]
    _run(*train, "trainer.enable_progress_bar=false", "logger=none", timeout=None)
    run = json.loads((run_dir / "eval.json").read_text())
    results = {}
    for name, path in (("bicubic", "bicubic"), ("ckpt", run["checkpoint"])):
        out = tmp_path / f"{name}.json"
        proc = _run(
            str(BIN / "meta-kd-sr-eval"),
            f"ckpt_path={path}",
            "scale=4",
            f"hr_dirs=[{val_folder}]",
            f"output_json={out}",
            f"hydra.run.dir={tmp_path / ('eval_' + name)}",
        )
        assert "PSNR_y" in proc.stdout
        results[name] = json.loads(out.read_text())
        assert results[name]["protocol"]["crop_border"] == 4
        assert results[name][val_folder.parent.name]["n_images"] == 2  # ".../<set>/HR" is reported as <set>
    return run, results


def test_console_training_writes_a_checkpoint_that_evaluates(tmp_path, val_folder):
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "lq_patch=8", "data.batch_size=4"]
    run, results = _train_then_evaluate(tmp_path, val_folder, steps)
    assert run["iterations"] == 2 and Path(run["checkpoint"]).is_file() and Path(run["student"]).is_file()
    bicubic, trained = (results[k][val_folder.parent.name] for k in ("bicubic", "ckpt"))
    assert 5 < bicubic["psnr_y"] < 60 and 5 < trained["psnr_y"] < 60 and 0 < trained["ssim_y"] <= 1
    # the validation in fit ran the same protocol on the same photos (the embedded val split)
    assert trained["psnr_y"] == pytest.approx(run["val"]["psnr_y"], abs=1e-6)


@pytest.mark.slow
def test_tiny_preset_beats_bicubic_and_checkpoint_evaluates(tmp_path, val_folder):
    _, results = _train_then_evaluate(
        tmp_path, val_folder, ["trainer.max_steps=600", "trainer.val_check_interval=600"]
    )
    bicubic, trained = (results[k][val_folder.parent.name] for k in ("bicubic", "ckpt"))
    assert trained["psnr_y"] > bicubic["psnr_y"] + 0.05, (trained, bicubic)


def test_prepare_writes_matlab_lr_folders(tmp_path, val_folder):
    out = tmp_path / "lr"
    _run(
        str(BIN / "meta-kd-sr-prepare"),
        f"hr_dir={val_folder}",
        f"out_dir={out}",
        "scales=[2,4]",
        f"hydra.run.dir={tmp_path / 'prep'}",
    )
    for s in (2, 4):
        hr = read_image(val_folder / "coffee.png")
        lr = read_image(out / f"X{s}" / f"coffeex{s}.png")
        assert torch.equal(lr, imresize_uint8(hr[:, : hr.shape[1] // s * s, : hr.shape[2] // s * s], 1 / s))


def _flops(net: torch.nn.Module) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.rand(1, 3, 12, 12))
    return counter.get_total_flops()


def test_exported_student_is_the_plain_network(tmp_path):
    from helpers.train_config import compose_train
    from meta_kd_sr.cli.train import train

    teacher = train(
        compose_train(tmp_path / "t", ["experiment=tiny_teacher", "model.n_feats=24", "model.n_blocks=2"])
    )
    result = train(
        compose_train(
            tmp_path / "s",
            [
                "experiment=tiny_kd",
                "distill=fitnet",
                f"teacher.ckpt_path={teacher['checkpoint']}",
                "teacher.net.n_feats=24",
                "teacher.net.n_blocks=2",
            ],
        )
    )
    out = export_student(result["checkpoint"], tmp_path / "student.pt")
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert not [k for k in saved["state_dict"] if "adapter" in k or "teacher" in k or "kd_losses" in k]
    net, _ = student_from_checkpoint(out)
    plain = EDSR(scale=4, n_feats=16, n_blocks=3)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters())
    assert _flops(net) == _flops(plain) > 0
    ckpt_state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert any("adapters" in k for k in ckpt_state), "FitNet 16 -> 24 channels trains 1x1 regressors"
    for k, v in net.state_dict().items():
        assert torch.equal(v, ckpt_state[f"student.{k}"])


def test_export_command_line(tmp_path):
    net = EDSR(scale=2, n_feats=8, n_blocks=1)
    ckpt = tmp_path / "model.ckpt"
    config = {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 1}
    torch.save(
        {
            "state_dict": {f"student.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"student_config": config},
        },
        ckpt,
    )
    _run(str(BIN / "meta-kd-sr-export"), f"ckpt_path={ckpt}", f"out={tmp_path / 's.pt'}")
    rebuilt, cfg = student_from_checkpoint(tmp_path / "s.pt")
    assert cfg == config
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(rebuilt(x), net.eval()(x))


def test_eval_refuses_missing_folder(tmp_path):
    proc = _command(
        str(BIN / "meta-kd-sr-eval"),
        "ckpt_path=bicubic",
        f"hr_dirs=[{tmp_path / 'nope'}]",
        f"hydra.run.dir={tmp_path / 'e'}",
    )
    assert proc.returncode != 0
    assert "HR folder not found" in proc.stderr and "nope" in proc.stderr


def test_method_sweep_writes_one_evaluation_per_method(tmp_path, tiny_teacher_ckpt):
    # three points: each method's training itself is tested in test_train.py (in process)
    methods = ["none", "output", "fakd"]
    sweep = tmp_path / "sweep"
    _run(
        str(BIN / "meta-kd-sr-train"),
        "-m",
        "experiment=tiny_kd",
        f"teacher.ckpt_path={tiny_teacher_ckpt}",  # trained in process: the console training is tested above
        "teacher.net.n_feats=16",
        "teacher.net.n_blocks=2",
        f"distill={','.join(methods)}",
        f"hydra.sweep.dir={sweep}",
        *SMALL,
    )
    runs = {
        json.loads(p.read_text())["output_dir"]: json.loads(p.read_text()) for p in sweep.glob("*/eval.json")
    }
    assert len(runs) == len(methods)
    for method in methods:
        (run,) = [r for d, r in runs.items() if f",distill={method}," in d]
        assert run["val"]["psnr_y"] > 5 and run["iterations"] == 3
