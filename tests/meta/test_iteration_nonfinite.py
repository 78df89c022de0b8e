"""The NaN policy of a training iteration: bad loss terms and student gradients stop it before any step, a bad
meta-gradient skips the KRNet update only."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from helpers.meta_setup import rel_err, tiny_kd_module
from meta_kd_sr.meta import run_iteration
from meta_kd_sr.runtime.finite import NonFiniteError

NAN = float("nan")


def build(engine="higher"):
    module = tiny_kd_module(engine)
    opts = [entry["optimizer"] for entry in module.configure_optimizers()]
    return module, opts


def make_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lq, meta_lq = torch.rand(2, 2, 3, 8, 8, generator=g, dtype=torch.float64)
    gt, meta_gt = torch.rand(2, 2, 3, 16, 16, generator=g, dtype=torch.float64)
    return {"train": {"lq": lq, "gt": gt}, "meta": {"lq": meta_lq, "gt": meta_gt}}


def snapshot(module, opts) -> tuple[dict, list[dict]]:
    return copy.deepcopy(module.state_dict()), [copy.deepcopy(o.state_dict()) for o in opts]


def assert_same(a, b) -> None:
    """Bit-equal nested state (tensors compared with torch.equal)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b) and all(assert_same(x, y) is None for x, y in zip(a, b))
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("meta", [False, True])
def test_a_nan_loss_term_raises_before_any_backward_naming_iteration_and_term(meta) -> None:
    module, opts = build()
    module.iteration(make_batch(0), *opts)  # warm: the optimizers have state
    batch = make_batch(1)
    batch["train"]["gt"][0, 0, 0, 0] = NAN
    before = snapshot(module, opts)
    teacher_out = module.teacher_forward(batch["train"]["lq"])
    opt_s, opt_k = opts if meta else (opts[0], None)
    message = r"^train/loss_rec is nan at iteration 12; loss terms: loss_rec=nan, loss_kd_f1=\d"
    with pytest.raises(NonFiniteError, match=message) as info:
        run_iteration(
            module.student, module.distiller, teacher_out, batch, opt_s, opt_k, module.meta, iteration=12
        )
    assert isinstance(info.value, FloatingPointError) and str(info.value).endswith("loss=nan")
    assert_same(snapshot(module, opts), before)
    assert all(p.grad is None for p in module.parameters())  # no backward ran


@pytest.mark.parametrize("meta", [False, True])
def test_a_nan_student_gradient_raises_before_the_step(meta) -> None:
    module, opts = build()
    module.iteration(make_batch(0), *opts)
    before = snapshot(module, opts)
    # a hook spoils one parameter's gradient, as an overflow in its backward would
    hook = module.student.body[1].conv1.weight.register_hook(lambda g: g * NAN)
    batch = make_batch(1)
    name = "student.body.1.conv1.weight"
    message = re.escape(f"the gradient of {name} is not finite (nan); no optimizer step was taken")
    with pytest.raises(NonFiniteError, match=message):
        module.iteration(batch if meta else batch["train"], opts[0], opts[1] if meta else None)
    hook.remove()
    after = snapshot(module, opts)
    assert_same(after, before)  # student, adapters, KRNets and both optimizers: nothing moved
    # meta: the poisoned pseudo step made the meta loss NaN, so the KRNet step was skipped too


@pytest.mark.parametrize("engine", ["higher", "func", "reference"])
def test_a_nan_meta_gradient_skips_the_krnet_update_and_the_student_still_steps(engine) -> None:
    module, opts = build(engine)
    module.iteration(make_batch(0), *opts)  # KRNet Adam has state to keep
    batch = make_batch(1)
    batch["meta"]["lq"][1, 2, 3, 4] = NAN  # only the meta loss (and its gradient) is NaN
    plain, plain_opts = copy.deepcopy((module, opts))
    krnets = copy.deepcopy(module.distiller.kd_losses.state_dict())
    krnet_adam = copy.deepcopy(opts[1].state_dict())
    before = [p.detach().clone() for n, p in module.named_parameters() if not n.startswith("teacher.")]
    terms, logs = module.iteration(batch, *opts)
    assert_same(module.distiller.kd_losses.state_dict(), krnets)
    assert_same(opts[1].state_dict(), krnet_adam)
    assert module.meta_skipped == 1 and logs["train/meta_skip"] == 1 and logs["train/meta_skipped"] == 1
    assert torch.isnan(logs["train/loss_meta"]) and torch.isfinite(terms["loss"])
    # phi unchanged: the student step is the plain step with frozen KRNets on the same batch
    plain.iteration(batch["train"], plain_opts[0])
    trained = [p.detach() for n, p in module.named_parameters() if not n.startswith("teacher.")]
    expected = [p.detach() for n, p in plain.named_parameters() if not n.startswith("teacher.")]
    moved = [a - b for a, b in zip(trained, before)]
    assert (
        rel_err(moved, [a - b for a, b in zip(expected, before)]) < 1e-12
        and max(m.abs().max() for m in moved) > 0
    )
    _, logs = module.iteration(make_batch(2), *opts)  # the next finite meta-gradient steps again
    assert logs["train/meta_skip"] == 0 and module.meta_skipped == 1
    assert not torch.equal(module.distiller.kd_losses.state_dict()["f1.head.bias"], krnets["f1.head.bias"])


def test_the_skip_count_is_saved_in_checkpoints() -> None:
    module, opts = build()
    batch = make_batch(1)
    batch["meta"]["lq"][0] = NAN
    module.iteration(batch, *opts)
    module.iteration(batch, *opts)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    fresh, _ = build()
    assert fresh.meta_skipped == 0
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.meta_skipped == module.meta_skipped == 2
    del checkpoint["meta_skipped"]  # a checkpoint written before the count existed
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.meta_skipped == 0
