"""``bench_quality.py --measure``: seconds per iteration of every configuration, interleaved in one process.

Each configuration is composed from exactly the overrides the benchmark passes to the CLI, its module built
by ``meta_kd_sr.cli.train.build_module`` and its batches drawn from its own DataModule (train and meta
loaders). Iterations run ``SRModule.iteration`` (the training step without the Trainer's bookkeeping) in
rounds A B C ... A B C, so that other load on a shared machine hits every configuration alike: the
*ratios* are what to read on a busy machine, and the absolute times are scaled by a quiet-machine
measurement of one of them. MKD variants with ``meta.every_n_steps = k`` run the meta step in the
iterations where ``MetaSettings.is_due`` says so, as ``training_step`` does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.train import build_module

from .plan import RunSpec, Sizes


def random_teacher(path: Path, feats: int, blocks: int, scale: int = 4) -> Path:
    """An exported-network file holding a random EDSR teacher (timing only), written once."""
    if not path.is_file():
        from meta_kd_sr.models import EDSR

        net = EDSR(scale, n_feats=feats, n_blocks=blocks)
        config = {"_target_": "meta_kd_sr.models.EDSR", "scale": scale, "n_feats": feats, "n_blocks": blocks}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "config": config}, path)
    return path


def _batches(datamodule: Any) -> Iterator[dict[str, Any]]:
    datamodule.setup("fit")
    loaders = datamodule.train_dataloader()
    iters = {k: iter(v) for k, v in loaders.items()}
    while True:
        parts = {k: next(it) for k, it in iters.items()}
        yield parts if "meta" in parts else parts["train"]


def build_step(spec: RunSpec, workdir: Path) -> Callable[[int], None]:
    """``step(i)``: training iteration ``i`` of ``spec``'s configuration (module, optimizers, batches)."""
    overrides = [o for o in spec.overrides if not o.startswith(("hydra.", "+callbacks.bench_timer"))]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={workdir / spec.name}"])
    torch.manual_seed(int(cfg.seed))
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    opts = [entry["optimizer"] for entry in module.configure_optimizers()]
    opt_krnet = opts[1] if module.meta_enabled else None
    batches = _batches(datamodule)

    def step(i: int) -> None:
        batch = next(batches)
        due = opt_krnet is not None and module.meta.is_due(i)
        module.iteration(batch, opts[0], opt_krnet if due else None)

    return step


def time_interleaved(
    specs: list[RunSpec], workdir: Path, iterations: int, warmup: int, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Mean wall and CPU seconds per iteration of each spec (keyed by ``spec.method``), interleaved.

    Means, not medians: with ``meta.every_n_steps = k`` one iteration in k is a meta iteration, and a
    median would drop those. Time a multiple of 8 iterations so that every k in (1, 2, 4, 8) is sampled
    at its own rate.

    With one torch thread, the CPU seconds of this process approach the wall time of a quiet core: other
    processes delay the wall clock far more than the CPU time this process uses (on a 2-core VM at load 8
    the CPU time still read about 20 % above the quiet figure: shared caches).
    """
    steps = {}
    for spec in specs:
        log(f"measure: building {spec.method}")
        steps[spec.method] = build_step(spec, workdir)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + iterations):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(i)
            if i >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {"wall": statistics.fmean(wall[name]), "cpu": statistics.fmean(cpu[name]), "n": iterations}
        for name in steps
    }


def projected_budget(
    s_per_it: dict[str, float], sizes: Sizes, teacher_s_per_it: float, jobs: int, overhead_s: float = 15.0
) -> dict[str, float]:
    """Projected seconds of a full run from seconds per iteration of each configuration.

    Equal-iteration runs: ``seeds x iterations x s/it`` per method; equal-time runs: ``seeds x`` MKD's
    training time per method; calibration runs at their own length; ``overhead_s`` per run for start-up,
    export and evaluation. Student runs share ``jobs`` cores; the teacher trains alone (its s/it as given).
    """
    n, seeds = sizes.iterations, len(sizes.seeds)
    mkd_s = n * s_per_it["mkd"]
    calibrated = [m for m in sizes.equal_time if m not in sizes.methods]
    core_s = {
        "equal_iterations": seeds * n * sum(s_per_it[m] for m in sizes.methods),
        "equal_time": seeds * mkd_s * len(sizes.equal_time),
        "calibration": sum(sizes.calibration_iterations * s_per_it[m] for m in calibrated),
        "overhead": overhead_s * (seeds * (len(sizes.methods) + len(sizes.equal_time)) + len(calibrated)),
    }
    teacher_s = sizes.teacher_iterations * teacher_s_per_it
    students_s = sum(core_s.values()) / jobs
    return {
        **{f"{k}_core_s": v for k, v in core_s.items()},
        "mkd_run_s": mkd_s,
        "students_wall_s": students_s,
        "teacher_s": teacher_s,
        "total_s": teacher_s + students_s,
    }
