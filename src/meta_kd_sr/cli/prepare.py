"""``meta-kd-sr-prepare``: write MATLAB-bicubic LR folders (X2/X3/X4) from an HR folder."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from meta_kd_sr.cli import config_dir, hydra_log
from meta_kd_sr.data.prepare import default_lr_dir, generate_lr_folder
from meta_kd_sr.runtime.console import format_outputs, one_line_errors

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict[int, Path]:
    """Write the LR images of ``cfg.hr_dir`` for every scale of ``cfg.scales``; return the LR folders.

    By default each scale goes where the datasets read it (``DIV2K_train_HR`` ->
    ``DIV2K_train_LR_bicubic/X{s}``, ``<set>/HR`` -> ``<set>/LR_bicubic/X{s}``); with ``cfg.out_dir`` it goes
    to ``<out_dir>/X{s}``. Files are named ``<stem>x{s}.png``. Running again after an interruption
    finishes the job: finished files are kept, half-written ones are rewritten. Ends by printing where
    the LR folders (and, under Hydra, the command's log) are.
    """
    hr_dir = Path(cfg.hr_dir)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else None
    done, counts = {}, {}
    for s in (int(s) for s in cfg.scales):
        lr_dir = out_dir / f"X{s}" if out_dir is not None else default_lr_dir(hr_dir, s)
        files = generate_lr_folder(hr_dir, lr_dir, s)
        log.info("x%d: %d LR images in %s", s, len(files), lr_dir)
        done[s] = lr_dir
        counts[s] = len(files)
    lines = [(f"x{s} LR", f"{d} ({counts[s]} images)") for s, d in done.items()]
    print(format_outputs([*lines, ("log", hydra_log())]), flush=True)
    return done


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Console entry point (``meta-kd-sr-prepare``)."""
    with one_line_errors("meta-kd-sr-prepare"):  # a setting, file or disk to fix: one line, exit status 2
        prepare(cfg)


if __name__ == "__main__":
    main()
