"""What the quality benchmark writes: the result JSON of each mode, its report and plot, in portable form.

Every path a result file names is relative to the repository (``quality.store.shown``); a command-line path
outside it is shown as ``<outside the repository>/<name>``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from meta_kd_sr.runtime.finite import finite_or_none

from . import pipeline, report_converged, report_levers, store, sweep
from .heldout import HELDOUT, SWEEP_VAL, HeldoutPhotos
from .report import before_rows, markdown, plot_front, summarize

REPO = store.REPO
SCALE = pipeline.SCALE


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
    """``git rev-parse HEAD`` of the checkout (``+dirty``: tracked files outside the results differ)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # the results folder itself changes with every stored run: not a change of the code
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def portable(arg: str) -> str:
    """A command-line argument without a machine's absolute path.

    Relative to the repository when inside it, else ``<outside the repository>/<name>``.
    """
    if not arg.startswith("/"):
        return arg
    path = Path(arg).resolve()
    return (
        str(path.relative_to(REPO)) if path.is_relative_to(REPO) else f"<outside the repository>/{path.name}"
    )


def header(ctx: pipeline.Context, args: argparse.Namespace, teacher: dict[str, Any]) -> dict[str, Any]:
    """What every result file starts with: command, date, machine, commit, sizes, teacher, left-out runs."""
    return {
        "left_out": list(ctx.left_out),
        "command": args.command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(args.threads, args.jobs),
        "git_commit": ctx.git_commit,
        "mode": "quick" if args.quick else "full",
        "regime": args.mode,
        "scale": SCALE,
        "sizes": ctx.sizes.as_dict(),
        "teacher": teacher,
    }


def weights_used(ctx: pipeline.Context, args: argparse.Namespace) -> str:
    """The loss weights the runs use, in words."""
    if not ctx.tuned:
        return "the presets' (no finished sweep: weights.json absent)"
    chosen = "; ".join(f"{m}: {' '.join(o)}" for m, o in ctx.tuned.items())
    return f"tuned by the sweep ({portable(str(args.weights))}): {chosen}"


# The short regime's record made with the presets' loss weights, before the sweep chose them: the report
# sets its equal-iteration rows beside this run's when the file is in the results folder.
UNTUNED = "quality_untuned.json"


def before_sweep(out: Path) -> dict[str, Any] | None:
    """``out/quality_untuned.json``'s file, commit, date and equal-iteration rows, or ``None`` if absent."""
    path = out / UNTUNED
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return {
        "file": portable(str(path)),
        "git_commit": old["git_commit"],
        "date": old["date"],
        "rows": before_rows(old),
    }


