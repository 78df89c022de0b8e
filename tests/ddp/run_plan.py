"""Run a list of tiny trainings / validations in this process group and dump every rank's final state.

Usage (one process, or any number under torchrun, which starts every rank itself so that the runs of the
plan share one process group and Lightning launches nothing)::

    python run_plan.py plan.json
    torchrun --standalone --nproc_per_node 2 run_plan.py plan.json

``plan.json``: ``{"out": dir, "common": [overrides], "runs": [{"name", "mode": "fit" | "validate",
"overrides": [...], "perturb_krnets": bool}]}``. Each run writes ``<out>/<name>/rank<r>.pt`` (``dump.py``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.train import build_module, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump import rank_state  # noqa: E402


def run_fit(cfg, out: Path, perturb_krnets: bool = False) -> None:
    with open_dict(cfg):
        callbacks = dict(cfg.get("callbacks") or {})
        callbacks["dump"] = {"_target_": "dump.StateDump", "path": str(out), "perturb_krnets": perturb_krnets}
        cfg.callbacks = callbacks
    train(cfg)


def run_validate(cfg, out: Path) -> None:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.validate(module, datamodule=datamodule)
    state = rank_state(trainer, module)
    state["val_batches"] = len(trainer.val_dataloaders)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"rank{trainer.global_rank}.pt")


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    root = Path(plan["out"])
    for run in plan["runs"]:
        out = root / run["name"]
        overrides = [*plan.get("common", []), *run["overrides"], f"paths.output_dir={out / 'run'}"]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        start = time.perf_counter()
        if run.get("mode", "fit") == "fit":
            run_fit(cfg, out, perturb_krnets=run.get("perturb_krnets", False))
        else:
            run_validate(cfg, out)
        (out / f"time{cfg.trainer.get('devices')}.txt").write_text(f"{time.perf_counter() - start:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
