"""The phases of the quality benchmark: teacher, equal iterations, calibration, equal time, evaluation."""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runner
from .heldout import HeldoutPhotos, score
from .plan import RunSpec, Sizes, round_iterations, student_spec, teacher_spec


@dataclass
class Context:
    """Where and how the benchmark runs: cache dir, sizes, parallel runs, threads per run, the log."""

    cache: Path
    sizes: Sizes
    jobs: int
    threads: int | None
    log_path: Path
    lock_fd: int | None = None
    start: float = field(default_factory=time.perf_counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, message: str) -> None:
        """Print ``message`` with the elapsed time, and append it to the log file."""
        line = f"[{time.perf_counter() - self.start:8.0f} s] {message}"
        with self._lock:
            print(line, flush=True)
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    @property
    def teacher_ckpt(self) -> Path:
        """The exported teacher every KD student reads (``student.pt`` in a cache from before ``teacher.pt``)."""
        run = self.cache / "runs" / "teacher"
        old = run / "student.pt"
        return old if old.is_file() and not (run / "teacher.pt").is_file() else run / "teacher.pt"


def run_phase(
    ctx: Context, name: str, specs: Sequence[RunSpec], threads: int | None = None, jobs: int | None = None
) -> list[dict[str, Any]]:
    """Run ``specs`` (``jobs`` at a time), skipping finished runs; log one line per run and per phase."""
    ctx.log(f"phase {name}: {len(specs)} runs")
    phase_start = time.perf_counter()
    threads = ctx.threads if threads is None else threads

    def one(spec: RunSpec) -> dict[str, Any]:
        keep = () if ctx.lock_fd is None else (ctx.lock_fd,)
        record = runner.train(spec, ctx.cache, threads, ctx.log, keep)
        if record["iterations"] != spec.iterations:
            raise RuntimeError(f"run {spec.name} stopped at {record['iterations']} of {spec.iterations} its")
        what = "trained" if record["launched"] else "finished earlier, skipped:"
        cpu = "" if record["cpu_s_per_it"] is None else f", CPU {record['cpu_s_per_it']:.4f} s/it"
        ctx.log(
            f"  {spec.name}: {what} {record['iterations']} it, {record['train_s']:.0f} s "
            f"({record['s_per_it']:.4f} s/it{cpu})"
        )
        return record

    with ThreadPoolExecutor(max_workers=jobs or ctx.jobs) as pool:
        futures = [pool.submit(one, spec) for spec in specs]
        try:
            records = [f.result() for f in futures]
        except BaseException:  # a failed run stops the phase: queued runs never start
            for f in futures:
                f.cancel()
            raise
    ctx.log(f"phase {name} done in {time.perf_counter() - phase_start:.0f} s")
    return records


def every_seed(ctx: Context, methods: Sequence[str], iterations: Any, group: str) -> list[RunSpec]:
    """``methods`` for every seed (seed-major: paired runs finish together).

    ``iterations`` is one count for all, or a mapping method -> count.
    """
    s = ctx.sizes
    count = (lambda m: iterations[m]) if isinstance(iterations, dict) else (lambda m: iterations)
    return [student_spec(s, m, seed, count(m), group, ctx.teacher_ckpt) for seed in s.seeds for m in methods]


def equal_iteration_specs(ctx: Context) -> list[RunSpec]:
    """Every method at the equal-iteration budget, every seed."""
    return every_seed(ctx, ctx.sizes.methods, ctx.sizes.iterations, "equal_iterations")


def calibration_specs(ctx: Context) -> list[RunSpec]:
    """Short timing runs (first seed) of the equal-time methods that have no equal-iteration run."""
    s = ctx.sizes
    todo = [m for m in s.equal_time if m not in s.methods]
    return [
        student_spec(s, m, s.seeds[0], s.calibration_iterations, "calibration", ctx.teacher_ckpt)
        for m in todo
    ]


