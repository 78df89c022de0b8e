"""meta.accumulate and meta.optimizer: M meta steps, then one KRNet step with their mean."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers.meta_setup import rel_err, tiny_kd_module
from meta_kd_sr.meta import MetaResult, MetaSettings, PseudoStep, meta_gradient
from meta_kd_sr.meta.accumulate import MetaAccumulator
from meta_kd_sr.meta.iteration import _krnet_step

NAN = float("nan")


def batches(n: int) -> list[dict]:
    out = []
    for seed in range(n):
        gen = torch.Generator().manual_seed(seed)
        lq, meta_lq = torch.rand(2, 2, 3, 8, 8, dtype=torch.float64, generator=gen)
        gt, meta_gt = torch.rand(2, 2, 3, 16, 16, dtype=torch.float64, generator=gen)
        out.append({"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}})
    return out


def build(**meta) -> tuple:
    module = tiny_kd_module("higher", n_blocks=3, teacher_feats=10)
    module.meta = MetaSettings(**{**module.meta.as_dict(), **meta})
    module.meta_accumulator = MetaAccumulator(module.meta.accumulate)
    return module, [entry["optimizer"] for entry in module.configure_optimizers()]


def hand_run(module, opt_s, data, accumulate, krnet_update) -> list[list[torch.Tensor]]:
    """Per iteration: meta-gradient (every ``accumulate``, their mean to ``krnet_update``), student step."""
    d, window, seen = module.distiller, [], []
    for batch in data:
        lq, gt = batch["train"]["lq"], batch["train"]["gt"]
        with torch.no_grad():
            sr_t, feats_t = module.teacher(lq, return_feats=True)

        def inner(sr, feats, gt=gt, sr_t=sr_t, feats_t=feats_t):
            return d(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

        meta = batch["meta"]
        args = (module.student, d.meta_parameters(), inner, lq, meta["lq"], meta["gt"])
        window.append(meta_gradient(*args, pseudo=PseudoStep(alpha=0.5)).grads)
        seen.append(window[-1])
        if len(window) == accumulate:
            mean = [sum(gs) / accumulate for gs in zip(*window)]
            with torch.no_grad():
                krnet_update(d.meta_parameters(), mean)
            window = []
        opt_s.zero_grad()
        d.kd_losses.requires_grad_(False)
        inner(*module.student(lq, return_feats=True)).backward()
        d.kd_losses.requires_grad_(True)
        opt_s.step()
    return seen


def krnets(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.distiller.meta_parameters()]


def test_m_meta_steps_accumulated_equal_one_step_with_the_mean_by_hand() -> None:
    module, (opt_s, opt_k) = build(accumulate=3, optimizer="sgd", lr=50.0)
    reference, phi0, data = copy.deepcopy(module), krnets(module), batches(4)
    hand_opt_s = reference.configure_optimizers()[0]["optimizer"]

    def sgd(params, mean):
        for p, g in zip(params, mean):
            p -= 50.0 * g

    hand_run(reference, hand_opt_s, data, 3, sgd)
    seen = []
    for batch in data:
        _, logs = module.iteration(batch, opt_s, opt_k)
        seen.append(krnets(module))
        assert logs["train/meta_grad_norm"] > 0
    assert all(torch.equal(a, b) for a, b in zip(seen[1], phi0))  # iterations 0, 1: the window fills
    assert rel_err(seen[2], phi0) > 1e-6 and all(torch.equal(a, b) for a, b in zip(seen[3], seen[2]))
    assert (
        rel_err([p.detach() for p in module.parameters()], [p.detach() for p in reference.parameters()])
        < 1e-9
    )
    assert module.meta_accumulator.count == 1 and module.meta_signal.steps == 4


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_momentum_optimizer_is_heavy_ball_sgd_by_hand(momentum) -> None:
    kind = "momentum" if momentum else "sgd"
    module, (opt_s, opt_k) = build(accumulate=2, optimizer=kind, momentum=momentum or 0.5, lr=20.0)
    assert isinstance(opt_k, torch.optim.SGD) and opt_k.param_groups[0]["momentum"] == momentum
    reference, data = copy.deepcopy(module), batches(4)
    buffers: list[torch.Tensor] = []

    def heavy_ball(params, mean):  # buf <- momentum * buf + g (g the first time); p <- p - lr * buf
        if not buffers:
            buffers.extend(g.clone() for g in mean)
        else:
            for b, g in zip(buffers, mean):
                b.mul_(momentum).add_(g)
        for p, b in zip(params, buffers):
            p -= 20.0 * b

    hand_run(reference, reference.configure_optimizers()[0]["optimizer"], data, 2, heavy_ball)
    for batch in data:
        module.iteration(batch, opt_s, opt_k)
    assert (
        rel_err(krnets(module), krnets(reference)) < 1e-9
        and rel_err(krnets(module), krnets(tiny_kd_module())) > 1e-4
    )


def test_accumulate_one_is_the_unaccumulated_path_bit_for_bit() -> None:
    module, (opt_s, opt_k) = build()
    plain, data = copy.deepcopy(module), batches(3)
    plain_opt_s, plain_opt_k = [e["optimizer"] for e in plain.configure_optimizers()]
    plain.meta_accumulator = None  # run_iteration without a window: every meta step steps the KRNets
    for batch in data:
        module.iteration(batch, opt_s, opt_k)
        plain.iteration(batch, plain_opt_s, plain_opt_k)
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), plain.parameters()))
    assert isinstance(opt_k, torch.optim.Adam) and opt_k.defaults["betas"] == (0.9, 0.999)
    grads = [torch.ones(2)]
    assert MetaAccumulator(1).add(grads)[0] is grads[0]  # handed back, not copied


def checkpoint_of(module, opts) -> dict:
    checkpoint = {"state_dict": copy.deepcopy(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    checkpoint["optimizers"] = [copy.deepcopy(o.state_dict()) for o in opts]
    return copy.deepcopy(checkpoint)


def resume(checkpoint, skip=()) -> tuple:
    module, opts = build(accumulate=3, optimizer="momentum", lr=20.0)
    checkpoint = {k: v for k, v in copy.deepcopy(checkpoint).items() if k not in skip}
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    for opt, state in zip(opts, checkpoint["optimizers"]):
        opt.load_state_dict(state)
    return module, opts


def test_a_run_resumed_mid_window_is_bit_equal_to_the_straight_run() -> None:
    data = batches(5)
    straight, opts = build(accumulate=3, optimizer="momentum", lr=20.0)
    for i, batch in enumerate(data):
        straight.iteration(batch, *opts)
        if i == 1:  # two meta-gradients in the window
            saved = checkpoint_of(straight, opts)
    assert saved["meta_accumulator"]["count"] == 2 and saved["meta_signal"]["steps"] == 2
    resumed, resumed_opts = resume(saved)
    forgetful, forgetful_opts = resume(saved, skip=("meta_accumulator",))
    for batch in data[2:]:
        resumed.iteration(batch, *resumed_opts)
        forgetful.iteration(batch, *forgetful_opts)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    assert torch.equal(straight.meta_signal.z(), resumed.meta_signal.z())
    assert rel_err(krnets(forgetful), krnets(straight)) > 1e-6  # the window is what the checkpoint restores


def test_a_non_finite_meta_gradient_does_not_enter_the_window() -> None:
    torch.manual_seed(0)
    krnet = nn.Linear(3, 2)
    params, phi0 = list(krnet.parameters()), krnets_of(krnet)
    opt, window = torch.optim.SGD(params, lr=1.0), MetaAccumulator(2)
    g1, g2 = ([torch.full_like(p, v) for p in params] for v in (0.5, 0.25))
    steps = [
        _krnet_step(params, MetaResult(torch.tensor(1.0), g, None, []), opt, None, window)
        for g in (g1, [torch.full_like(p, NAN) for p in params], g2)
    ]
    assert [s.skipped for s in steps] == [False, True, False]
    assert [float(s.logs["train/meta_skip"]) for s in steps] == [0.0, 1.0, 0.0]
    assert all(torch.allclose(p, q - 0.375, rtol=0, atol=1e-7) for p, q in zip(params, phi0))
    assert window.count == 0 and window.sums is None


def krnets_of(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"accumulate": 0}, r"meta.accumulate must be >= 1 meta steps, got 0"),
        (
            {"optimizer": "rmsprop"},
            r"meta.optimizer must be one of \('adam', 'sgd', 'momentum'\), got 'rmsprop'",
        ),
        ({"momentum": 1.0}, r"meta.momentum must be in \[0, 1\), got 1.0"),
        ({"control": "swap"}, r"meta.control must be one of \('none', 'shuffle'\), got 'swap'"),
    ],
)
def test_bad_lever_settings_are_refused(override, message) -> None:
    with pytest.raises(ValueError, match=message):
        MetaSettings(**override)
    with pytest.raises(ValueError, match=r"meta.accumulate must be >= 1 meta steps, got -2"):
        MetaAccumulator(-2)
