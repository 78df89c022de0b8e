"""Whole-run meta signal: z per KRNet weight on streams of known answer, its export, the shuffle control."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from helpers.meta_setup import tiny_kd_module
from meta_kd_sr.meta import MetaSettings
from meta_kd_sr.meta.signal import HALF_NORMAL_MEDIAN, MetaSignal, half_normal_share, summarize_z


def stream(signal: MetaSignal, grads) -> MetaSignal:
    for g in grads:
        signal.update(g)
    return signal


def test_z_is_the_t_statistic_of_a_known_stream() -> None:
    values = torch.tensor([[1.0, -1.0], [2.0, 1.0], [3.0, -1.0], [6.0, 1.0]], dtype=torch.float64)
    signal = stream(MetaSignal(), [[v[:1], v[1:]] for v in values])
    z = signal.z()
    expected = values.sum(0).abs() / (values.std(0, unbiased=True) * math.sqrt(4))
    assert torch.allclose(z, expected, rtol=1e-14, atol=0) and z[0].item() == pytest.approx(2.7774602)
    assert z[1].item() == 0.0  # +1, -1, -1, +1: no net direction


def test_pure_noise_gives_a_half_normal_and_a_drift_gives_large_z() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = stream(MetaSignal(), ([1e-5 * torch.randn(20000, generator=gen)] for _ in range(400)))
    summary = noise.summary(3.0)
    # |t_399| is a half-normal up to 1 %: share above 3 about 0.0029 (binomial sd 0.0004 over 20000 weights)
    assert summary.share_above == pytest.approx(half_normal_share(3.0), abs=0.0015)
    assert summary.median == pytest.approx(HALF_NORMAL_MEDIAN, abs=0.02) and summary.steps == 400
    drift = stream(MetaSignal(), ([1e-5 + 1e-6 * torch.randn(1000, generator=gen)] for _ in range(100)))
    z = drift.z()
    assert z.min() > 50 and drift.summary().share_above == 1.0  # sqrt(100) * 10: about 100
    constant = stream(MetaSignal(), ([torch.tensor([2e-5, 0.0])] for _ in range(5))).z()
    assert constant.tolist() == [math.inf, 0.0]


def test_half_normal_reference_values() -> None:
    assert half_normal_share(3.0) == pytest.approx(0.0026998, rel=1e-4)
    assert half_normal_share(0.0) == 1.0 and HALF_NORMAL_MEDIAN == pytest.approx(0.6744898, rel=1e-6)
    summary = summarize_z(torch.tensor([0.5, 1.0, 4.0, 5.0]), steps=10)
    assert (
        summary.share_above == 0.5
        and summary.weights == 4
        and summary.noise_share_above == half_normal_share()
    )
    with pytest.raises(ValueError, match="threshold must be >= 0, got -1"):
        half_normal_share(-1)
    with pytest.raises(ValueError, match="z needs at least 2 meta-gradients, got 1"):
        stream(MetaSignal(), [[torch.ones(3)]]).z()


def test_state_dict_round_trip_continues_the_same_sums() -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(7, generator=gen), torch.randn(2, generator=gen)] for _ in range(9)]
    straight, first = stream(MetaSignal(), grads), stream(MetaSignal(), grads[:4])
    resumed = MetaSignal()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    assert torch.equal(stream(resumed, grads[4:]).z(), straight.z())


def batches(n: int, meta_batch: int = 2) -> list[dict]:
    out = []
    for seed in range(n):
        gen = torch.Generator().manual_seed(seed)
        lq = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=gen)
        gt = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=gen)
        meta_lq = torch.rand(meta_batch, 3, 8, 8, dtype=torch.float64, generator=gen)
        meta_gt = torch.rand(meta_batch, 3, 16, 16, dtype=torch.float64, generator=gen)
        out.append({"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}})
    return out


def module_and_optimizers(**meta):
    module = tiny_kd_module("func", n_blocks=3, teacher_feats=10)
    module.meta = MetaSettings(**{**module.meta.as_dict(), **meta})
    return module, [entry["optimizer"] for entry in module.configure_optimizers()]


def test_a_run_exports_z_per_krnet_weight_to_its_run_dir(tmp_path) -> None:
    module, opts = module_and_optimizers()
    for batch in batches(3):
        module.iteration(batch, *opts)
    module._trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    module.on_train_end()
    assert list(tmp_path.iterdir()) == []  # meta.signal_file=None (the default outside the CLI): no file
    module.meta = MetaSettings(**{**module.meta.as_dict(), "signal_file": "signal.pt"})
    module.on_train_end()
    saved = torch.load(tmp_path / "signal.pt", weights_only=True)
    assert torch.equal(saved["z"], module.meta_signal.z().float()) and saved["steps"] == 3
    sizes = [p.numel() for p in module.distiller.meta_parameters()]
    assert saved["numels"] == sizes and saved["z"].numel() == sum(sizes) and saved["control"] == "none"
    assert all(n.startswith("distiller.kd_losses.") for n in saved["names"])
    assert saved["summary"]["noise_share_above"] == half_normal_share(3.0)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["meta_signal"]["steps"] == 3 and checkpoint["meta_accumulator"]["count"] == 0


def test_shuffle_control_pairs_each_meta_input_with_another_images_target() -> None:
    control, opts = module_and_optimizers(control="shuffle")
    plain, plain_opts = module_and_optimizers()
    for batch in batches(2, meta_batch=3):
        rolled = copy.deepcopy(batch)
        gt = batch["meta"]["gt"]
        rolled["meta"]["gt"] = torch.stack([gt[2], gt[0], gt[1]])
        control.iteration(batch, *opts)
        plain.iteration(rolled, *plain_opts)
    assert all(torch.equal(a, b) for a, b in zip(control.parameters(), plain.parameters()))
    with pytest.raises(ValueError, match=r"meta.control=shuffle .* >= 2 images per rank, got 1"):
        control.iteration(batches(1, meta_batch=1)[0], *opts)


@pytest.mark.parametrize("name", ["runs/signal.pt", "signal.npz", ""])
def test_signal_file_must_be_a_pt_file_name(name) -> None:
    with pytest.raises(ValueError, match=r"meta.signal_file must be a file name ending in .pt, or null, got"):
        MetaSettings(signal_file=name)
