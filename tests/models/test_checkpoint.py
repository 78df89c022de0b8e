"""Checkpoint files: reading, loading weights, the allow-list of networks, rebuilding and export.

A config read from a file is data: a malicious ``_target_`` is refused by the console scripts and the
command it names never runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import meta_kd_sr.models as models
from helpers.model_helpers import save, tiny_edsr
from meta_kd_sr.cli import config_dir
from meta_kd_sr.models import checkpoint
from meta_kd_sr.models.checkpoint import (
    build_network,
    export_student,
    register_network,
    registered_networks,
    student_from_checkpoint,
)

BIN = Path(sys.executable).parent  # the console scripts installed beside this interpreter
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
REFUSED = "'subprocess.run' is not a network that may be rebuilt from a file"


class TinyNet(nn.Module):
    """A user's own network: one required argument."""

    def __init__(self, channels: int, scale: int = 2, names: tuple = ("a",)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.scale, self.names = scale, names


TINY_NET = f"{TinyNet.__module__}.{TinyNet.__qualname__}"


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the allow-list, so a test's registrations do not leak."""
    monkeypatch.setattr(checkpoint, "_REGISTRY", dict(checkpoint._REGISTRY))


def payload(marker: Path, form: str) -> dict:
    """A network config that names a command: ``"nested"`` is the file of the security report, ``"flat"``
    the form that the previous loader (import ``_target_``, call it with the other keys) did run.
    """
    argv = ["touch", str(marker)]
    return {"_target_": "subprocess.run", "args": [argv] if form == "nested" else argv}


def malicious_export(tmp_path: Path, marker: Path, form: str) -> Path:
    """An exported-student file: real weights, and a config that names a command."""
    config = payload(marker, form)
    return save({"state_dict": tiny_edsr().state_dict(), "config": config}, tmp_path, "evil.pt")


def lightning_ckpt(net: nn.Module, config: dict) -> dict:
    state = {f"student.{k}": v for k, v in net.state_dict().items()}
    state["krnets.f1.gen.0.weight"] = torch.zeros(4, 9, 3, 3)
    return {
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "hyper_parameters": {"student_config": config, "teacher_config": None},
    }


def console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)


# ------------------------------------------------------------------------ no code runs from a checkpoint
def test_the_flat_payload_is_live(tmp_path):
    """What the previous loader did with the config: the command runs."""
    marker = tmp_path / "ran"
    config = payload(marker, "flat")
    subprocess.run(**{k: v for k, v in config.items() if not k.startswith("_")}, check=True)
    assert marker.exists()


FORMS = pytest.mark.parametrize("form", ["nested", "flat"])


@FORMS
def test_eval_refuses_a_malicious_exported_student(tmp_path, form):
    marker = tmp_path / "pwned"
    path = malicious_export(tmp_path, marker, form)
    proc = console(
        str(BIN / "meta-kd-sr-eval"),
        f"ckpt_path={path}",
        f"hr_dirs=[{tmp_path}]",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert proc.returncode != 0
    assert f"checkpoint '{path}': config['_target_'] = {REFUSED}" in proc.stderr, proc.stderr[-3000:]
    assert "register_network" in proc.stderr
    assert not marker.exists()


@FORMS
def test_export_refuses_a_malicious_exported_student(tmp_path, form):
    marker, out = tmp_path / "pwned", tmp_path / "student.pt"
    path = malicious_export(tmp_path, marker, form)
    proc = console(str(BIN / "meta-kd-sr-export"), str(path), str(out))
    assert proc.returncode != 0
    assert proc.stderr.startswith("meta-kd-sr-export: error: ")
    assert REFUSED in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists() and not out.exists()


@FORMS
def test_lightning_checkpoint_with_a_malicious_student_config_is_refused(tmp_path, form):
    marker = tmp_path / "pwned"
    path = save(lightning_ckpt(tiny_edsr(), payload(marker, form)), tmp_path, "last.ckpt")
    msg = rf"checkpoint '{path}': hyper_parameters\['student_config'\]\['_target_'\] = {re.escape(REFUSED)}"
    with pytest.raises(ValueError, match=msg):
        student_from_checkpoint(path)
    assert not marker.exists()


# ------------------------------------------------------------------------ what build_network refuses
EDSR_NAME = "meta_kd_sr.models.EDSR"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"_target_": "os.system", "command": "true"},
            r"config\['_target_'\] = 'os.system' is not a network",
        ),
        ({"scale": 2}, r"config\['_target_'\] = None is not a network .*allowed: \['meta_kd_sr.models.EDSR'"),
        (
            {"_target_": EDSR_NAME, "depth": 3},
            r"config\['depth'\] is not an argument of meta_kd_sr.models.EDSR",
        ),
        (
            {"_target_": EDSR_NAME, "rgb_mean": [0.4, torch.zeros(1), 0.4]},
            r"config\['rgb_mean'\]\[1\] is a Tensor; a network config holds only plain values",
        ),
        (
            {"_target_": EDSR_NAME, "rgb_mean": {"_target_": "builtins.exec", "source": "x"}},
            r"config\['rgb_mean'\] holds a nested '_target_' \('builtins.exec'\)",
        ),
        (
            {"_target_": EDSR_NAME, "_partial_": True},
            r"config\['_partial_'\] is refused: .*'_target_' and keyword",
        ),
        ({"_target_": EDSR_NAME, "_args_": [4]}, r"config\['_args_'\] is refused"),
        (
            {"_target_": EDSR_NAME, "rgb_mean": {"_convert_": "all"}},
            r"config\['rgb_mean'\]\['_convert_'\] is refused",
        ),
        (
            {"_target_": EDSR_NAME, "n_feats": 0},
            r"config does not build a meta_kd_sr.models.EDSR: n_feats and",
        ),
        (["meta_kd_sr.models.EDSR"], r"config must be a mapping"),
    ],
)
def test_build_network_refuses_with_a_message(config, message):
    with pytest.raises(ValueError, match=rf"^checkpoint 'run/x.pt': {message}"):
        build_network(config, "run/x.pt")


