"""Pieces the recovery tests load into training subprocesses (this folder is put on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl


class KillAt(pl.Callback):
    """SIGKILL this process right after training iteration ``step``: a crash with no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_during_save(good: str, target: str) -> None:
    """Save ``good`` to ``target`` atomically, then die by SIGKILL halfway through writing a second save."""
    import torch

    from meta_kd_sr.training import recovery

    io = recovery.AtomicCheckpointIO()
    io.save_checkpoint(torch.load(good, weights_only=True), target)

    def half_then_die(obj, tmp) -> None:
        Path(tmp).write_bytes(Path(good).read_bytes()[: Path(good).stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_then_die  # this process dies in it
    io.save_checkpoint(torch.load(good, weights_only=True), target)


if __name__ == "__main__":
    kill_during_save(sys.argv[1], sys.argv[2])
