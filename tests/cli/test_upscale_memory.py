"""``meta-kd-sr-upscale`` within memory: planned from the header, tiled past the budget, or refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from meta_kd_sr.cli import config_dir, upscale
from meta_kd_sr.data import load_photo, read_image, save_png
from meta_kd_sr.evaluation.inference import tile_setting
from meta_kd_sr.evaluation.memory import GB, parse_budget, plan_upscale
from meta_kd_sr.models import EDSR

CONFIG = {"_target_": "meta_kd_sr.models.EDSR", "scale": 2, "n_feats": 8, "n_blocks": 1}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.pt"
    torch.save({"state_dict": EDSR(scale=2, n_feats=8, n_blocks=1).state_dict(), "config": CONFIG}, path)
    return path


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("upscale", overrides=["device=cpu", *overrides])


def test_budget_settings():
    assert parse_budget("auto") is None and parse_budget(8) == 8 * GB and parse_budget("512MB") == 512 * 10**6
    with pytest.raises(ValueError, match="memory_budget='lots'"):
        parse_budget("lots")


def test_plan_is_whole_within_the_budget_tiled_past_it_and_refused_when_the_output_cannot_fit():
    assert plan_upscale((100, 100), 4, 16, 1 * GB, None, 16, False).tile is None
    tiled = plan_upscale((2000, 2000), 4, 16, 2 * GB, None, 16, False)
    assert tiled.tile is not None and 32 < tiled.tile < 2000 and tiled.bytes <= 2 * GB < tiled.whole_bytes
    with pytest.raises(ValueError, match=r"a 9000x9000 image upscaled x4 \(36000x36000\) needs at least"):
        plan_upscale((9000, 9000), 4, 16, 8 * GB, None, 16, False)


def test_an_image_past_the_budget_is_tiled_and_equals_the_whole_image(tmp_path, student, capsys):
    photo = load_photo("coffee")[:, :120, :160].contiguous()
    save_png(photo, tmp_path / "in" / "coffee.png")
    args = [f"ckpt_path={student}", f"input={tmp_path / 'in'}"]
    whole = upscale.upscale(_cfg([*args, f"output={tmp_path / 'a'}"]))
    assert whole["tiles"] == {str(tmp_path / "in" / "coffee.png"): None}
    small = ["memory_budget=5MB", "tile_overlap=8"]
    tiled = upscale.upscale(_cfg([*args, f"output={tmp_path / 'b'}", *small]))
    tile = tiled["tiles"][str(tmp_path / "in" / "coffee.png")]
    assert tile is not None and tile < 160
    assert f"coffee.png: tiled automatically (tile={tile})" in capsys.readouterr().out
    assert torch.equal(
        read_image(tmp_path / "a" / "coffee_x2.png"), read_image(tmp_path / "b" / "coffee_x2.png")
    )


@pytest.mark.parametrize(
    ("tile", "message"),
    [
        ("0", "tile=0: expected an LR tile larger than 2 * tile_overlap = 32"),
        ("abc", "tile='abc': expected an integer"),
    ],
)
def test_tile_settings_name_the_option(tile, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tile_setting(tile, 16)
    assert tile_setting(None, "8") == (None, 8)


SCRIPT = textwrap.dedent(
    """
    import resource, re, sys
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from meta_kd_sr.cli import config_dir, upscale
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("upscale", overrides=sys.argv[1:])
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, resource.RLIM_INFINITY))
    try:
        upscale.upscale(cfg)
    except ValueError as err:
        print("refused:", err)
    """
)


def test_a_9000x9000_image_is_refused_in_one_line_under_a_memory_cap(tmp_path, student):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    Image.fromarray(np.full((9000, 9000, 3), 128, np.uint8)).save(big, compress_level=1)
    args = ["device=cpu", f"ckpt_path={student}", f"input={big.parent}", f"output={tmp_path / 'out'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert f"{big}: a 9000x9000 image upscaled x2 (18000x18000) needs at least" in line
    assert "over the memory budget of" in line and "raise memory_budget=" in line
    assert not (tmp_path / "out").exists()
