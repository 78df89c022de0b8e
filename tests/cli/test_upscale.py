"""``meta-kd-sr-upscale`` on real photos: exact round trips, grayscale and JPEG input, skips and refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from PIL import Image, ImageOps

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.upscale import main, read_input, upscale
from meta_kd_sr.data import imresize, imresize_uint8, load_photo, read_image, save_png, to_float, to_uint8
from meta_kd_sr.evaluation.inference import resolve_device, self_ensemble, tiled_forward
from meta_kd_sr.evaluation.metrics import psnr_y
from meta_kd_sr.models import EDSR

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
CONFIG = {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 2}


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """(3, 48, 64) uint8: a crop of scikit-image's coffee photo."""
    return load_photo("coffee")[:, 150:198, 200:264].contiguous()


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> tuple[EDSR, dict[str, Path]]:
    """A tiny x2 EDSR (random weights) as an exported student.pt, a training .ckpt and a BasicSR file."""
    torch.manual_seed(3)
    net = EDSR(scale=2, n_feats=8, n_blocks=2).eval()
    folder = tmp_path_factory.mktemp("student")
    files = {"pt": folder / "student.pt", "ckpt": folder / "last.ckpt", "basicsr": folder / "net_g.pth"}
    torch.save({"state_dict": net.state_dict(), "config": CONFIG}, files["pt"])
    lightning = {f"student.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": lightning, "hyper_parameters": {"student_config": CONFIG}}, files["ckpt"])
    torch.save({"params": net.state_dict()}, files["basicsr"])
    return net, files


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("upscale", overrides=["device=cpu", *overrides])


