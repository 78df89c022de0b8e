"""Quality benchmark of meta KD (``make bench-quality``): seeded, paired, at equal iterations and equal time.

Every training is a subprocess of ``python -m meta_kd_sr.cli.train`` (Hydra overrides, an explicit
``hydra.run.dir=<cache>/runs/<name>``, no timeout); every network is scored by
``meta_kd_sr.cli.evaluate.score_dataset`` on held-out photos that no run trains on (``quality/heldout.py``).

1. One teacher (EDSR, much wider and deeper than the students, trained long), cached in the run dir.
2. Equal iterations: ``none, output, fitnet, at, fsp, fakd, mkd, mkd_frozen, mkd_static, mkd_nocorr``,
   every seed; the same ``seed=`` gives every method the same student initialisation and data stream.
3. Calibration: short timing runs of the equal-time variants that have no equal-iteration run.
4. Equal training time: scratch, output KD, FAKD, MKD with ``meta.every_n_steps`` 2/4/8 and with cheaper
   KRNets (``distill.loss.hidden=16``, ``distill.loss.n_kernels=2``) get the iterations that MKD's mean
   training CPU time allows at their own measured CPU s/it (kept in ``<cache>/equal_time.json``).
5. Explore: MKD variants at equal iterations (``quality.plan.EXPLORE``: KRNet lr x10, pseudo step x10, the
   real Adam step as pseudo step, meta-learning from half the run), each against ``mkd_frozen`` and MKD.
6. Evaluation, statistics (mean ± sd; paired difference to scratch, MKD and mkd_frozen with a 95 % t
   interval), the meta signal of every meta-learned run (``quality.health``), ``quality.json``,
   ``quality.md`` and ``quality_front.png`` in ``--out``.

Resumable: a finished run (``eval.json`` in its dir) is skipped, a killed one continues from
``checkpoints/last.ckpt`` with ``resume=``. In the background::

    nohup make bench-quality > bench_quality.out 2>&1 &     # also logged to <cache>/bench_quality.log

``--no-explore`` reports without the exploration runs that have not finished.

Timing: each run times its own training iterations (``quality/timing.py``: start-up, validation and
export excluded), as wall time and as CPU time. ``--jobs 2 --threads 1`` (the default) runs two trainings
at a time with one torch thread each: tiny networks gain little from a second thread, so two single-thread
runs on two cores finish the set about twice as fast, and every run (MKD included) is timed alike. The
equal-time budget is CPU time: with one thread it equals the wall time of an idle core, and other work on
the machine does not change it (it only slows the benchmark down). The teacher trains alone with
``jobs x threads`` threads.

Sizing of the full run (``FULL`` in ``quality/plan.py``) for <= 3 h on 2 quiet cores
(student EDSR 8 ch x 3 blocks, teacher EDSR 32 x 8, LR patch 16, batch 16, 3 seeds, N = 1000 iterations).

- Rates, measured by the first full run (CPU s/it of one thread, seeds 1-2 on a quiet machine): scratch
  0.041; output 0.11, fitnet 0.055, at 0.056, fsp 0.053, fakd 0.15, mkd 0.26, mkd_frozen 0.098,
  mkd_static 0.20, mkd_nocorr 0.25 (the ten sum to 1.27 s); the teacher 0.19 s/it at 2 threads (with
  other work beside it).
  (``--measure`` projects from rates measured interleaved in one process; they read about 1.5x low against
  these for scratch, so take its projection as a lower bound.)
- Equal iterations: 3 seeds x 1000 x 1.27 s = 3800 core-s.
- Equal time: an MKD run trains 1000 x 0.26 = 260 s; 8 methods x 3 seeds x 260 s = 6300 core-s.
- Explore: 4 variants x 3 seeds x ~260 s = 3100 core-s.
- Calibration (5 x 100 iterations) ~80 core-s; start-up, validation and export ~12 s a run x 72 runs
  = 860 core-s. Students: 14100 core-s on 2 cores = 7100 s.
- Teacher: 6000 x 0.19 = 1130 s (both cores). Held-out evaluation ~100 s.
- Total about 8300 s = 2.3 h.

Why these sizes (held-out PSNR_y over the 8 photos, from single CLI runs; bicubic 28.05 dB): scratch 8 x 3
with lr 1e-3 reached 28.17 / 28.44 / 28.62 / 28.67 dB after 1000 / 2000 / 4000 / 8000 iterations; with
lr 3e-3, 28.67 after 2000 and 28.69 after 4000. N = 1000 at lr 3e-3 is short of the plateau, the regime
where distillation can speed a student up; the equal-time scratch runs (1000 x 8.43 = about 8400
iterations) are the converged student. The 32 x 8 teacher (lr 1e-3, 12000 iterations) scored 29.63 dB
(29.44 at iteration 5000 of that schedule): about 0.9 dB over the converged student, where the benchmark
requires 0.5; 6000 iterations with a cosine schedule keep that margin at half the cost (the run reports it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import pipeline, runner  # noqa: E402
from quality.health import summarize_run as summarize_health  # noqa: E402
from quality.heldout import HELDOUT, HeldoutPhotos, check_disjoint  # noqa: E402
from quality.plan import FULL, QUICK, Sizes, student_spec, teacher_spec  # noqa: E402
from quality.report import markdown, plot_front, summarize  # noqa: E402

from meta_kd_sr.finite import finite_or_none  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCALE = 4
TEACHER_MARGIN_DB = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the pipeline in about a minute")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results; --quick: outputs/bench_quality_quick)",
    )
    parser.add_argument(
        "--cache", type=Path, help="run dirs and logs (default: outputs/bench_quality; --quick: <out>/cache)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training (0: torch's)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="only time every configuration interleaved in this process and project the budget",
    )
    parser.add_argument("--measure-iterations", type=int, default=16)
    parser.add_argument(
        "--no-explore",
        dest="explore",
        action="store_false",
        help="leave out the exploration runs not yet finished (report the finished ones)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 0:
        raise SystemExit(f"--jobs must be >= 1 and --threads >= 0, got {args.jobs} and {args.threads}")
    if args.out is None:
        args.out = REPO / ("outputs/bench_quality_quick" if args.quick else "benchmarks/results")
    if args.cache is None:
        args.cache = args.out / "cache" if args.quick else REPO / "outputs" / "bench_quality"
    args.out, args.cache = args.out.resolve(), args.cache.resolve()
    return args


def machine(threads: int | None, jobs: int) -> dict[str, Any]:
    """Platform, CPU model, cores, torch threads per run and parallel runs."""
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "jobs": jobs,
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "default",
    }


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout (with ``+dirty`` when tracked files differ), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def training_photos() -> list[str]:
    """The train and meta photos of the configs the runs use (``data=embedded_meta``)."""
    from hydra import compose, initialize_config_dir

    from meta_kd_sr.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["data=embedded_meta", "paths.output_dir=."])
    return [*cfg.data.train.names, *cfg.data.meta.names]


def command_line(argv: list[str] | None) -> str:
    """The command that ran the benchmark, as a user would type it from the repository root."""
    script = Path(__file__).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def collect(ctx: pipeline.Context, runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every run, compute the statistics, and assemble the JSON result."""
    from meta_kd_sr.cli.evaluate import score_dataset
    from meta_kd_sr.inference import upscale_bicubic

    dataset = HeldoutPhotos(HELDOUT, SCALE)
    students = [*runs["students"], *runs["equal_time"], *runs["explore"]]
    teacher, *evaluated = pipeline.evaluate_all(ctx, [runs["teacher"], *students], dataset)
    for record in evaluated:
        record["meta_health"] = summarize_health(record["run_dir"], record["iterations"])
    bicubic = score_dataset(lambda lq: upscale_bicubic(lq, SCALE), dataset, SCALE)
    margin = pipeline.teacher_margin(teacher, evaluated, TEACHER_MARGIN_DB)
    verdict = "ok" if margin["ok"] else f"FAILS: below {TEACHER_MARGIN_DB} dB, little to distil"
    ctx.log(
        f"teacher {teacher['psnr_y']:.3f} dB, {margin['psnr_y']:+.3f} over {margin['reference']}: {verdict}"
    )
    return {
        "command": args.command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(args.threads, args.jobs),
        "git_commit": git_commit(),
        "mode": "quick" if args.quick else "full",
        "scale": SCALE,
        "sizes": ctx.sizes.as_dict(),
        "heldout": list(dataset.image_names),
        "teacher": teacher,
        "student_params": evaluated[0]["params"],
        "bicubic": bicubic,
        "teacher_margin": margin,
        "budget": runs["budget"],
        "runs": evaluated,
        "calibration": runs["calibration"],
        "summary": summarize(evaluated),
    }


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    """``quality.json``, ``quality.md`` and ``quality_front.png`` in ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "quality.json", "markdown": out / "quality.md", "plot": out / "quality_front.png"}
    result["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(finite_or_none(result), indent=2, allow_nan=False) + "\n")
    files["markdown"].write_text(markdown(result))
    plot_front(result, files["plot"])
    return result["files"]


def measure(ctx: pipeline.Context, args: argparse.Namespace) -> None:
    """Time every configuration interleaved (one process) and print the projected budget."""
    import torch
    from quality import measure as m

    torch.set_num_threads(args.threads or torch.get_num_threads())
    s = ctx.sizes
    teacher = (
        ctx.teacher_ckpt
        if ctx.teacher_ckpt.is_file()
        else m.random_teacher(ctx.cache / "measure" / "random_teacher.pt", *s.teacher)
    )
    names = list(dict.fromkeys([*s.methods, *s.equal_time]))
    specs = [student_spec(s, n, s.seeds[0], s.iterations, "equal_iterations", teacher) for n in names]
    specs.append(dataclasses.replace(teacher_spec(s), method="teacher"))
    times = m.time_interleaved(specs, ctx.cache / "measure", args.measure_iterations, 2, ctx.log)
    base = times["none"]
    for name, t in times.items():
        ctx.log(
            f"{name:<14} wall {t['wall']:.4f} s/it (x{t['wall'] / base['wall']:.2f})  "
            f"cpu {t['cpu']:.4f} s/it (x{t['cpu'] / base['cpu']:.2f})"
        )
    rate = {n: times[n]["cpu"] for n in names}
    plan = m.projected_budget(rate, s, times["teacher"]["cpu"], args.jobs)
    ctx.log("projected, with CPU s/it as the quiet-core rate (seconds):")
    for key, value in plan.items():
        ctx.log(f"  {key:<24} {value:9.0f}")
    ctx.log(f"  total: {plan['total_s'] / 3600:.2f} h (the teacher at 1 thread; it trains alone)")


def run(args: argparse.Namespace, ctx: pipeline.Context) -> dict[str, Any]:
    """Train what is not finished, evaluate, write the results; print the table and the plot's path."""
    check_disjoint(HELDOUT, training_photos())
    if args.threads:  # the evaluation in this process; each training gets OMP_NUM_THREADS
        import torch

        torch.set_num_threads(args.threads)
    teacher_threads = args.jobs * args.threads if args.threads else None
    runs = pipeline.run_all(ctx, teacher_threads, explore=args.explore)
    result = collect(ctx, runs, args)
    files = write_outputs(result, args.out)
    print()
    print(Path(files["markdown"]).read_text())
    ctx.log(f"results: {files['json']}, {files['markdown']}")
    ctx.log(f"plot: {files['plot']}")
    return result


def _on_sigterm(signum: int, frame: Any) -> None:
    runner.terminate_all()  # the trainings stop too; a rerun resumes them from their last checkpoint
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or ``--measure``); return the result (``None`` for ``--measure``)."""
    args = parse_args(argv)
    args.command = command_line(argv)
    lock_fd = runner.lock_cache(args.cache)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sizes: Sizes = QUICK if args.quick else FULL
        log_path = args.cache / "bench_quality.log"
        ctx = pipeline.Context(args.cache, sizes, args.jobs, args.threads or None, log_path, lock_fd)
        ctx.log(f"bench_quality: {args.command}; cache {args.cache}, results {args.out}")
        if args.measure:
            measure(ctx, args)
            return None
        return run(args, ctx)
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(lock_fd)


if __name__ == "__main__":
    main()
