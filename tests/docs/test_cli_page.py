"""Every console script, and every option it takes, is on the commands page."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

PAGE = ROOT / "docs" / "reference" / "cli.md"
HYDRA_ENTRY = {"meta-kd-sr-eval": "eval", "meta-kd-sr-prepare": "prepare", "meta-kd-sr-upscale": "upscale"}


def scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> ``module:function``."""
    table = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', table, re.M))


def test_every_console_script_has_a_section():
    page = PAGE.read_text()
    for name in scripts():
        assert f"## `{name}`" in page, name


@pytest.mark.parametrize("name", sorted(HYDRA_ENTRY))
def test_hydra_commands_list_every_key_of_their_entry_config(name):
    keys = [
        k for k in yaml.safe_load((ROOT / "conf" / f"{HYDRA_ENTRY[name]}.yaml").read_text()) if k != "hydra"
    ]
    section = PAGE.read_text().split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    assert [k for k in keys if k != "defaults" and f"`{k}`" not in section] == []


def test_train_lists_every_top_level_key_and_group():
    conf = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())
    section = PAGE.read_text().split("## `meta-kd-sr-train`", 1)[1].split("\n## ", 1)[0]
    groups = [next(iter(d)) for d in conf["defaults"] if isinstance(d, dict)]
    keys = [k for k in conf if k not in ("defaults", "hydra")]
    assert [k for k in keys + groups if f"`{k}`" not in section] == []


def _help(name: str, capsys) -> str:
    module, func = scripts()[name].split(":")
    with pytest.raises(SystemExit) as stop:
        getattr(importlib.import_module(module), func)(["--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_report_options_are_on_the_page(capsys):
    section = PAGE.read_text().split("## `meta-kd-sr-report`", 1)[1].split("\n## ", 1)[0]
    options = {
        w.strip("[],") for w in _help("meta-kd-sr-report", capsys).split() if w.startswith(("--", "[--"))
    }
    assert options - {"--help"} and [o for o in options - {"--help"} if f"`{o}" not in section] == []


def test_export_options_are_on_the_page(capsys):
    section = PAGE.read_text().split("## `meta-kd-sr-export`", 1)[1].split("\n## ", 1)[0]
    usage = _help("meta-kd-sr-export", capsys)
    keys = {w.strip("[").split("=")[0] for w in usage.split() if "=" in w and not w.startswith("--")}
    assert {"ckpt_path", "out", "formats", "opset", "dynamic", "example_size", "device"} <= keys
    assert [k for k in keys if f"`{k}`" not in section] == []