def collect(ctx: pipeline.Context, runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The statistics and the JSON result of the short regime."""
    from meta_kd_sr.cli.evaluate import score_dataset
    from meta_kd_sr.evaluation.inference import upscale_bicubic

    dataset = HeldoutPhotos(HELDOUT, SCALE)
    evaluated = [*runs["students"], *runs["equal_time"], *runs["explore"]]
    teacher = runs["teacher"]
    bicubic = score_dataset(lambda lq: upscale_bicubic(lq, SCALE), dataset, SCALE)
    margin = pipeline.teacher_margin(teacher, evaluated, ctx.sizes.teacher_margin_db)
    log_margin(ctx, teacher, margin)
    return {
        **header(ctx, args, teacher),
        "weights": weights_used(ctx, args),
        "before_sweep": before_sweep(args.out),
        "heldout": list(dataset.image_names),
        "student_params": evaluated[0]["params"],
        "bicubic": bicubic,
        "teacher_margin": margin,
        "budget": runs["budget"],
        "runs": evaluated,
        "calibration": runs["calibration"],
        "summary": summarize(evaluated),
    }


def log_margin(ctx: pipeline.Context, teacher: dict[str, Any], margin: dict[str, Any]) -> None:
    """Log the teacher's lead over the converged scratch student."""
    verdict = "ok" if margin["ok"] else f"FAILS: below {margin['required']} dB, little to distil"
    ctx.log(
        f"teacher {teacher['psnr_y']:.3f} dB, {margin['psnr_y']:+.3f} over {margin['reference']}: {verdict}"
    )


def collect_converged(
    ctx: pipeline.Context, runs: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The statistics and the JSON result of the converged regime."""
    from meta_kd_sr.cli.evaluate import score_dataset
    from meta_kd_sr.evaluation.inference import upscale_bicubic

    dataset = HeldoutPhotos(HELDOUT, SCALE)
    students = with_paired_seeds(runs["students"], ctx)
    doubled = with_paired_seeds(runs["doubled"], ctx)
    margin = pipeline.teacher_margin(runs["teacher"], students, ctx.sizes.teacher_margin_db)
    log_margin(ctx, runs["teacher"], margin)
    return {
        **header(ctx, args, runs["teacher"]),
        "weights": weights_used(ctx, args),
        "heldout": list(dataset.image_names),
        "bicubic": score_dataset(lambda lq: upscale_bicubic(lq, SCALE), dataset, SCALE),
        "teacher_margin": margin,
        "budget": runs["budget"],
        "runs": students,
        "summary": report_converged.summarize(students),
        "doubled_runs": doubled,
        "doubled_summary": report_converged.summarize(doubled),
    }


def with_paired_seeds(records: list[dict[str, Any]], ctx: pipeline.Context) -> list[dict[str, Any]]:
    """The records of methods with >= 2 seeds (a partial ``--stored-only`` report pairs no single run)."""
    seeds: dict[str, int] = {}
    for r in records:
        seeds[r["method"]] = seeds.get(r["method"], 0) + 1
    single = [r for r in records if seeds[r["method"]] < 2]
    ctx.left_out += [r["name"] for r in single]
    return [r for r in records if seeds[r["method"]] >= 2]


def collect_levers(ctx: pipeline.Context, runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The statistics and the JSON result of the lever study."""
    students = with_paired_seeds(runs["students"], ctx)
    return {
        **header(ctx, args, runs["teacher"]),
        "weights": weights_used(ctx, args),
        "heldout": list(HeldoutPhotos(HELDOUT, SCALE).image_names),
        "runs": students,
        "summary": report_levers.summarize(students),
    }


def collect_sweep(ctx: pipeline.Context, runs: dict[str, Any], args: argparse.Namespace, grid: dict) -> dict:
    """The sweep's result: every point on the validation photos and the chosen weights."""
    return {
        **header(ctx, args, runs["teacher"]),
        "iterations": ctx.sizes.iterations,
        "seeds": list(sweep_seeds(args)),
        "photos": list(SWEEP_VAL),
        "runs": runs["runs"],
        "methods": sweep.choose(runs["runs"], grid),
    }


def sweep_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """The seeds of the sweep (one for ``--quick``)."""
    return sweep.SWEEP_SEEDS[:1] if args.quick else sweep.SWEEP_SEEDS


def dump(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` as JSON, every run record in its public form (``quality.store.public``)."""
    out = path.parent
    result = dict(result)
    for key in ("runs", "calibration", "doubled_runs"):
        if key in result:
            result[key] = [store.public(r, out) for r in result[key]]
    if isinstance(result.get("teacher"), dict) and "student" in result["teacher"]:
        result["teacher"] = store.public(result["teacher"], out)
    path.write_text(json.dumps(finite_or_none(result), indent=2, allow_nan=False) + "\n")


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    """The result files of ``result['regime']`` in ``out``; their paths (relative to the repository)."""
    out.mkdir(parents=True, exist_ok=True)
    regime = result["regime"]
    stem = {"short": "quality", "converged": "converged", "sweep": "sweep", "levers": "levers"}[regime]
    files = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    plots = {"short": "quality_front.png", "converged": "converged_budget.png", "levers": "levers_signal.png"}
    if regime in plots:
        files["plot"] = out / plots[regime]
    result["files"] = {k: store.shown(v, out) for k, v in files.items()}
    dump(result, files["json"])
    if regime == "short":
        files["markdown"].write_text(markdown(result))
        plot_front(result, files["plot"])
    elif regime == "converged":
        files["markdown"].write_text(report_converged.markdown(result))
        report_converged.plot_curve(result["budget"], files["plot"])
    elif regime == "levers":
        files["markdown"].write_text(report_levers.markdown(result))
        report_levers.plot_signal(result["summary"], files["plot"])
    else:
        files["markdown"].write_text(sweep.markdown(result))
        chosen = {m: entry["chosen"] for m, entry in result["methods"].items()}
        dump(
            {"command": result["command"], "git_commit": result["git_commit"], "chosen": chosen},
            out / "weights.json",
        )
        files["weights"] = out / "weights.json"
    return {k: str(v) for k, v in files.items()}