def equal_time_budget(ctx: Context, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """MKD's mean training CPU seconds and the iterations each equal-time method gets in them.

    The budget is CPU time (one torch thread per run: the wall time of an idle core), so a machine that
    is busy with other work while the benchmark runs does not bias it. Computed once from the
    equal-iteration and calibration runs and kept in ``<cache>/equal_time.json``, so a resumed benchmark
    trains exactly the runs it started.
    """
    path = ctx.cache / "equal_time.json"
    if path.is_file():
        return json.loads(path.read_text())
    rate: dict[str, list[float]] = {}
    for r in records:
        rate.setdefault(r["method"], []).append(r["cpu_s_per_it"])
    mkd_s = statistics.fmean(
        r["train_cpu_s"] for r in records if r["method"] == "mkd" and r["group"] == "equal_iterations"
    )
    s_per_it = {m: statistics.fmean(v) for m, v in rate.items()}
    budget = {
        "clock": "cpu",
        "mkd_train_s": mkd_s,
        "s_per_it": {m: s_per_it[m] for m in ctx.sizes.equal_time},
        "iterations": {
            m: round_iterations(mkd_s, s_per_it[m], ctx.sizes.round_to) for m in ctx.sizes.equal_time
        },
    }
    path.write_text(json.dumps(budget, indent=2))
    return budget


def equal_time_specs(ctx: Context, budget: dict[str, Any]) -> list[RunSpec]:
    """The equal-time runs, every seed."""
    return every_seed(ctx, ctx.sizes.equal_time, budget["iterations"], "equal_time")


def explore_specs(ctx: Context) -> list[RunSpec]:
    """The exploration variants at the equal-iteration budget, every seed."""
    return every_seed(ctx, ctx.sizes.explore, ctx.sizes.iterations, "explore")


def evaluate_record(record: dict[str, Any], dataset: HeldoutPhotos) -> dict[str, Any]:
    """Add the held-out scores of a run's exported network.

    Cached in ``<run dir>/bench_heldout.json`` under the photos' names and the network file's SHA-256, so a
    network trained again (a resumed run) is scored again.
    """
    from meta_kd_sr.models.checkpoint import student_from_checkpoint

    path = Path(record["run_dir"]) / "bench_heldout.json"
    key = {"names": list(dataset.image_names), "sha256": _sha256(Path(record["student"]))}
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is None or cached.get("key") != key:
        net, _ = student_from_checkpoint(record["student"])
        cached = {"key": key, "scores": score(net, dataset), "params": _params(net)}
        path.write_text(json.dumps(cached, indent=2))
    scores = cached["scores"]
    return {
        **record,
        "psnr_y": scores["all"]["psnr_y"],
        "ssim_y": scores["all"]["ssim_y"],
        "embedded_val": scores.get("embedded_val"),
        "params": cached["params"],
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(net: Any) -> int:
    return sum(p.numel() for p in net.parameters())


def evaluate_all(
    ctx: Context, records: Sequence[dict[str, Any]], dataset: HeldoutPhotos
) -> list[dict[str, Any]]:
    """Held-out scores of every run."""
    ctx.log(f"phase evaluation: {len(records)} networks on {len(dataset)} held-out photos")
    start = time.perf_counter()
    out = [evaluate_record(r, dataset) for r in records]
    ctx.log(f"phase evaluation done in {time.perf_counter() - start:.0f} s")
    return out


def teacher_margin(teacher: dict[str, Any], records: Sequence[dict[str, Any]], required: float) -> dict:
    """Teacher minus the converged student: scratch at the longest budget the benchmark trained."""
    scratch = [r for r in records if r["method"] == "none" and r["group"] != "calibration"]
    longest = max(r["iterations"] for r in scratch)
    converged = [r["psnr_y"] for r in scratch if r["iterations"] == longest]
    margin = teacher["psnr_y"] - statistics.fmean(converged)
    return {
        "reference": f"none at {longest} iterations",
        "psnr_y": margin,
        "required": required,
        "ok": margin >= required,
    }


def run_all(ctx: Context, threads_teacher: int | None, explore: bool = True) -> dict[str, Any]:
    """Train everything that is not finished; return the records of each phase (not yet evaluated).

    ``explore=False`` leaves out the exploration phase (its finished runs are still reported).
    """
    teacher = run_phase(ctx, "teacher", [teacher_spec(ctx.sizes)], threads=threads_teacher, jobs=1)[0]
    students = run_phase(ctx, "equal iterations", equal_iteration_specs(ctx))
    calibration = run_phase(ctx, "calibration", calibration_specs(ctx)) if calibration_specs(ctx) else []
    budget = equal_time_budget(ctx, [*students, *calibration])
    ctx.log(
        f"equal time: MKD trains {budget['mkd_train_s']:.0f} CPU s; iterations "
        + ", ".join(f"{m} {n}" for m, n in budget["iterations"].items())
    )
    same_time = run_phase(ctx, "equal time", equal_time_specs(ctx, budget))
    explored = explore_specs(ctx)
    if explored and not explore:
        finished = [s for s in explored if runner.run_state(runner.run_dir(ctx.cache, s)) == "finished"]
        ctx.log(f"phase explore left out (--no-explore): {len(finished)} of {len(explored)} runs finished")
        explored = finished
    explored_runs = run_phase(ctx, "explore", explored) if explored else []
    return {
        "explore": explored_runs,
        "teacher": teacher,
        "students": students,
        "calibration": calibration,
        "equal_time": same_time,
        "budget": budget,
    }
