"""Reading checkpoint files and loading their weights: wrappers, prefixes, and the errors a user sees."""

from __future__ import annotations

import pytest
import torch

from helpers.model_helpers import same_output, save, tiny_edsr, tiny_rcan
from meta_kd_sr.models.checkpoint import load_pretrained, load_state_dict_any


class PickledArgs:
    """Stands for the argparse/config objects some training scripts save next to the weights."""

    scale = 4


# ------------------------------------------------------------------------ wrappers and prefixes
def test_params_ema_is_preferred_and_key_chooses(tmp_path):
    ema, raw = tiny_edsr(seed=1), tiny_edsr(seed=2)
    path = save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, tmp_path)
    assert same_output(ema, load_pretrained(tiny_edsr(seed=3), path))
    assert same_output(raw, load_pretrained(tiny_edsr(seed=3), path, key="params"))
    with pytest.raises(
        ValueError, match=r"no state dict under 'ema'; top-level keys: \['params', 'params_ema'\]"
    ):
        load_pretrained(tiny_edsr(), path, key="ema")


def test_dataparallel_prefix_is_stripped(tmp_path):
    src = tiny_rcan(seed=1)
    path = save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path)
    assert same_output(src, load_pretrained(tiny_rcan(seed=2), path))


def test_lightning_checkpoint_keeps_only_the_student(tmp_path):
    src = tiny_edsr(seed=1)
    state = {f"student.{k}": v for k, v in src.state_dict().items()}
    state.update(
        {"krnets.f1.gen.0.weight": torch.zeros(4, 9, 3, 3), "adapters.f1.weight": torch.zeros(8, 8, 1, 1)}
    )
    ckpt = {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
        "hyper_parameters": {"lr": 1e-4},
    }
    path = save(ckpt, tmp_path, "last.ckpt")
    assert same_output(src, load_pretrained(tiny_edsr(seed=2), path))


def test_our_export_format(tmp_path):
    src = tiny_rcan(seed=1)
    path = save(
        {"state_dict": src.state_dict(), "config": {"arch": "rcan", "scale": 4, "n_feats": 16}}, tmp_path
    )
    sd = load_state_dict_any(path)
    assert (
        all(torch.equal(sd[k], v) for k, v in src.state_dict().items())
        and sd.keys() == src.state_dict().keys()
    )
    assert same_output(src, load_pretrained(tiny_rcan(seed=2), path))


def test_strict_false_loads_the_common_keys():
    src = tiny_edsr(n_blocks=2, seed=1)
    model = load_pretrained(tiny_edsr(n_blocks=3, seed=2), src.state_dict(), strict=False)
    assert torch.equal(model.body[1].conv2.weight, src.body[1].conv2.weight)


# ------------------------------------------------------------------------ errors a user sees
def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "edsr_x4.pt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: '{path}'"):
        load_pretrained(tiny_edsr(), path)


def test_checkpoint_that_needs_pickle_is_refused(tmp_path):
    path = save({"state_dict": tiny_edsr().state_dict(), "args": PickledArgs()}, tmp_path)
    with pytest.raises(ValueError, match=f"checkpoint '{path}' needs pickle .* refused for safety"):
        load_state_dict_any(path)


def test_corrupted_file_is_reported(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(
        ValueError, match=f"cannot read checkpoint '{path}': not a PyTorch file, or corrupted"
    ):
        load_pretrained(tiny_edsr(), path)