def _lq_file(folder: Path, hr: torch.Tensor, scale: int, name: str = "coffee.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return save_png(imresize_uint8(hr, 1 / scale), folder / name)


@pytest.mark.parametrize("kind", ["pt", "ckpt", "basicsr"])
def test_upscaled_photo_equals_the_network_output_exactly(tmp_path, hr, student, kind):
    net, files = student
    lq_path = _lq_file(tmp_path / "in", hr, 2)
    extra = ["model=edsr_tiny", "model.n_feats=8", "model.n_blocks=2", "scale=2"] if kind == "basicsr" else []
    result = upscale(
        _cfg([f"ckpt_path={files[kind]}", f"input={lq_path}", f"output={tmp_path / 'out'}", *extra])
    )
    out = tmp_path / "out" / "coffee_x2.png"
    assert result["written"] == {str(lq_path): str(out)} and result["scale"] == 2
    with torch.no_grad():
        expected = to_uint8(net(to_float(read_image(lq_path))[None]).clamp(0, 1)[0])
    assert torch.equal(read_image(out), expected) and expected.shape == hr.shape


def test_bicubic_round_trip_is_matlab_bicubic_and_close_to_the_photo(tmp_path, hr):
    lq_path = _lq_file(tmp_path / "in", hr, 4)
    upscale(_cfg(["ckpt_path=bicubic", "scale=4", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"]))
    sr = read_image(tmp_path / "out" / "coffee_x4.png")
    assert torch.equal(sr, to_uint8(imresize(to_float(read_image(lq_path)), 4).clamp(0, 1)))
    assert 24 < psnr_y(to_float(sr), to_float(hr), 4).item() < 40  # a real photo back at its size


def test_tiles_and_self_ensemble_are_the_inference_helpers(tmp_path, hr, student):
    net, files = student
    lq_path = _lq_file(tmp_path / "in", hr, 2)
    overrides = ["tile=10", "tile_overlap=3", "self_ensemble=true"]
    upscale(_cfg([f"ckpt_path={files['pt']}", f"input={lq_path}", f"output={tmp_path / 'out'}", *overrides]))
    with torch.no_grad():
        sr = self_ensemble(lambda x: tiled_forward(net, x, 2, 10, 3), to_float(read_image(lq_path))[None])
    assert torch.equal(read_image(tmp_path / "out" / "coffee_x2.png"), to_uint8(sr.clamp(0, 1)[0]))


def test_grayscale_input_is_written_gray(tmp_path, student):
    gray = torch.from_numpy(skimage.data.camera()[200:230, 220:260].copy())
    Image.fromarray(gray.numpy(), mode="L").save(tmp_path / "cam.png")
    upscale(
        _cfg(["ckpt_path=bicubic", "scale=2", f"input={tmp_path / 'cam.png'}", f"output={tmp_path / 'b'}"])
    )
    with Image.open(tmp_path / "b" / "cam_x2.png") as im:
        assert im.mode == "L"
        bicubic = torch.from_numpy(np.asarray(im).copy())
    assert torch.equal(bicubic, to_uint8(imresize(to_float(gray)[None], 2).clamp(0, 1))[0])
    # a network sees the gray replicated on RGB; its RGB output is written as PIL's luma
    net, files = student
    upscale(_cfg([f"ckpt_path={files['pt']}", f"input={tmp_path / 'cam.png'}", f"output={tmp_path / 's'}"]))
    with torch.no_grad():
        rgb = to_uint8(net(to_float(gray).expand(3, -1, -1)[None]).clamp(0, 1)[0])
    luma = Image.fromarray(rgb.permute(1, 2, 0).numpy(), mode="RGB").convert("L")
    with Image.open(tmp_path / "s" / "cam_x2.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), np.asarray(luma))


def test_jpeg_input_is_upscaled_from_its_decoded_pixels(tmp_path, hr, student):
    net, files = student
    (tmp_path / "in").mkdir()
    Image.fromarray(imresize_uint8(hr, 1 / 2).permute(1, 2, 0).numpy()).save(
        tmp_path / "in" / "p.jpg", quality=85
    )
    result = upscale(
        _cfg([f"ckpt_path={files['pt']}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}"])
    )
    assert list(result["written"].values()) == [str(tmp_path / "o" / "p_x2.png")]
    with torch.no_grad():
        expected = to_uint8(net(to_float(read_image(tmp_path / "in" / "p.jpg"))[None]).clamp(0, 1)[0])
    assert torch.equal(read_image(tmp_path / "o" / "p_x2.png"), expected)


def _messy_folder(folder: Path, hr: torch.Tensor) -> None:
    """One good photo and everything a user's folder may also hold."""
    _lq_file(folder, hr, 2, "good.png")
    _lq_file(folder, hr, 2, "good.jpg")  # same output name as good.png
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(folder / "deep.png")
    (folder / "sub").mkdir()


def test_skipped_files_are_listed_with_their_reason(tmp_path, hr, capsys):
    _messy_folder(tmp_path / "in", hr)
    result = upscale(
        _cfg(["ckpt_path=bicubic", "scale=2", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}"])
    )
    folder = tmp_path / "in"
    assert list(result["written"]) == [str(folder / "good.jpg")]  # sorted by name: good.jpg comes first
    reasons = {Path(k).name: v for k, v in result["skipped"].items()}
    assert reasons["good.png"] == "same output name good_x2.png as good.jpg"
    assert reasons["notes.txt"].startswith("not an image file ('.txt'; reads .png")
    assert "corrupt or truncated" in reasons["broken.png"]
    assert "transparency" in reasons["alpha.png"] and "only 8-bit" in reasons["deep.png"]
    assert reasons["sub"] == "a folder (sub-folders are not read)"
    assert sorted(Path(p).name for p in result["failed"]) == ["alpha.png", "broken.png", "deep.png"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == ["outputs:", f"  images  {(tmp_path / 'o').resolve()}"]
    assert "upscaled 1 image(s) x2; skipped 6" in printed
    assert f"  skipped {folder / 'notes.txt'}: {reasons['notes.txt']}" in printed


def test_never_overwrites_an_input_and_keeps_earlier_outputs(tmp_path, hr):
    folder = tmp_path / "in"
    _lq_file(folder, hr, 2, "a.png")
    same_dir = ["ckpt_path=bicubic", "scale=2", f"input={folder}", f"output={folder}"]
    upscale(_cfg(same_dir))  # writes a_x2.png beside a.png: no input is touched
    before = (folder / "a_x2.png").read_bytes()
    with pytest.raises(ValueError, match=r"would overwrite the input image .*a_x2\.png: choose an output="):
        upscale(_cfg([*same_dir, "overwrite=true"]))  # a_x2.png is now an input of this folder
    assert (folder / "a_x2.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == [
        "a.png",
        "a_x2.png",
    ]
    single = ["ckpt_path=bicubic", "scale=2", f"input={folder / 'a.png'}", f"output={tmp_path / 'o'}"]
    upscale(_cfg(single))
    again = upscale(_cfg(single))
    assert (
        again["written"] == {}
        and "exists (overwrite=true replaces it)" in again["skipped"][str(folder / "a.png")]
    )
    assert list(upscale(_cfg([*single, "overwrite=true"]))["written"]) == [str(folder / "a.png")]


def test_settings_errors_name_the_fix(tmp_path, hr, student):
    lq_path = _lq_file(tmp_path / "in", hr, 2)
    _, files = student
    with pytest.raises(ValueError, match=r"scale= is required with ckpt_path=bicubic, e\.g\. scale=4"):
        upscale(_cfg(["ckpt_path=bicubic", f"input={lq_path}", f"output={tmp_path / 'o'}"]))
    with pytest.raises(ValueError, match=r"is a x2 network but scale=4 was asked"):
        upscale(_cfg([f"ckpt_path={files['pt']}", "scale=4", f"input={lq_path}", f"output={tmp_path / 'o'}"]))
    with pytest.raises(FileNotFoundError, match=r"input not found: .*nope"):
        upscale(
            _cfg(["ckpt_path=bicubic", "scale=2", f"input={tmp_path / 'nope'}", f"output={tmp_path / 'o'}"])
        )
    with pytest.raises(ValueError, match=r"output=.* is a file: output= must be a folder"):
        upscale(_cfg(["ckpt_path=bicubic", "scale=2", f"input={lq_path}", f"output={lq_path}"]))
    with pytest.raises(ValueError, match=r"device='bogus' is not a device name"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"CUDA is not available here: use device=cpu"):
            resolve_device("cuda")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_upright_like_pil(tmp_path, hr, orientation):
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(hr[:, :20, :30].permute(1, 2, 0).numpy()).save(path, exif=exif)
    image, gray = read_input(path)
    with Image.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert not gray and np.array_equal(image.permute(1, 2, 0).numpy(), upright)


def test_console_script_reports_skips_and_the_output_folder(tmp_path, hr):
    _lq_file(tmp_path / "in", hr, 2)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"nope")
    args = ["ckpt_path=bicubic", "scale=2", f"input={tmp_path / 'in'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([str(BIN / "meta-kd-sr-upscale"), *args], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1, proc.stderr  # an image could not be decoded
    assert (tmp_path / "run" / "coffee_x2.png").is_file()  # output= defaults to the run dir
    assert f"skipped {tmp_path / 'in' / 'broken.jpg'}: cannot decode image" in proc.stdout
    run = tmp_path / "run"
    assert proc.stdout.splitlines()[-2:] == ["outputs:", f"  images  {run}"]


def test_entry_point_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    argv = ["meta-kd-sr-upscale", "ckpt_path=bicubic", "input=/nope", f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "meta-kd-sr-upscale: error: input not found: /nope"
