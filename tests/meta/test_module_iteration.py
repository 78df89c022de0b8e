"""SRModule.iteration with meta learning == the steps of docs/method.md, written with plain autograd (f64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.meta_setup import rel_err, tiny_kd_module
from meta_kd_sr.meta import MetaSettings, PseudoStep, meta_gradient


def build(engine="higher", output_weight=0.0, dtype=torch.float64):
    module = tiny_kd_module(engine, n_blocks=3, teacher_feats=10, dtype=dtype, output_weight=output_weight)
    lq, meta_lq = torch.rand(2, 2, 3, 8, 8, dtype=dtype)
    gt, meta_gt = torch.rand(2, 2, 3, 16, 16, dtype=dtype)
    batch = {"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}}
    return module, batch


def optimizers(module):
    return [entry["optimizer"] for entry in module.configure_optimizers()]


def reference_iteration(module, batch, opt_s, opt_k, meta_loss_fn=F.l1_loss) -> None:
    """Pseudo step, meta-gradient, KRNet step, then a fresh forward/backward with the new KRNets."""
    lq, gt = batch["train"]["lq"], batch["train"]["gt"]
    d = module.distiller
    with torch.no_grad():
        sr_t, feats_t = module.teacher(lq, return_feats=True)

    def inner(sr, feats):
        return d(sr, feats, gt, sr_t=sr_t, feats_t=feats_t)["loss"]

    meta = batch["meta"]
    result = meta_gradient(
        module.student,
        d.meta_parameters(),
        inner,
        lq,
        meta["lq"],
        meta["gt"],
        pseudo=PseudoStep(alpha=0.5),
        meta_loss_fn=meta_loss_fn,
    )
    for p, g in zip(d.meta_parameters(), result.grads):
        p.grad = g
    opt_k.step()
    opt_s.zero_grad()
    d.kd_losses.requires_grad_(False)
    inner(*module.student(lq, return_feats=True)).backward()
    d.kd_losses.requires_grad_(True)
    opt_s.step()


def state(module):
    return [p.detach() for p in module.parameters()]


@pytest.mark.parametrize("engine", ["higher", "func", "reference"])
@pytest.mark.parametrize("output_weight", [0.0, 0.5])
def test_meta_iteration_equals_the_steps_written_out(engine, output_weight) -> None:
    module, batch = build(engine, output_weight)
    reference = copy.deepcopy(module)
    before = [p.detach().clone() for p in module.parameters()]
    terms, logs = module.iteration(batch, *optimizers(module))
    reference_iteration(reference, batch, *optimizers(reference))
    moved = [a - b for a, b in zip(state(module), before)]
    expected = [a - b for a, b in zip(state(reference), before)]
    assert rel_err(moved, expected) < 1e-9
    for name in ("student", "distiller.adapters", "distiller.kd_losses"):
        assert any(
            (a != b).any() for (n, a), b in zip(module.named_parameters(), before) if n.startswith(name)
        )
    assert all(torch.equal(a, b) for (n, a), b in zip(module.named_parameters(), before) if "teacher" in n)
    assert logs["train/meta_grad_norm"] > 0 and torch.isfinite(logs["train/loss_meta"])
    assert set(terms) >= {"loss", "loss_rec", "loss_kd", "loss_kd_f1"}
    assert all(p.grad is None for p in module.student.parameters())


def test_meta_objective_mse_is_the_meta_loss() -> None:
    module, batch = build()
    module.meta = MetaSettings(**{**module.meta.as_dict(), "objective": "mse"})
    reference, l1 = copy.deepcopy(module), copy.deepcopy(module)
    before = [p.detach().clone() for p in module.parameters()]
    module.iteration(batch, *optimizers(module))
    reference_iteration(reference, batch, *optimizers(reference), meta_loss_fn=F.mse_loss)
    reference_iteration(l1, batch, *optimizers(l1))
    moved = [a - b for a, b in zip(state(module), before)]
    assert rel_err(moved, [a - b for a, b in zip(state(reference), before)]) < 1e-9
    assert rel_err(moved, [a - b for a, b in zip(state(l1), before)]) > 1e-6  # the objective matters
    with pytest.raises(ValueError, match=r"meta.objective must be one of \('l1', 'mse'\), got 'l2'"):
        MetaSettings(objective="l2")


def test_teacher_skips_its_upsampler_when_no_loss_reads_its_image() -> None:
    module, batch = build()
    sr_t, feats_t = module.teacher_forward(batch["train"]["lq"])
    assert sr_t is None and set(feats_t) == {"f1", "f2", "f3"}
    module, batch = build(output_weight=0.5)
    sr_t, feats_t = module.teacher_forward(batch["train"]["lq"])
    assert sr_t.shape == batch["train"]["gt"].shape and set(feats_t) == {"f1", "f2", "f3"}


def test_meta_iteration_needs_a_meta_batch_and_meta_learning() -> None:
    module, batch = build()
    opt_s, opt_k = optimizers(module)
    with pytest.raises(ValueError, match="needs a meta batch"):
        module.iteration(batch["train"], opt_s, opt_k)
    module.meta.enabled = False
    with pytest.raises(ValueError, match="meta learning is off"):
        module.iteration(batch, opt_s, opt_k)
