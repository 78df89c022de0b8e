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

Modes (one results folder, ``--out``, default ``benchmarks/results``):

- the short regime above (default; ``quality.{json,md}``, ``quality_front.png``);
- ``--sweep``: each KD method's loss weight chosen on validation photos at the 1000-iteration schedule
  (``quality/sweep.py``; ``sweep.{json,md}``, ``weights.json``, which both regimes read);
- ``--regime converged``: a stronger teacher, the students' budget measured by the plateau rule of
  ``quality/curve.py``, then the methods at that budget (``converged.{json,md}``, ``converged_budget.png``).
- ``--regime levers``: the meta step's levers (``quality.plan.LEVERS``) against frozen KRNets on the same
  data, and every meta-learned run's whole-run z against pure noise and the shuffled-target control
  (``quality/signal.py``; ``levers.{json,md}``, ``levers_signal.png``).
- ``--stored-only`` (converged and levers regimes): train nothing; report the stored runs and those left out.
  ``--only a,b`` trains only these methods or runs (a second process on another ``--cache`` shares the work).

Resumable across machines: every finished run is scored at once and its record (``record.json``) and exported
network go to ``<out>/runs/<name>/`` with the manifest ``<out>/students.json`` (``quality/store.py``); a run
with a stored record is never trained again. On the same machine a killed run continues from
``<cache>/runs/<name>/checkpoints/last.ckpt`` with ``resume=``. In the background::

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
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import pipeline, runner, sweep  # noqa: E402
from quality.heldout import HELDOUT, SWEEP_VAL, check_disjoint  # noqa: E402
from quality.plan import (  # noqa: E402
    CONVERGED,
    FULL,
    LEVER_STUDY,
    QUICK,
    QUICK_CONVERGED,
    QUICK_LEVERS,
    Sizes,
    student_spec,
    teacher_spec,
)
from quality.results import (  # noqa: E402
    collect,
    collect_converged,
    collect_levers,
    collect_sweep,
    git_commit,
    portable,
    sweep_seeds,
    write_outputs,
)

REPO = Path(__file__).resolve().parents[1]
SCALE = pipeline.SCALE
SIZES = {("short", False): FULL, ("short", True): QUICK, ("converged", False): CONVERGED}
SIZES |= {("converged", True): QUICK_CONVERGED, ("sweep", False): FULL, ("sweep", True): QUICK}
SIZES |= {("levers", False): LEVER_STUDY, ("levers", True): QUICK_LEVERS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the pipeline in about a minute")
    parser.add_argument(
        "--regime",
        choices=("short", "converged", "levers"),
        default="short",
        help="short: 1000 iterations, equal time, explore (quality.*); converged: students at their measured "
        "plateau under a stronger teacher (converged.*); levers: the meta step's levers and the whole-run "
        "meta signal against frozen KRNets at 1000 iterations (levers.*)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="choose each KD method's loss weights on validation photos at 1000 iterations "
        "(sweep.md, weights.json)",
    )
    parser.add_argument(
        "--weights", type=Path, help="the sweep's chosen weights (default: <out>/weights.json)"
    )
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
    parser.add_argument(
        "--only",
        type=lambda text: tuple(text.split(",")),
        default=(),
        help="converged or levers regime: train only these methods or runs (comma-separated names); other "
        "runs are reported when stored (a second process on another --cache can so share the work)",
    )
    parser.add_argument(
        "--stored-only",
        action="store_true",
        help="train nothing: report the runs stored so far (methods with >= 2 seeds), naming those left out",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 0:
        raise SystemExit(f"--jobs must be >= 1 and --threads >= 0, got {args.jobs} and {args.threads}")
    if args.out is None:
        args.out = REPO / ("outputs/bench_quality_quick" if args.quick else "benchmarks/results")
    if args.cache is None:
        args.cache = args.out / "cache" if args.quick else REPO / "outputs" / "bench_quality"
    args.out, args.cache = args.out.resolve(), args.cache.resolve()
    args.weights = (args.weights or args.out / "weights.json").resolve()
    if args.sweep and (args.regime != "short" or args.measure):
        raise SystemExit("--sweep runs at the short regime's sizes: leave out --regime and --measure")
    args.mode = "sweep" if args.sweep else args.regime
    if (args.only or args.stored_only) and args.mode not in ("converged", "levers"):
        raise SystemExit("--only and --stored-only apply to --regime converged and --regime levers")
    return args


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
    return shlex.join(["python", str(shown), *map(portable, sys.argv[1:] if argv is None else argv)])


def measure(ctx: pipeline.Context, args: argparse.Namespace) -> None:
    """Time every configuration interleaved (one process) and print the projected budget."""
    import torch
    from quality import measure as m

    torch.set_num_threads(args.threads or torch.get_num_threads())
    s = ctx.sizes
    try:
        teacher = ctx.teacher_file(s.teacher_name)
    except FileNotFoundError:
        teacher = m.random_teacher(ctx.cache / "measure" / "random_teacher.pt", *s.teacher)
    names = list(dict.fromkeys([*s.methods, *s.equal_time]))
    specs = [student_spec(s, n, s.seeds[0], s.iterations, "equal_iterations") for n in names]
    specs = [dataclasses.replace(x, overrides=runner.with_teacher(x, teacher)) for x in specs]
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
    """Train what is not finished, write the results; print the report and the files' paths."""
    check_disjoint(HELDOUT, training_photos())
    check_disjoint(SWEEP_VAL, [*training_photos(), *HELDOUT])
    if args.threads:  # the evaluation in this process; each training gets OMP_NUM_THREADS
        import torch

        torch.set_num_threads(args.threads)
    teacher_threads = args.jobs * args.threads if args.threads else None
    if args.mode == "sweep":
        grid = sweep.QUICK_GRID if args.quick else sweep.GRID
        runs = pipeline.run_sweep(ctx, teacher_threads, grid, sweep_seeds(args))
        result = collect_sweep(ctx, runs, args, grid)
    elif args.mode == "converged":
        result = collect_converged(ctx, pipeline.run_converged(ctx, teacher_threads), args)
    elif args.mode == "levers":
        result = collect_levers(ctx, pipeline.run_levers(ctx, teacher_threads), args)
    else:
        result = collect(ctx, pipeline.run_all(ctx, teacher_threads, explore=args.explore), args)
    files = write_outputs(result, args.out)
    print()
    print(Path(files["markdown"]).read_text())
    ctx.log(f"results: {result['files']['json']}, {result['files']['markdown']}")
    if "plot" in result["files"]:
        ctx.log(f"plot: {result['files']['plot']}")
    return result


def _on_sigterm(signum: int, frame: Any) -> None:
    runner.terminate_all()  # the trainings stop too; a rerun resumes them from their last checkpoint
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (``--regime``, ``--sweep`` or ``--measure``); return the result (or ``None``)."""
    args = parse_args(argv)
    args.command = command_line(argv)
    lock_fd = runner.lock_cache(args.cache)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sizes: Sizes = SIZES[(args.mode, args.quick)]
        log_path = args.cache / "bench_quality.log"
        tuned = {} if args.mode == "sweep" else sweep.read_weights(args.weights)
        ctx = pipeline.Context(
            args.cache,
            sizes,
            args.jobs,
            args.threads or None,
            log_path,
            lock_fd,
            args.out,
            tuned,
            git_commit(),
        )
        pipeline.check_only(sizes, args.only)
        ctx.stored_only, ctx.only = args.stored_only, args.only
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
