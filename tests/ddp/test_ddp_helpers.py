"""meta_kd_sr.runtime.ddp in one process: what SRModule hands to DDP; identities without a process group."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from helpers.ddp_helpers import tiny_overrides
from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.train import build_module
from meta_kd_sr.runtime.ddp import all_reduce_mean, broadcast_, exclude_from_ddp, names_under, world_size
from meta_kd_sr.training.module import DDP_EXCLUDED


@pytest.fixture()
def mkd_module(ddp_assets, tmp_path):
    overrides = [*tiny_overrides(ddp_assets), "distill.loss.hidden=8", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return build_module(cfg)


@pytest.fixture()
def one_process_group(tmp_path):
    """A gloo group of world size 1 (no launcher involved), destroyed afterwards."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Sequential(nn.Linear(2, 1))
        self.b.register_buffer("count", torch.zeros(()))
        self.none = None


def test_names_under_lists_parameters_and_buffers_of_the_prefixes():
    assert names_under(Pair(), ["b", "none", "missing"]) == ["b.0.bias", "b.0.weight", "b.count"]
    with pytest.raises(ValueError, match="non-empty submodule name, got ''"):
        names_under(Pair(), [""])


def test_srmodule_keeps_teacher_and_krnets_out_of_ddp(mkd_module, one_process_group):
    module = mkd_module
    module.setup("fit")
    excluded = set(module._ddp_params_and_buffers_to_ignore)
    expected = {f"teacher.{n}" for n, _ in module.teacher.named_parameters()}
    expected |= {f"distiller.kd_losses.{n}" for n, _ in module.distiller.kd_losses.named_parameters()}
    assert expected and expected <= excluded
    assert all(n.startswith(DDP_EXCLUDED) for n in excluded)
    ddp = DistributedDataParallel(module, find_unused_parameters=False)
    wrapped = {id(p) for p in ddp._module_parameters}
    trainable = [n for n, p in module.named_parameters() if id(p) in wrapped and p.requires_grad]
    student = [f"student.{n}" for n, p in module.student.named_parameters() if p.requires_grad]
    adapters = [f"distiller.adapters.{n}" for n, _ in module.distiller.adapters.named_parameters()]
    assert sorted(trainable) == sorted(student + adapters) and adapters


def test_exclude_from_ddp_returns_and_marks_the_names():
    pair = Pair()
    names = exclude_from_ddp(pair, ["a"])
    assert names == ["a.bias", "a.weight"] == sorted(pair._ddp_params_and_buffers_to_ignore)
    assert getattr(pair.a.weight, "_ddp_ignored", False) and not hasattr(pair.b[0].weight, "_ddp_ignored")


@pytest.mark.parametrize("group", [False, True])
def test_collectives_are_identities_on_one_process(group, tmp_path, request):
    if group:
        request.getfixturevalue("one_process_group")
    assert world_size() == 1
    tensors = [torch.randn(2, 3), torch.randn(4, dtype=torch.float64)]
    before = [t.clone() for t in tensors]
    broadcast_(tensors)
    means = all_reduce_mean(tensors)
    for t, b, m in zip(tensors, before, means):
        assert torch.equal(t, b) and torch.equal(m, b)
