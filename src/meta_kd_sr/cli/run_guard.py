"""A Hydra callback that refuses a reused run dir before Hydra writes anything into it.

Hydra writes ``<run dir>/.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` before the task function
runs, so a refusal inside ``train`` would already have replaced the record of the run it protects (and
``meta-kd-sr-eval`` reads the method from that record). :class:`RunDirGuard` runs the same check as
:func:`meta_kd_sr.training.recovery.prepare_run_dir` at ``on_run_start``, before the record is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from meta_kd_sr.runtime.console import one_line_errors
from meta_kd_sr.training.recovery import check_run_dir


class RunDirGuard(Callback):
    """Refuse, in one line with exit status 2, a single run whose run dir holds another run's outputs.

    Sweeps (``-m``) write each job in a fresh numbered dir of a timestamped sweep dir and are not checked
    here; ``train`` still refuses to overwrite a job's outputs.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check ``hydra.run.dir`` against the run's ``resume``, ``overwrite`` and ``export_name``."""
        if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP rank started by Lightning: rank 0 has checked
            return
        with one_line_errors("meta-kd-sr-train"):
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            if run_dir.is_dir():
                resume = OmegaConf.select(config, "resume")
                overwrite = bool(OmegaConf.select(config, "overwrite", default=False))
                export_name = str(OmegaConf.select(config, "export_name", default=None) or "student.pt")
                check_run_dir(run_dir, None if resume is None else str(resume), overwrite, export_name)
