"""The GPU check: CUDA tests, paper-shape step costs, loader throughput, in one command (not a test).

Run it through ``scripts/gpu_check.sh OUT_DIR`` (which installs what a bare GPU image lacks from wheels), or
``make gpu-check``. It writes ``OUT_DIR/gpu_check.json`` (every measurement, and how it was run),
``OUT_DIR/gpu_check.md`` (the tables) and ``OUT_DIR/gpu_tests.xml`` (pytest's report), rewriting the JSON
and markdown after each section, so a run stopped at its time limit leaves what it measured. Sections:

1. ``pytest -m gpu tests/gpu`` (the CUDA tests; skipped where CUDA is absent);
2. the step costs of ``benchmarks/paper_step.py`` on the device: every method, fp32 and bf16, with peak
   memory (``torch.cuda.max_memory_allocated``);
3. the DIV2K training loader (``SRDataModule``, workers, pinned memory, persistent workers, non-blocking
   copies to the device) on generated DIV2K-sized images, against the patches per second an MKD step
   consumes (train and meta batch);
4. the speed levers of ``paper_step`` (channels-last, compiled teacher, cuDNN autotuning) in bf16.

``--dry`` runs the same code on CPU at tiny sizes (the test suite runs it so that the script cannot rot).
Sections past ``--budget-s`` seconds are skipped and marked so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402
import paper_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What ran where: device, versions, commit, date, mode."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": args.commit or _git_commit(),
        "mode": "dry (CPU, tiny sizes)" if args.dry else "full",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported(),
            "tf32_conv": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    import lightning

    env["lightning"] = lightning.__version__
    return env


def _git_commit() -> str | None:
    try:
        run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return run.stdout.strip() or None


def gpu_tests(out: Path) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` in a subprocess; the counts and the failing tests from its JUnit report."""
    report = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-rs", f"--junitxml={report}"]
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    failed = [
        f"{case.get('classname')}.{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed_tests": failed,
        "exit_code": run.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": run.stdout[-3000:],
    }


def step_args(args: argparse.Namespace, levers: list[str] | None = None, **over: Any) -> argparse.Namespace:
    """``paper_step`` options: the paper's shapes on a GPU, tiny ones with ``--dry``."""
    # --dry: fewer methods (each one's code path is covered by the test suite), one timed iteration
    methods = ["output", "mkd"] if args.dry else [*paper_step.DEFAULT_METHODS, "mkd_reference"]
    base = {
        "families": list(paper_step.FAMILIES),
        "methods": methods,
        "precisions": ["fp32", "bf16"],
        "levers": levers or [],
        "tiny": args.dry,
        "patch": 8 if args.dry else 48,
        "batch": 2 if args.dry else 16,
        "warmup": 1 if args.dry else 2,
        "iters": 1 if args.dry else 4,
        "stages": False,
    }
    return argparse.Namespace(**(base | over))