def test_missing_required_argument_is_refused(registry):
    register_network(TinyNet)
    with pytest.raises(
        ValueError,
        match=rf"^network config: config lacks the required argument\(s\) \['channels'\] of {TINY_NET}",
    ):
        build_network({"_target_": TINY_NET, "scale": 2})


def test_non_plain_value_in_a_file_names_the_file_and_the_entry(tmp_path):
    config = {"_target_": EDSR_NAME, "scale": 4, "n_feats": 8, "n_blocks": 3, "img_range": torch.tensor(1.0)}
    path = save({"state_dict": tiny_edsr().state_dict(), "config": config}, tmp_path, "s.pt")
    with pytest.raises(ValueError, match=rf"^checkpoint '{path}': config\['img_range'\] is a Tensor"):
        student_from_checkpoint(path)


def test_a_checkpoint_without_config_says_how_to_evaluate_it(tmp_path):
    path = save(lightning_ckpt(tiny_edsr(), {}), tmp_path, "last.ckpt")
    with pytest.raises(ValueError, match=r"carries no network config; .*\(model=<preset>\)"):
        student_from_checkpoint(path)


# ------------------------------------------------------------------------ the allow-list
def test_every_network_of_the_package_and_every_model_config_is_allowed():
    allowed = registered_networks()
    nets = [v for v in vars(models).values() if isinstance(v, type) and issubclass(v, models.SRNet)]
    for cls in set(nets) - {models.SRNet}:
        assert allowed[f"meta_kd_sr.models.{cls.__name__}"] is cls
        assert allowed[f"{cls.__module__}.{cls.__qualname__}"] is cls
    targets = {
        yaml.safe_load(p.read_text()).get("_target_") for p in Path(config_dir(), "model").glob("*.yaml")
    }
    assert targets - {None} == {"meta_kd_sr.models.EDSR", "meta_kd_sr.models.RCAN"}
    assert targets - {None} <= allowed.keys()


def test_a_registered_user_network_rebuilds(registry):
    with pytest.raises(ValueError, match=rf"config\['_target_'\] = '{TINY_NET}' is not a network"):
        build_network({"_target_": TINY_NET, "channels": 4})
    assert register_network(TinyNet, "mypkg.TinyNet") is TinyNet
    net = build_network({"_target_": "mypkg.TinyNet", "channels": 4, "names": ["b", "c"]})
    assert isinstance(net, TinyNet) and net.conv.out_channels == 4 and net.names == ["b", "c"]
    assert build_network({"_target_": TINY_NET, "channels": 5, "scale": 3}).scale == 3
    register_network(TinyNet)  # registering again is harmless


def test_register_network_refuses_a_non_module_and_a_taken_name(registry):
    with pytest.raises(ValueError, match="register_network takes an nn.Module class, got <built-in function"):
        register_network(print)
    with pytest.raises(ValueError, match="register_network takes an nn.Module class, got <class 'str'>"):
        register_network(str)
    with pytest.raises(
        ValueError, match=r"network name 'meta_kd_sr.models.EDSR' is already registered to <class 'meta_kd_sr"
    ):
        register_network(TinyNet, "meta_kd_sr.models.EDSR")
    assert TINY_NET not in registered_networks()


# ------------------------------------------------------------------------ export -> rebuild
STUDENTS = {
    "edsr": {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 3},
    "rcan": {"_target_": "meta_kd_sr.models.rcan.RCAN", "scale": 3, "n_feats": 16, "n_groups": 3}
    | {"n_blocks": 2, "reduction": 4, "rgb_mean": [0.5, 0.5, 0.5]},
}


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_exported_student_round_trips_bit_exactly(tmp_path, arch):
    config = STUDENTS[arch]
    torch.manual_seed(1)
    net = {"edsr": models.EDSR, "rcan": models.RCAN}[arch](
        **{k: v for k, v in config.items() if k != "_target_"}
    )
    ckpt = save(lightning_ckpt(net, config), tmp_path, "last.ckpt")
    out = export_student(ckpt, tmp_path / "export" / "student.pt")
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["config"] == config and saved["state_dict"].keys() == net.state_dict().keys()
    rebuilt, cfg = student_from_checkpoint(out)
    assert cfg == config and not rebuilt.training
    lq = torch.rand(1, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(lq), net.eval()(lq))
