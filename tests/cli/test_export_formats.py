"""``meta-kd-sr-export --formats pt torchscript onnx``: both exports match the eager student on a real photo.

Tolerances (outputs in [0, 1]): TorchScript runs the same kernels as eager, 1e-6; ONNX Runtime runs its own
float32 kernels, 1e-5 (1/400 of a uint8 level; measured: about 2e-7 for these students).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from meta_kd_sr.cli.export import export, main, output_paths
from meta_kd_sr.data import imresize_uint8, load_photo, to_float
from meta_kd_sr.evaluation.inference import SRForward
from meta_kd_sr.models import EDSR, RCAN, student_from_checkpoint

TS_ATOL, ONNX_ATOL = 1e-6, 1e-5
STUDENTS = {
    "edsr": (EDSR, {"scale": 2, "n_feats": 8, "n_blocks": 2}),
    "rcan": (RCAN, {"scale": 3, "n_feats": 8, "n_groups": 2, "n_blocks": 1, "reduction": 4}),
}


def _training_checkpoint(tmp_path, kind: str) -> tuple[torch.nn.Module, str]:
    """A Lightning-style checkpoint of a tiny student (random weights): ``student.*`` + its config."""
    cls, kwargs = STUDENTS[kind]
    torch.manual_seed(7)
    net = cls(**kwargs).eval()
    config = {"_target_": f"meta_kd_sr.models.{cls.__name__}", **kwargs}
    path = tmp_path / f"{kind}.ckpt"
    state = {f"student.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"student_config": config}}, path)
    return net, str(path)


@pytest.fixture(scope="module")
def photo_lq() -> torch.Tensor:
    """(2, 3, 30, 41) float: MATLAB-bicubic x1/2 crops of the astronaut photo (export example: 16x16)."""
    hr = load_photo("astronaut")[:, 100:160, 180:262]
    return torch.stack([to_float(imresize_uint8(hr, 1 / 2)), to_float(imresize_uint8(hr.flip(-1), 1 / 2))])


def _check_exports(net, files: dict[str, str], lq: torch.Tensor) -> None:
    with torch.no_grad():
        eager = net(lq)
        scripted = torch.jit.load(files["torchscript"])(lq)
    torch.testing.assert_close(scripted, eager, rtol=0, atol=TS_ATOL)
    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    (onnx_sr,) = session.run(["sr"], {"lq": lq.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_sr), eager, rtol=0, atol=ONNX_ATOL)
    assert eager.shape == (2, 3, lq.shape[2] * net.scale, lq.shape[3] * net.scale)


def test_command_writes_three_formats_that_match_eager_on_a_photo(tmp_path, photo_lq, capsys):
    net, ckpt = _training_checkpoint(tmp_path, "edsr")
    out = tmp_path / "out"
    main([ckpt, str(out / "student.pt"), *"--formats pt torchscript onnx --example-size 16 16".split()])
    names = {"pt": "student.pt", "torchscript": "student.torchscript.pt", "onnx": "student.onnx"}
    files = {f: str(out / name) for f, name in names.items()}
    printed = capsys.readouterr().out.splitlines()
    assert printed[-4:] == ["outputs:", *(f"  {f:<11}  {p}" for f, p in files.items())]
    for fmt, line in zip(("torchscript", "onnx"), printed[:2], strict=True):
        assert line.startswith(f"{fmt}: reloaded and run on a 2x3x19x21 input, max |diff| vs eager ")
    _check_exports(net, files, photo_lq)
    rebuilt, config = student_from_checkpoint(files["pt"])
    assert config["n_blocks"] == 2 and torch.equal(rebuilt(photo_lq), net(photo_lq))
    extra = {"config.json": ""}
    torch.jit.load(files["torchscript"], _extra_files=extra)
    props = {p.key: p.value for p in onnx.load(files["onnx"]).metadata_props}
    assert json.loads(extra["config.json"]) == json.loads(props["config"]) == config and props["scale"] == "2"


def test_rcan_student_exports_match_eager_on_a_photo(tmp_path, photo_lq):
    net, ckpt = _training_checkpoint(tmp_path, "rcan")
    done = export(ckpt, tmp_path / "rcan", ["torchscript", "onnx"], example_size=(16, 16))
    assert set(done) == {"torchscript", "onnx"} and not (tmp_path / "rcan.pt").exists()
    assert done["onnx"]["opset"] == 18 and done["onnx"]["max_abs_diff"] <= 1e-4
    _check_exports(net, {f: d["path"] for f, d in done.items()}, photo_lq)


def test_sr_forward_is_the_network_and_scripts():
    torch.manual_seed(0)
    net = RCAN(**STUDENTS["rcan"][1]).eval()
    lq = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(SRForward(net))(lq), net(lq))
    with pytest.raises(ValueError, match="SRForward takes an SRNet"):
        SRForward(torch.nn.Identity())


def test_output_names():
    assert output_paths("a/student.pt", ["pt", "torchscript", "onnx"]) == {
        "pt": Path("a/student.pt"),
        "torchscript": Path("a/student.torchscript.pt"),
        "onnx": Path("a/student.onnx"),
    }
    assert str(output_paths("model.onnx", ["pt"])["pt"]) == "model.pt"


def test_bad_requests_name_the_fix(tmp_path, capsys):
    _, ckpt = _training_checkpoint(tmp_path, "edsr")
    with pytest.raises(
        ValueError, match=r"unknown export format\(s\) \['tflite'\]: choose from pt, torchscript, onnx"
    ):
        export(ckpt, tmp_path / "x", ["tflite"])
    with pytest.raises(ValueError, match=r"dynamic='batch': choose one of all, hw, none"):
        export(ckpt, tmp_path / "x", ["onnx"], dynamic="batch")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.pt")])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
