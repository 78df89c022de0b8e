"""Acceptance test of a non-editable install: the wheel carries every config, and its CLI runs from anywhere.

The wheel is built from a copy of the checkout's build inputs and installed with ``--no-deps`` into a fresh
venv. The dependencies come from the development venv through a folder of links to its site-packages
entries, minus every ``meta_kd_sr`` entry and ``.pth`` file (the editable install lives there): the fresh
venv can import the wheel's copy of ``meta_kd_sr`` and no other, and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from skimage import data as skimage_data

from meta_kd_sr.data import ImageFolderSR, save_png
from meta_kd_sr.evaluation.inference import upscale_bicubic
from meta_kd_sr.evaluation.metrics import psnr_y, ssim_y

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "src", "conf")
SCALE = 2
# A guard against a hung command only (a build, an install, one tiny evaluation).
HANG_GUARD_S = 1800


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    args = [str(a) for a in args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD_S, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _build_isolation_flags() -> list[str]:
    """``--no-build-isolation`` when this venv meets ``[build-system] requires`` (offline, fast)."""
    if sys.version_info < (3, 11):
        return []
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        try:
            if version(requirement.name) not in requirement.specifier:
                return []
        except PackageNotFoundError:
            return []
    return ["--no-build-isolation"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout, built from a copy (no build/ or egg-info written into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_build_isolation_flags(), "-w", out, source])
    (built,) = out.glob("meta_kd_sr-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _dependency_view(target: Path) -> Path:
    """Links to every entry of this venv's site-packages except meta_kd_sr's own and the ``.pth`` files."""
    target.mkdir()
    site_dirs = dict.fromkeys(Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib"))
    for site in site_dirs:
        for entry in site.iterdir():
            own = entry.name.lower().replace("-", "_").startswith(("meta_kd_sr", "__editable__"))
            if own or entry.suffix == ".pth" or entry.name == "__pycache__" or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return target


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv holding the installed wheel; the dependencies come from this venv, linked."""
    root = tmp_path_factory.mktemp("fresh")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel])
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib]).stdout.strip())
    # A plain path line in a .pth is appended to sys.path after the venv's site-packages (the wheel's copy)
    (site / "dev_dependencies.pth").write_text(f"{_dependency_view(root / 'dependencies')}\n")
    return env_dir


def _user_env(env_dir: Path) -> dict[str, str]:
    """The environment of a user of the fresh venv: no checkout paths, no config override."""
    drop = ("PYTHONPATH", "PYTHONHOME", "META_KD_SR_CONF", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    path = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PATH": path, "PYTHONNOUSERSITE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def test_wheel_carries_every_config(wheel_names):
    prefix = "meta_kd_sr/conf/"
    packaged = {name[len(prefix) :] for name in wheel_names if name.startswith(prefix)}
    expected = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {"train.yaml", "eval.yaml", "model/edsr.yaml", "hydra/launcher/slurm.yaml"} <= expected
    assert packaged == expected


def test_wheel_carries_every_module(wheel_names):
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "meta_kd_sr").rglob("*.py")}
    missing = sorted(modules - wheel_names)
    assert not missing, f"not in the wheel (add their packages to [tool.setuptools] packages): {missing}"


def test_wheel_carries_the_shipped_teacher_the_license_and_the_type_marker(wheel_names):
    assets = {"meta_kd_sr/assets/tiny_teacher_x4.pt", "meta_kd_sr/assets/tiny_teacher_x4.json"}
    assert assets | {"meta_kd_sr/py.typed"} <= wheel_names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names)


def test_wheel_metadata(wheel, wheel_names):
    (dist_info,) = {name.split("/")[0] for name in wheel_names if name.endswith(".dist-info/METADATA")}
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    kornia = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: kornia")]
    assert kornia and all("extra == " in line for line in kornia)  # a test-only dependency
    assert "meta-kd-sr-eval = meta_kd_sr.cli.evaluate:main" in entry_points


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory) -> Path:
    """Two small real photos as a benchmark-style HR folder ``<set>/HR``."""
    folder = tmp_path_factory.mktemp("images") / "Tiny" / "HR"
    for name in ("astronaut", "coffee"):
        crop = torch.from_numpy(getattr(skimage_data, name)()[100:140, 150:198].copy()).permute(2, 0, 1)
        save_png(crop.contiguous(), folder / f"{name}.png")
    return folder


def test_installed_eval_runs_outside_the_checkout(fresh_venv, hr_folder, tmp_path):
    env, cwd = _user_env(fresh_venv), tmp_path / "elsewhere"
    cwd.mkdir()
    probe = (
        "import json, meta_kd_sr as m, meta_kd_sr.cli as c, meta_kd_sr.assets as a; "
        "print(json.dumps([m.__file__, c.config_dir(), str(a.shipped_teacher())]))"
    )
    proc = _run([fresh_venv / "bin" / "python", "-c", probe], cwd=cwd, env=env)
    module, conf, teacher = (Path(p).resolve() for p in json.loads(proc.stdout))
    package = module.parent
    assert package.is_relative_to(fresh_venv.resolve()), module  # the wheel's copy, not the checkout
    assert conf == package / "conf" and teacher == package / "assets" / "tiny_teacher_x4.pt"

    out, run_dir = tmp_path / "out" / "bicubic.json", tmp_path / "run"
    command = [
        fresh_venv / "bin" / "meta-kd-sr-eval",
        "ckpt_path=bicubic",
        f"scale={SCALE}",
        f"hr_dirs=[{hr_folder}]",
        f"output_json={out}",
        f"hydra.run.dir={run_dir}",
        "device=cpu",
    ]
    proc = _run(command, cwd=cwd, env=env)
    assert "PSNR_y" in proc.stdout and "Tiny" in proc.stdout

    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]
    main_source = next(s for s in hydra_cfg["config_sources"] if s["provider"] == "main")
    assert Path(main_source["path"]) == conf  # Hydra read the packaged configs
    assert Path(hydra_cfg["cwd"]) == cwd

    result = json.loads(out.read_text())
    dataset = ImageFolderSR(hr_folder, SCALE, train=False)
    pairs = [(upscale_bicubic(item["lq"], SCALE), item["gt"]) for item in dataset]
    expected_psnr = torch.stack([psnr_y(sr, gt, SCALE) for sr, gt in pairs]).mean().item()
    expected_ssim = torch.stack([ssim_y(sr, gt, SCALE) for sr, gt in pairs]).mean().item()
    assert result["Tiny"]["n_images"] == 2
    assert result["Tiny"]["psnr_y"] == pytest.approx(expected_psnr, rel=0, abs=1e-9)
    assert result["Tiny"]["ssim_y"] == pytest.approx(expected_ssim, rel=0, abs=1e-9)
    assert 20 < result["Tiny"]["psnr_y"] < 50
    assert result["protocol"]["crop_border"] == SCALE
