"""The phases of the quality benchmark: teacher, equal iterations, calibration, equal time, evaluation."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runner, store
from .curve import last_quarter_change
from .health import summarize_run as summarize_health
from .heldout import PHOTO_SETS, HeldoutPhotos, score
from .plan import LEVERS, RunSpec, Sizes, round_iterations, student_spec, teacher_spec
from .signal import SIGNAL_FILE, summarize_signal
from .sweep import sweep_specs, weights_for

SCALE = 4


@dataclass
class Context:
    """Where and how the benchmark runs.

    ``cache``: run dirs and logs (machine-local); ``store``: the committed records (``quality.store``);
    ``tuned``: the sweep's loss-weight overrides by method; ``git_commit``: written into every new record.
    """

    cache: Path
    sizes: Sizes
    jobs: int
    threads: int | None
    log_path: Path
    lock_fd: int | None = None
    store: Path | None = None
    tuned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    git_commit: str = "unknown"
    stored_only: bool = False  # report what is stored, train nothing (``--stored-only``)
    only: tuple[str, ...] = ()  # train only these methods or run names; others only when stored (``--only``)
    left_out: list[str] = field(default_factory=list)  # runs not stored, left out by ``stored_only``/``only``
    start: float = field(default_factory=time.perf_counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _photos: dict[str, HeldoutPhotos] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = self.cache / "store" if self.store is None else self.store

    def log(self, message: str) -> None:
        """Print ``message`` with the elapsed time, and append it to the log file."""
        line = f"[{time.perf_counter() - self.start:8.0f} s] {message}"
        with self._lock:
            print(line, flush=True)
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    def teacher_file(self, name: str) -> Path:
        """The exported network of teacher run ``name``: in the cache, else in the store."""
        for base in (self.cache, self.store):
            path = base / "runs" / name / "teacher.pt"
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"teacher {name} has no teacher.pt in {self.cache / 'runs'} or {self.store}: train it first"
        )

    def photos(self, name: str) -> HeldoutPhotos:
        """The photo set ``name`` of ``quality.heldout.PHOTO_SETS`` (built once)."""
        with self._lock:
            if name not in self._photos:
                self._photos[name] = HeldoutPhotos(PHOTO_SETS[name], SCALE)
            return self._photos[name]


def score_run(ctx: Context, spec: RunSpec, record: dict[str, Any]) -> dict[str, Any]:
    """Add the scores of a run's network on its photo set, its parameter count and its meta signal."""
    from meta_kd_sr.models.checkpoint import student_from_checkpoint

    net, _ = student_from_checkpoint(record["student"])
    dataset = ctx.photos(spec.photos)
    scores = score(net, dataset)
    teacher = ctx.teacher_file(spec.teacher) if spec.teacher else None
    return {
        **record,
        "psnr_y": scores["all"]["psnr_y"],
        "ssim_y": scores["all"]["ssim_y"],
        "scores": scores,
        "photos": {"set": spec.photos, "names": list(dataset.image_names)},
        "params": sum(p.numel() for p in net.parameters()),
        "meta_health": summarize_health(record["run_dir"], record["iterations"]),
        "meta_signal": summarize_signal(Path(record["run_dir"]) / SIGNAL_FILE),
        "teacher_sha256": None if teacher is None else store.sha256(teacher),
    }


def selected(ctx: Context, phase: str, specs: Sequence[RunSpec]) -> list[RunSpec]:
    """``specs`` less those that ``--stored-only`` or ``--only`` leave out (added to ``ctx.left_out``).

    ``stored_only``: only stored runs; ``only``: stored runs and the runs of the named methods or names.
    """
    if not (ctx.stored_only or ctx.only):
        return list(specs)
    chosen = set() if ctx.stored_only else set(ctx.only)
    missing = [
        x.name
        for x in specs
        if x.method not in chosen and x.name not in chosen and store.load(ctx.store, x) is None
    ]
    ctx.left_out += missing
    if missing:
        ctx.log(f"phase {phase}: {len(missing)} runs not stored, left out (--stored-only / --only)")
    return [x for x in specs if x.name not in missing]


