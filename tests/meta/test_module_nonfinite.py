"""SRModule under a Trainer: a NaN loss stops the run naming the trainer's iteration; skipped KRNet
updates are counted, logged and survive a resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.meta_setup import tiny_kd_module
from meta_kd_sr.runtime.finite import NonFiniteError
from meta_kd_sr.training.module import SRModule

NAN = float("nan")


def tiny_module(meta: bool) -> SRModule:
    return tiny_kd_module(dtype=torch.float32, meta_learn=meta)


def loader(n_iterations: int, meta: bool, nan_at: int | None = None, split: str = "train") -> DataLoader:
    """Batches of 2 in order; the input (``lq``) of iteration ``nan_at`` of ``split`` holds a NaN."""
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(2 * n_iterations):
        pairs = {
            s: {"lq": torch.rand(3, 8, 8, generator=g), "gt": torch.rand(3, 16, 16, generator=g)}
            for s in ("train", "meta")
        }
        if nan_at is not None and i == 2 * nan_at:
            pairs[split]["lq"][0, 0, 0] = NAN
        items.append(pairs if meta else pairs["train"])
    return DataLoader(items, batch_size=2, shuffle=False)


def trainer(max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


class Weights(pl.Callback):
    """The student's weights after every iteration."""

    def __init__(self) -> None:
        self.after: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append([p.detach().clone() for p in pl_module.student.parameters()])


@pytest.mark.parametrize("meta", [False, True])
def test_a_nan_loss_stops_the_run_at_its_iteration(meta) -> None:
    module, weights = tiny_module(meta), Weights()
    run = trainer(5)
    run.callbacks.append(weights)
    with pytest.raises(
        NonFiniteError, match=r"^train/loss_rec is nan at iteration 2; loss terms: loss_rec=nan, "
    ):
        run.fit(module, loader(5, meta, nan_at=2))
    assert len(weights.after) == 2 and run.global_step == 2  # iterations 0 and 1 ran, 2 took no step
    assert all(torch.equal(a, b) for a, b in zip(module.student.parameters(), weights.after[-1]))


class SpoilGradient(pl.Callback):
    """From iteration ``at`` on, a hook makes the gradient of the student's last conv NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            pl_module.student.conv_last.weight.register_hook(lambda g: g * NAN)


@pytest.mark.parametrize("meta", [False, True])
def test_a_nan_gradient_stops_the_run_before_the_step(meta) -> None:
    # meta=False: the gradient comes from Lightning's manual_backward (DDP's reducer when distributed)
    module, weights = tiny_module(meta), Weights()
    run = trainer(5)
    run.callbacks += [weights, SpoilGradient(at=1)]
    message = (
        r"^the gradient of student\.conv_last\.weight is not finite \(nan\) at iteration 1; no optimizer"
    )
    with pytest.raises(NonFiniteError, match=message):
        run.fit(module, loader(5, meta))
    assert len(weights.after) == 1 and run.global_step == 1
    assert all(torch.equal(a, b) for a, b in zip(module.student.parameters(), weights.after[-1]))


def test_skipped_krnet_updates_are_counted_logged_and_resumed(tmp_path) -> None:
    module = tiny_module(meta=True)
    first = trainer(3)
    first.fit(module, loader(3, meta=True, nan_at=1, split="meta"))  # iteration 1: NaN meta-gradient
    assert first.global_step == 3 and module.meta_skipped == 1
    assert (
        first.callback_metrics["train/meta_skipped"] == 1 and first.callback_metrics["train/meta_skip"] == 0
    )
    path = tmp_path / "last.ckpt"
    first.save_checkpoint(path)
    resumed = tiny_module(meta=True)
    second = trainer(5)
    second.fit(resumed, loader(5, meta=True), ckpt_path=path)
    assert second.global_step == 5 and resumed.meta_skipped == 1
    assert second.callback_metrics["train/meta_skipped"] == 1
    assert all(torch.isfinite(p).all() for p in resumed.parameters())
