"""CUDA inference commands: upscale and export with device=cuda agree with CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from helpers.run_if import RunIf
from meta_kd_sr.cli.export import export
from meta_kd_sr.models import EDSR
from meta_kd_sr.models.checkpoint import save_student


def _student(tmp_path):
    torch.manual_seed(0)
    net = EDSR(2, n_feats=8, n_blocks=2)
    return save_student(
        net,
        {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 2},
        tmp_path / "student.pt",
    )


def _upscale(student, image, out, device):
    args = [sys.executable, "-m", "meta_kd_sr.cli.upscale", f"ckpt_path={student}", f"input={image}"]
    args += [f"output={out}", f"device={device}", f"hydra.run.dir={out}/run"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return np.asarray(Image.open(out / "photo_x2.png")).astype(int)


@RunIf(min_gpus=1)
def test_upscale_on_cuda_matches_cpu(tmp_path, photos_uint8):
    student = _student(tmp_path)
    image = tmp_path / "photo.png"
    Image.fromarray(photos_uint8["chelsea"][:40, :48]).save(image)
    on_cpu = _upscale(student, image, tmp_path / "cpu", "cpu")
    on_cuda = _upscale(student, image, tmp_path / "cuda", "cuda")
    assert on_cpu.shape == on_cuda.shape == (80, 96, 3)
    assert np.abs(on_cpu - on_cuda).max() <= 1  # a uint8 level at most (TF32 convolutions on CUDA)


@RunIf(min_gpus=1)
def test_export_checks_torchscript_on_cuda(tmp_path):
    done = export(_student(tmp_path), tmp_path / "net", ["pt", "torchscript"], device="cuda")
    assert done["torchscript"]["max_abs_diff"] <= 1e-4
    scripted = torch.jit.load(done["torchscript"]["path"], map_location="cuda")
    assert scripted(torch.rand(1, 3, 10, 10, device="cuda")).shape == (1, 3, 20, 20)