def run_phase(
    ctx: Context, name: str, specs: Sequence[RunSpec], threads: int | None = None, jobs: int | None = None
) -> list[dict[str, Any]]:
    """Run ``specs`` (``jobs`` at a time): stored runs are read back, others trained, scored and stored."""
    specs = selected(ctx, name, specs)
    ctx.log(f"phase {name}: {len(specs)} runs")
    phase_start = time.perf_counter()
    threads = ctx.threads if threads is None else threads

    def one(spec: RunSpec) -> dict[str, Any]:
        stored = store.load(ctx.store, spec)
        if stored is not None:
            ctx.log(f"  {spec.name}: stored record, skipped ({stored['psnr_y']:.3f} dB)")
            return stored
        keep = () if ctx.lock_fd is None else (ctx.lock_fd,)
        teacher = ctx.teacher_file(spec.teacher) if spec.teacher else None
        record = runner.train(spec, ctx.cache, threads, ctx.log, keep, teacher)
        if record["iterations"] != spec.iterations:
            raise RuntimeError(f"run {spec.name} stopped at {record['iterations']} of {spec.iterations} its")
        saved = store.save(
            ctx.store, spec, score_run(ctx, spec, record), Path(record["student"]), ctx.git_commit
        )
        what = "trained" if record["launched"] else "finished earlier,"
        cpu = "" if saved["cpu_s_per_it"] is None else f", CPU {saved['cpu_s_per_it']:.4f} s/it"
        ctx.log(
            f"  {spec.name}: {what} {saved['iterations']} it, {saved['train_s']:.0f} s "
            f"({saved['s_per_it']:.4f} s/it{cpu}), {saved['psnr_y']:.3f} dB on {spec.photos}; stored"
        )
        return saved

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


def every_seed(
    ctx: Context, methods: Sequence[str], iterations: Any, group: str, seeds: Sequence[int] | None = None
) -> list[RunSpec]:
    """``methods`` for every seed (or ``seeds``), seed-major: paired runs finish together.

    ``iterations`` is one count for all, or a mapping method -> count.
    """
    s = ctx.sizes
    count = (lambda m: iterations[m]) if isinstance(iterations, dict) else (lambda m: iterations)
    return [
        student_spec(s, m, seed, count(m), group, weights_for(m, ctx.tuned))
        for seed in (s.seeds if seeds is None else seeds)
        for m in methods
    ]


def equal_iteration_specs(ctx: Context) -> list[RunSpec]:
    """Every method at the equal-iteration budget, every seed."""
    return every_seed(ctx, ctx.sizes.methods, ctx.sizes.iterations, "equal_iterations")


def calibration_specs(ctx: Context) -> list[RunSpec]:
    """Short timing runs (first seed) of the equal-time methods that have no equal-iteration run."""
    s = ctx.sizes
    todo = [m for m in s.equal_time if m not in s.methods]
    return [
        student_spec(s, m, s.seeds[0], s.calibration_iterations, "calibration", weights_for(m, ctx.tuned))
        for m in todo
    ]


def equal_time_budget(ctx: Context, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """MKD's mean training CPU seconds and the iterations each equal-time method gets in them.

    The budget is CPU time (one torch thread per run: the wall time of an idle core), so a machine that
    is busy with other work while the benchmark runs does not bias it. Computed once from the
    equal-iteration and calibration runs and kept in ``<store>/equal_time.json``, so a resumed benchmark
    (on any machine) trains exactly the runs it started.
    """
    path = ctx.store / "equal_time.json"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budget, indent=2))
    return budget


def equal_time_specs(ctx: Context, budget: dict[str, Any]) -> list[RunSpec]:
    """The equal-time runs, every seed."""
    return every_seed(ctx, ctx.sizes.equal_time, budget["iterations"], "equal_time")


def explore_specs(ctx: Context) -> list[RunSpec]:
    """The exploration variants at the equal-iteration budget, every seed."""
    return every_seed(ctx, ctx.sizes.explore, ctx.sizes.iterations, "explore")


def teacher_margin(teacher: dict[str, Any], records: Sequence[dict[str, Any]], required: float) -> dict:
    """Teacher minus the converged student: scratch at the longest budget the benchmark reports."""
    scratch = [r for r in records if r["method"] == "none" and r["group"] not in ("calibration", "sweep")]
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
    """Train and score everything not stored yet; return the stored records of each phase.

    ``explore=False`` leaves out the exploration phase (its finished runs are still reported).
    """
    teacher = run_teacher(ctx, threads_teacher)
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
        finished = [
            s
            for s in explored
            if store.load(ctx.store, s) is not None
            or runner.run_state(runner.run_dir(ctx.cache, s)) == "finished"
        ]
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


def run_teacher(ctx: Context, threads: int | None) -> dict[str, Any]:
    """The teacher of ``ctx.sizes`` (trained alone, with ``threads``)."""
    return run_phase(ctx, "teacher", [teacher_spec(ctx.sizes)], threads=threads, jobs=1)[0]


