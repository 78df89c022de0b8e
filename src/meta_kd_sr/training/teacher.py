"""Frozen teacher handling: build once, never train, never checkpoint, never wrap in DDP."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from meta_kd_sr.assets import TEACHER_FILE
from meta_kd_sr.models.checkpoint import load_pretrained

MISSING_TEACHER = (
    "teacher.ckpt_path is not set: distillation needs a trained teacher. experiment=tiny_kd / tiny_mkd use "
    f"the shipped tiny teacher (meta_kd_sr/assets/{TEACHER_FILE}); to train one run `meta-kd-sr-train "
    "experiment=tiny_teacher` (tiny, minutes) or experiment=div2k_edsr (the paper's) and pass "
    "teacher.ckpt_path=<its run dir>/teacher.pt, or pass an official checkpoint"
)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with every parameter frozen and return it."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_teacher(net: nn.Module, ckpt_path: str | Path | None, fmt: str | None = None) -> nn.Module:
    """Load a teacher network from ``ckpt_path`` (ours, EDSR-PyTorch/RCAN or BasicSR format) and freeze it.

    Args:
        net: the teacher architecture, built from its config.
        ckpt_path: checkpoint file; ``None`` is refused, since distilling from a random teacher is a bug.
        fmt: checkpoint format ("ours", "official", "basicsr"); detected from the keys when ``None``.
    """
    if ckpt_path is None or str(ckpt_path) in ("", "???"):
        raise ValueError(MISSING_TEACHER)
    load_pretrained(net, ckpt_path, fmt=fmt)
    return freeze_teacher(net)
