"""The notebooks: executed in a Jupyter kernel with their fast settings, and their committed (full) outputs.

``META_KD_SR_NOTEBOOK_FAST=1`` shrinks every training budget to a few iterations; the code path is the one
of the full run, whose outputs are committed. ``META_KD_SR_NOTEBOOK_OUTPUTS`` keeps every file the
notebook writes in the test's tmp_path. The quickstart distils from the teacher shipped with the package (the
default); the KRNet notebook runs with ``META_KD_SR_NOTEBOOK_RETRAIN_TEACHER=1``, the path that trains one.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXECUTED = {"quickstart.ipynb", "krnet_kernels.ipynb"}  # each has its own execution test below
README_FIGURE = ROOT / "docs" / "sr_crops.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)"


def _execute(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retrain_teacher: bool = False
) -> nbformat.NotebookNode:
    monkeypatch.setenv("META_KD_SR_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("META_KD_SR_NOTEBOOK_RETRAIN_TEACHER", "1" if retrain_teacher else "0")
    monkeypatch.setenv("META_KD_SR_NOTEBOOK_OUTPUTS", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend must render the figures
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o["text"] for o in _outputs(nb) if o["output_type"] == "stream" and o["name"] == "stdout")


def _images(nb: nbformat.NotebookNode) -> list[bytes]:
    pngs = [o["data"]["image/png"] for o in _outputs(nb) if "image/png" in o.get("data", {})]
    return [base64.b64decode(png) for png in pngs]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _held_out_psnr(text: str) -> dict[str, float]:
    """The quickstart's line of results: ``held-out PSNR_y (dB): bicubic 29.384, ..., teacher 29.843``."""
    line = re.findall(r"held-out PSNR_y \(dB\): (.*)", text)[-1]
    return {name: float(value) for name, value in re.findall(rf"(\w+) {NUMBER}", line)}


def _kernel_checks(text: str) -> list[tuple[float, float, float, float]]:
    """Per KRNet: max |sum K_i|, min and max kernel norm, relative difference of the mean map and the loss."""
    pattern = (
        rf"max \|sum K_i\| {NUMBER}, norms in \[{NUMBER}, {NUMBER}\], loss {NUMBER} = mean of the maps "
        rf"\(relative difference {NUMBER}\)"
    )
    return [tuple(float(v) for v in (s, lo, hi, rel)) for s, lo, hi, _, rel in re.findall(pattern, text)]


# ------------------------------------------------------------------------------------- committed notebooks
def test_every_notebook_has_an_execution_test() -> None:
    assert {p.name for p in NOTEBOOKS} == EXECUTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_holds_the_full_run_with_small_pictures(path: Path) -> None:
    assert path.stat().st_size < 1_000_000
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))  # run top to bottom in one kernel
    assert not [o for o in _outputs(nb) if o["output_type"] == "error"]
    assert "fast=False" in _stdout(nb)  # the committed outputs are the full-size run's
    images = _images(nb)
    assert images and all(len(image) < 400_000 for image in images)


def test_committed_quickstart_shows_the_student_beating_bicubic() -> None:
    psnr = _held_out_psnr(_stdout(nbformat.read(NOTEBOOK_DIR / "quickstart.ipynb", as_version=4)))
    assert set(psnr) == {"bicubic", "scratch", "student", "teacher"}
    assert all(math.isfinite(v) and 20 < v < 45 for v in psnr.values())
    assert psnr["teacher"] > psnr["student"] > psnr["bicubic"]


def test_readme_figure_is_a_small_png() -> None:
    data = README_FIGURE.read_bytes()
    width, height = _png_size(data)
    assert len(data) < 300_000 and 300 < width < 1200 and 150 < height < 800


# ------------------------------------------------------------------------------------ executed, fast settings
def test_quickstart_runs_and_draws_the_crops(tmp_path, monkeypatch) -> None:
    figure_before = README_FIGURE.read_bytes()
    nb = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)
    assert "fast=True" in out
    psnr = _held_out_psnr(out)
    assert set(psnr) == {"bicubic", "scratch", "student", "teacher"}
    assert all(math.isfinite(v) and 5 < v < 60 for v in psnr.values())
    assert abs(psnr["bicubic"] - 29.384) < 0.01  # MATLAB bicubic on chelsea and coffee: no training involved
    assert "teacher: shipped with the package" in out
    runs = tmp_path / "notebooks" / "quickstart"
    for run in ("mkd", "scratch"):
        assert (runs / run / "eval.json").is_file()
    assert not (runs / "teacher").exists()  # the shipped teacher: nothing trained
    assert _images(nb) and _png_size(_images(nb)[0])[0] > 300
    assert _png_size((runs / "sr_crops.png").read_bytes())[0] > 300
    assert README_FIGURE.read_bytes() == figure_before  # a fast run never replaces the README's figure


def test_krnet_notebook_runs_and_draws_kernels_and_maps(tmp_path, monkeypatch) -> None:
    nb = _execute("krnet_kernels.ipynb", tmp_path, monkeypatch, retrain_teacher=True)
    out = _stdout(nb)
    assert "fast=True" in out
    assert (tmp_path / "notebooks" / "krnet_kernels" / "teacher" / "eval.json").is_file()  # trained here
    checks = _kernel_checks(out)
    assert len(checks) == 2  # the initial and the meta-learned KRNet
    for max_sum, norm_min, norm_max, rel in checks:
        assert max_sum < 1e-5 and abs(norm_min - 1) < 1e-5 and abs(norm_max - 1) < 1e-5  # zero-mean, unit
        assert rel < 1e-5  # the maps are what the loss averages
    found = re.search(rf"moved by {NUMBER} .*train/krnet_drift: {NUMBER}", out)
    drift, logged = float(found[1]), float(found[2])
    assert drift > 0 and abs(drift - logged) < 2e-4  # the rebuilt initial KRNets are the run's own
    assert len(_images(nb)) == 3
