"""``meta-kd-sr-eval`` outputs: SR images as PNG, per-image scores, the method and the command's overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.evaluate import checkpoint_method, evaluate
from meta_kd_sr.data import bicubic_downscale, crop_to_multiple, load_photo, read_image, save_png, to_float
from meta_kd_sr.evaluation.metrics import psnr_y, quantize, ssim_y
from meta_kd_sr.models import EDSR

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
CONFIG = {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 2}
CROPS = {"chelsea": (100, 150, 48, 64), "coffee": (150, 200, 42, 57)}  # top, left, height, width


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory) -> Path:
    """``<tmp>/Photos/HR``: crops of two scikit-image photos (one not a multiple of the scale)."""
    folder = tmp_path_factory.mktemp("sets") / "Photos" / "HR"
    for name, (top, left, h, w) in CROPS.items():
        save_png(load_photo(name)[:, top : top + h, left : left + w].contiguous(), folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> tuple[EDSR, Path]:
    """A tiny x2 EDSR exported as ``<run>/student.pt`` of a run whose Hydra record says ``distill=mkd``."""
    torch.manual_seed(5)
    net = EDSR(scale=2, n_feats=8, n_blocks=2).eval()
    run = tmp_path_factory.mktemp("run")
    torch.save({"state_dict": net.state_dict(), "config": CONFIG}, run / "student.pt")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      distill: mkd\n")
    return net, run / "student.pt"


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("eval", overrides=["device=cpu", *overrides])


def test_saved_images_and_per_image_scores_reproduce_the_means(tmp_path, hr_dir, student, capsys):
    net, ckpt = student
    out_json, save_dir = tmp_path / "eval.json", tmp_path / "sr"
    args = [
        f"ckpt_path={ckpt}",
        "scale=2",
        f"hr_dirs=[{hr_dir}]",
        f"save_dir={save_dir}",
        f"output_json={out_json}",
    ]
    results = evaluate(_cfg(args))
    scores = results["Photos"]
    assert scores["n_images"] == 2 and sorted(scores["per_image"]) == ["chelsea", "coffee"]
    for metric in ("psnr_y", "ssim_y"):
        assert scores[metric] == sum(r[metric] for r in scores["per_image"].values()) / 2
    for name in CROPS:
        gt = crop_to_multiple(read_image(hr_dir / f"{name}.png"), 2)
        with torch.no_grad():
            sr = net(to_float(bicubic_downscale(gt, 2))[None]).clamp(0, 1)
        saved = to_float(read_image(save_dir / "Photos" / f"{name}_x2.png"))[None]
        assert torch.equal(saved, quantize(sr))  # the image the metrics scored, as a PNG
        per_image = scores["per_image"][name]
        assert psnr_y(saved, to_float(gt)[None], 2).item() == per_image["psnr_y"]
        assert ssim_y(saved, to_float(gt)[None], 2).item() == per_image["ssim_y"]
    on_disk = json.loads(out_json.read_text())
    assert on_disk["Photos"] == scores and on_disk["method"] == "mkd" and on_disk["overrides"] == []
    assert on_disk["save_dir"] == str(save_dir)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == ["outputs:", f"  scores     {out_json}", f"  SR images  {save_dir}"]


def test_method_of_a_checkpoint(tmp_path, student):
    _, ckpt = student
    assert checkpoint_method("bicubic") == "bicubic"
    assert checkpoint_method(str(ckpt)) == "mkd"
    assert checkpoint_method(str(ckpt), official=True) is None
    moved = tmp_path / "student.pt"
    moved.write_bytes(ckpt.read_bytes())
    assert checkpoint_method(str(moved)) is None  # out of its run folder: unknown
    net = EDSR(scale=2, n_feats=8, n_blocks=2)
    for teacher, method in (({"net": {}}, None), (None, "none")):
        lightning = tmp_path / "checkpoints" / "last.ckpt"
        lightning.parent.mkdir(exist_ok=True)
        hparams = {"student_config": CONFIG, "teacher_config": teacher}
        torch.save({"state_dict": net.state_dict(), "hyper_parameters": hparams}, lightning)
        assert checkpoint_method(str(lightning)) == method  # a run without a teacher is "none"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text("hydra: [not, a, record")
    assert checkpoint_method(str(lightning)) == "none"  # a damaged record is passed over


def test_console_eval_writes_eval_json_with_the_overrides(tmp_path, hr_dir):
    run = tmp_path / "run"
    args = ["ckpt_path=bicubic", "scale=2", f"hr_dirs=[{hr_dir}]", f"save_dir={tmp_path / 'sr'}"]
    proc = subprocess.run(
        [str(BIN / "meta-kd-sr-eval"), *args, f"hydra.run.dir={run}"], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "eval.json").read_text())  # output_json defaults to the run dir
    assert result["overrides"] == args and result["method"] == "bicubic"
    assert sorted(p.name for p in (tmp_path / "sr" / "Photos").iterdir()) == [
        "chelsea_x2.png",
        "coffee_x2.png",
    ]
    assert proc.stdout.splitlines()[-4:] == [
        "outputs:",
        f"  scores     {run / 'eval.json'}",
        f"  SR images  {tmp_path / 'sr'}",
        f"  log        {run / 'evaluate.log'}",
    ]