def measure_budget(ctx: Context) -> dict[str, Any]:
    """The converged regime's student budget: the ladder's first N where scratch's curve is flat.

    Scratch (first seed) trains for each budget of ``sizes.budget_ladder`` in turn, with held-out points every
    N / ``curve_points`` iterations, until ``|PSNR_y(N) - PSNR_y(3N/4)| < plateau_db``. These runs are the
    regime's scratch runs of that seed (same spec). Without such an N the ladder's last budget is used.
    The rule finds the flat end of an N-iteration schedule; ``doubled`` says what a schedule twice as long
    still gains (:func:`doubling_check`).
    """
    s = ctx.sizes
    ladder = []
    for n in s.budget_ladder:
        record = run_phase(ctx, f"budget {n}", [student_spec(s, "none", s.seeds[0], n, "converged")], jobs=1)[
            0
        ]
        change = last_quarter_change(record["curve"], n)
        ladder.append(
            {"iterations": n, "last_quarter_db": change, "psnr_y": record["psnr_y"], "curve": record["curve"]}
        )
        ctx.log(f"budget {n}: held-out PSNR_y {record['psnr_y']:.3f} dB, last quarter {change:+.4f} dB")
        if abs(change) < s.plateau_db:
            break
    reached = abs(ladder[-1]["last_quarter_db"]) < s.plateau_db
    return {
        "rule": f"smallest N of {list(s.budget_ladder)} with |PSNR_y(N) - PSNR_y(3N/4)| < {s.plateau_db} dB "
        f"(scratch, seed {s.seeds[0]}, held-out photos)",
        "iterations": ladder[-1]["iterations"],
        "reached": reached,
        "plateau_db": s.plateau_db,
        "ladder": ladder,
        "doubled": doubling_check(ctx, ladder[-1]),
    }


def doubling_check(ctx: Context, rung: dict[str, Any]) -> dict[str, Any] | None:
    """Scratch (first seed) trained for twice the budget: its score and gain over the budget's run.

    Under a decaying schedule the last quarter of any run is nearly flat, so the budget rule can be met by a
    network that a longer schedule still improves; this run measures that. The same spec as a ladder rung
    of 2N, so either reuses the other. None when ``--stored-only`` / ``--only`` leave it out.
    """
    s, n = ctx.sizes, 2 * rung["iterations"]
    records = run_phase(
        ctx, f"budget check {n}", [student_spec(s, "none", s.seeds[0], n, "converged")], jobs=1
    )
    if not records:
        return None
    gain = records[0]["psnr_y"] - rung["psnr_y"]
    ctx.log(f"budget check {n}: held-out PSNR_y {records[0]['psnr_y']:.3f} dB, {gain:+.4f} dB over N")
    return {"iterations": n, "psnr_y": records[0]["psnr_y"], "gain_db": gain, "curve": records[0]["curve"]}


def run_converged(ctx: Context, threads_teacher: int | None) -> dict[str, Any]:
    """Teacher, student budget, every method (and lever) at that budget for every seed, then ``doubled``."""
    teacher = run_teacher(ctx, threads_teacher)
    budget = measure_budget(ctx)
    s = ctx.sizes
    students = run_phase(
        ctx, "converged", every_seed(ctx, [*s.methods, *s.levers], budget["iterations"], "converged")
    )
    doubled = every_seed(ctx, s.doubled, 2 * budget["iterations"], "converged", s.seeds[: s.doubled_seeds])
    at_double = run_phase(ctx, "twice the budget", doubled) if doubled else []
    return {"teacher": teacher, "students": students, "budget": budget, "doubled": at_double}


def check_only(sizes: Sizes, only: Sequence[str]) -> None:
    """Refuse an ``--only`` entry that is neither a method of ``sizes`` nor a run name of one."""
    methods = {*sizes.methods, *sizes.levers}
    unknown = sorted(x for x in only if x not in methods and x.split("-", 1)[0] not in methods)
    if unknown:
        raise ValueError(f"--only: unknown methods or runs {unknown}, choose from {sorted(methods)}")


def lever_specs(ctx: Context) -> list[RunSpec]:
    """``methods`` and ``levers`` at the equal-iteration budget, seed-major (the methods keep their names)."""
    s = ctx.sizes
    group = {m: "levers" if m in LEVERS else "equal_iterations" for m in (*s.methods, *s.levers)}
    return [
        student_spec(s, m, seed, s.iterations, group[m], weights_for(m, ctx.tuned))
        for seed in s.seeds
        for m in (*s.methods, *s.levers)
    ]


def run_levers(ctx: Context, threads_teacher: int | None) -> dict[str, Any]:
    """The teacher, then the lever study (``plan.LEVER_STUDY``): every method and lever, every seed."""
    teacher = run_teacher(ctx, threads_teacher)
    return {"teacher": teacher, "students": run_phase(ctx, "levers", lever_specs(ctx))}


def run_sweep(ctx: Context, threads_teacher: int | None, grid: dict, seeds: Sequence[int]) -> dict[str, Any]:
    """The teacher, then every point of the loss-weight ``grid`` for ``seeds`` (``quality.sweep``)."""
    teacher = run_teacher(ctx, threads_teacher)
    runs = run_phase(ctx, "sweep", sweep_specs(ctx.sizes, grid, seeds))
    return {"teacher": teacher, "runs": runs}