def loader_throughput(args: argparse.Namespace, device: torch.device, mkd_s: float | None) -> dict[str, Any]:
    """Patches/s of the DIV2K training loader into ``device``, against what an MKD step consumes."""
    sizes = (
        {"images": 4, "height": 96, "width": 120}
        if args.dry
        else {"images": 12, "height": 1356, "width": 2040}
    )
    opts = argparse.Namespace(**sizes, batch=2 if args.dry else 16, patch=32 if args.dry else 192)
    opts.warmup, opts.batches = (1, 3) if args.dry else (5, 60)
    workers = 1 if args.dry else min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_div2k_") as tmp:
        start = time.perf_counter()
        bench_data.build_div2k(Path(tmp), opts.images, opts.height, opts.width)
        loader = bench_data.make_loader(Path(tmp), opts, "npy", workers, pin_memory=device.type == "cuda")
        setup_s = time.perf_counter() - start
        rate = bench_data.patches_per_second(loader, opts.warmup, opts.batches, device)
    out = {
        "images": f"{opts.images} x {opts.width}x{opts.height} (x4)",
        "batch": opts.batch,
        "hr_patch": opts.patch,
        "workers": workers,
        "pin_memory": device.type == "cuda",
        "setup_s": round(setup_s, 1),
        "patches_per_s": round(rate, 1),
    }
    if mkd_s:
        # an MKD iteration reads a train batch and a meta batch of the same size
        out["mkd_patches_per_s"] = round(2 * opts.batch / mkd_s, 1)
        out["loader_over_mkd"] = round(rate / out["mkd_patches_per_s"], 2)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: environment, tests, step costs, loader, levers."""
    env = report["environment"]
    lines = ["# GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    tests = report.get("tests")
    if isinstance(tests, dict) and "tests" in tests:
        lines += ["", "## CUDA tests (`pytest -m gpu tests/gpu`)", ""]
        failed = tests["failures"] + tests["errors"]
        lines.append(
            f"{tests['passed']} passed, {failed} failed, {tests['skipped']} skipped ({tests['seconds']} s)"
        )
        lines += [f"- failed: `{t}`" for t in tests["failed_tests"]]
    for key, title in (("steps", "Step cost per method"), ("levers", "Speed levers (each alone)")):
        section = report.get(key)
        if isinstance(section, dict) and "table" in section:
            lines += ["", f"## {title}", "", section["header"], "", section["table"]]
            lines += [f"- {name}: failed: {why}" for name, why in section.get("errors", {}).items()]
    loader = report.get("loader")
    if isinstance(loader, dict) and "patches_per_s" in loader:
        lines += ["", "## DIV2K training loader", ""]
        lines += [f"- {k}: {v}" for k, v in loader.items()]
    for key, value in report.items():
        if isinstance(value, dict) and ("error" in value or "not_run" in value):
            lines.append(f"\n**{key}**: {value.get('error') or value.get('not_run')}")
    return "\n".join(lines) + "\n"


def save(report: dict[str, Any], out: Path) -> None:
    """Write the JSON and the markdown (after every section)."""
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def section(report: dict[str, Any], out: Path, key: str, budget: float, start: float, fn) -> Any:
    """Run ``fn`` into ``report[key]`` unless the budget is spent; record an error instead of stopping."""
    elapsed = time.perf_counter() - start
    if elapsed > budget:
        report[key] = {"not_run": f"time budget of {budget:.0f} s spent ({elapsed:.0f} s)"}
    else:
        print(f"[gpu-check] {key} ...", flush=True)
        try:
            report[key] = fn()
        except Exception as err:  # one broken section must not lose the others' results
            report[key] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-4000:],
            }
        print(f"[gpu-check] {key} done at {time.perf_counter() - start:.0f} s", flush=True)
    save(report, out)
    return report[key]


def steps(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``paper_step.run`` over every method, fp32 and bf16; the header says how it ran."""
    opts = step_args(args)
    done = paper_step.run(opts, device, log=lambda line: print(line, flush=True))
    return {"header": paper_step.header(opts, device), **done}


def levers(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Each speed lever alone on output KD and MKD in bf16, beside the same rows without it (same run).

    The compiled teacher is timed on EDSR only (compiling RCAN's 200 blocks costs minutes of the budget).
    """
    plan = [("edsr", ["cl", "ct", "cb"]), ("rcan", ["cl", "cb"])] if not args.dry else [("edsr", ["cl"])]
    methods = ["mkd"] if args.dry else ["output", "mkd"]
    results, tables, errors = [], [], {}
    for family, chosen in plan:
        opts = step_args(args, chosen, methods=methods, precisions=["bf16"], families=[family])
        done = paper_step.run(opts, device, log=lambda line: print(line, flush=True))
        results += done["results"]
        tables.append(done["table"])
        errors |= done["errors"]
    header = paper_step.header(step_args(args, precisions=["bf16"]), device)
    table = "\n".join([tables[0], *(t.split("\n", 2)[2] for t in tables[1:])])  # one header row
    return {"header": header, "results": results, "table": table, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    """Run the sections in order; exit 1 when a CUDA test failed, 2 without CUDA (unless --dry)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes: the code path only")
    parser.add_argument("--commit", help="the commit checked (default: git rev-parse HEAD)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sections that start later")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "steps", "loader", "levers"])
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print(
            "gpu-check: CUDA is not available here (use --dry to run the code path on CPU)", file=sys.stderr
        )
        return 2
    device = torch.device("cpu" if args.dry else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(args, device)}
    save(report, args.out)
    run = {
        "tests": lambda: gpu_tests(args.out),
        "steps": lambda: steps(args, device),
        "loader": lambda: loader_throughput(args, device, _mkd_seconds(report)),
        "levers": lambda: levers(args, device),
    }
    for key, fn in run.items():
        if key not in args.skip:
            section(report, args.out, key, args.budget_s, start, fn)
    report["total_s"] = round(time.perf_counter() - start, 1)
    save(report, args.out)
    print((args.out / "gpu_check.md").read_text())
    tests = report.get("tests", {})
    return 1 if tests.get("failures") or tests.get("errors") or "error" in tests else 0


def _mkd_seconds(report: dict[str, Any]) -> float | None:
    """Median seconds of the EDSR MKD step in bf16 (fp32 with --dry) from the step section, if measured."""
    rows = report.get("steps", {}).get("results", [])
    for precision in ("bf16", "fp32"):
        for row in rows:
            if row["family"] == "edsr" and row["method"] == "mkd" and row["precision"] == precision:
                return float(row["median_s"])
    return None


if __name__ == "__main__":
    raise SystemExit(main())
