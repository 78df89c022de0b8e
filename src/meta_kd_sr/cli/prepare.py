"""``meta-kd-sr-prepare``: write MATLAB-bicubic LR folders (X2/X3/X4) from an HR folder."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from meta_kd_sr.cli import config_dir
from meta_kd_sr.data.prepare import generate_lr_folder

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict[int, Path]:
    """Write ``<out_dir>/X{s}/<stem>x{s}.png`` for every scale; existing files are kept."""
    hr_dir = Path(cfg.hr_dir)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else hr_dir.parent / f"{hr_dir.name}_LR_bicubic"
    done = {}
    for s in cfg.scales:
        lr_dir = out_dir / f"X{int(s)}"
        files = generate_lr_folder(hr_dir, lr_dir, int(s))
        log.info("x%d: %d LR images in %s", int(s), len(files), lr_dir)
        print(f"x{int(s)}: {len(files)} LR images in {lr_dir}")
        done[int(s)] = lr_dir
    return done


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Console entry point (``meta-kd-sr-prepare``)."""
    prepare(cfg)


if __name__ == "__main__":
    main()
