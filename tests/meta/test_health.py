"""MetaHealth: drift and noise share of the KRNet meta-gradient, with known values, and in the iteration."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.meta_setup import tiny_kd_module
from meta_kd_sr.meta.health import MetaHealth
from meta_kd_sr.meta.settings import MetaSettings


def test_drift_is_the_relative_distance_from_the_first_weights() -> None:
    health = MetaHealth(window=4)
    phi0 = [torch.ones(3), torch.ones(1)]  # ||phi0|| = 2
    health.start(phi0)
    logs = health.update([torch.tensor([1.0, 1.0, 2.5]), torch.ones(1)], [torch.zeros(3), torch.zeros(1)])
    assert logs["train/krnet_drift"].item() == pytest.approx(0.75)  # ||(0, 0, 1.5, 0)|| / 2


def test_noise_share_is_zero_for_a_constant_gradient_and_near_one_for_pure_noise() -> None:
    params = [torch.zeros(1000)]
    constant, noise = MetaHealth(window=20), MetaHealth(window=20)
    gen = torch.Generator().manual_seed(0)
    for step in range(60):
        logs_c = constant.update(params, [torch.full((1000,), -3e-5)])
        logs_n = noise.update(params, [torch.randn(1000, generator=gen) * 1e-5])
        if step < 19:  # fewer than `window` steps: not logged
            assert "train/meta_noise_share" not in logs_c and noise.noise_share() is None
    assert logs_c["train/meta_noise_share"].item() == 0.0
    assert logs_n["train/meta_noise_share"].item() > 0.9


def test_noise_share_counts_the_noise_dominated_weights() -> None:
    """Half the weights see a strong drift plus small noise, half pure noise: the share is about one half."""
    health = MetaHealth(window=10)
    gen = torch.Generator().manual_seed(1)
    signal = torch.cat([torch.ones(500), torch.zeros(500)])
    for _ in range(40):
        logs = health.update([torch.zeros(1000)], [signal + 0.1 * torch.randn(1000, generator=gen)])
    assert logs["train/meta_noise_share"].item() == pytest.approx(0.5, abs=0.03)


def test_snr_is_the_median_ratio_of_mean_to_sd():
    """g = 1 + 0.5 * noise for every weight: SNR about 2; its EMA window estimates it within a few %."""
    health = MetaHealth(window=200)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2000):
        logs = health.update([torch.zeros(2000)], [1.0 + 0.5 * torch.randn(2000, generator=gen)])
    assert logs["train/meta_snr"].item() == pytest.approx(2.0, rel=0.1)
    assert logs["train/meta_noise_share"].item() == 0.0


def test_state_dict_round_trip_continues_the_same_statistics() -> None:
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(50, generator=gen)] for _ in range(12)]
    params = [torch.randn(50, generator=gen)]
    whole, first = MetaHealth(window=5), MetaHealth(window=5)
    for g in grads[:6]:
        whole.update(params, g)
        first.update(params, g)
    resumed = MetaHealth(window=5)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for g in grads[6:]:
        expected = whole.update(params, g)
        got = resumed.update(params, g)
    assert torch.equal(expected["train/meta_noise_share"], got["train/meta_noise_share"])
    assert torch.equal(expected["train/meta_snr"], got["train/meta_snr"])
    other = MetaHealth(window=7)  # another window keeps the drift reference, restarts the window
    other.load_state_dict(first.state_dict())
    assert torch.equal(other.phi0, first.phi0) and other.noise_share() is None


def test_window_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="health_window must be >= 2"):
        MetaSettings(health_window=1)
    with pytest.raises(ValueError, match="health_window must be >= 2"):
        MetaHealth(window=1)


def test_meta_iterations_log_drift_and_noise_share_and_checkpoint_them() -> None:
    module = tiny_kd_module("higher", n_blocks=3, teacher_feats=10, dtype=torch.float64)
    module.meta = MetaSettings(**{**module.meta.as_dict(), "health_window": 2})
    module.meta_health = MetaHealth(2)
    opt_s, opt_k = [entry["optimizer"] for entry in module.configure_optimizers()]
    phi0 = torch.cat([p.detach().reshape(-1).clone() for p in module.distiller.meta_parameters()])
    seen = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        lq, meta_lq = torch.rand(2, 2, 3, 8, 8, dtype=torch.float64, generator=gen)
        gt, meta_gt = torch.rand(2, 2, 3, 16, 16, dtype=torch.float64, generator=gen)
        batch = {"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}}
        _, logs = module.iteration(batch, opt_s, opt_k)
        seen.append(logs)
    phi = torch.cat([p.detach().reshape(-1) for p in module.distiller.meta_parameters()])
    expected = ((phi - phi0).norm() / phi0.norm()).item()
    assert seen[-1]["train/krnet_drift"].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0
    assert "train/meta_noise_share" not in seen[0]
    share = seen[-1]["train/meta_noise_share"].item()
    assert 0.0 <= share <= 1.0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["meta_health"]["steps"] == 3 and torch.equal(checkpoint["meta_health"]["phi0"], phi0)


def test_adam_state_pseudo_step_without_warm_up_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match=r"adam_state .* set meta.warmup_steps >= 1"):
        MetaSettings(pseudo="adam_state")
    assert MetaSettings(pseudo="adam_state", warmup_steps=1).step_settings.kind == "adam_state"
