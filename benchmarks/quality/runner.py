"""Run one training of the benchmark through the CLI, resumably, and read back what it wrote.

A run lives in ``<cache>/runs/<name>`` (its Hydra run dir). Its state decides what a launch does:

- ``eval.json`` exists: finished, nothing is launched (a rerun of the benchmark skips it);
- ``checkpoints/last.ckpt`` exists: killed mid-way, continued with ``resume=<that file>`` (bit-exact);
- other run outputs exist (killed before its first resume point): restarted with ``overwrite=true``;
- otherwise: a fresh run.

``bench_spec.json`` holds the overrides the run was started with; a run dir made with other settings is
refused, so a cache never mixes two configurations.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meta_kd_sr.training.recovery import RUN_OUTPUTS

from .curve import read_curve
from .plan import RunSpec
from .stats import seconds_per_iteration
from .timing import read_segments

BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
TIMER = "quality.timing.IterationTimer"
CURVE = "quality.curve.HeldoutCurve"
_LIVE: set[subprocess.Popen] = set()  # trainings running now (terminated on SIGTERM)
_LIVE_LOCK = threading.Lock()


def run_dir(cache: Path, spec: RunSpec) -> Path:
    """The Hydra run dir of ``spec``."""
    return cache / "runs" / spec.name


def run_state(directory: Path) -> str:
    """``finished``, ``resume``, ``restart`` or ``fresh`` (see the module docstring)."""
    if (directory / "eval.json").is_file():
        return "finished"
    if (directory / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    if any((directory / name).exists() for name in RUN_OUTPUTS):
        return "restart"
    return "fresh"


def launch_arguments(
    spec: RunSpec, directory: Path, state: str, teacher_file: Path | None = None
) -> list[str]:
    """The command line of one launch of ``spec`` in ``directory`` for run state ``state``.

    ``teacher_file``: the exported network of ``spec.teacher`` (required when the spec names one).
    """
    if state == "finished":
        raise ValueError(f"run {directory} is finished: nothing to launch")
    curve = (
        [
            f"+callbacks.bench_curve._target_={CURVE}",
            f"+callbacks.bench_curve.path={directory / 'curve.json'}",
            f"+callbacks.bench_curve.every_n_steps={spec.curve_every}",
        ]
        if spec.curve_every
        else []
    )
    extra = {
        "resume": [f"resume={directory / 'checkpoints' / 'last.ckpt'}"],
        "restart": ["overwrite=true"],
        "fresh": [],
    }[state]
    return [
        sys.executable,
        "-m",
        "meta_kd_sr.cli.train",
        *with_teacher(spec, teacher_file),
        *curve,
        f"+callbacks.bench_timer._target_={TIMER}",
        f"+callbacks.bench_timer.path={directory / 'timing' / 'timing.json'}",
        f"hydra.run.dir={directory}",
        *extra,
    ]


def with_teacher(spec: RunSpec, teacher_file: Path | None) -> tuple[str, ...]:
    """The overrides of ``spec`` plus ``teacher.ckpt_path`` when it distils from a teacher."""
    if spec.teacher and teacher_file is None:
        raise ValueError(f"run {spec.name} distils from {spec.teacher}: pass its exported network")
    return (*spec.overrides, f"teacher.ckpt_path={teacher_file}") if spec.teacher else spec.overrides


def check_spec(spec: RunSpec, directory: Path) -> None:
    """Write ``bench_spec.json`` for a new run; refuse a run dir that was made with other settings."""
    path = directory / "bench_spec.json"
    mine = asdict(spec) | {"overrides": list(spec.overrides)}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(
                f"run dir {directory} was made with other settings ({', '.join(changed)} differ): delete it, "
                "or pass another --cache"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=2))


def child_env(threads: int | None) -> dict[str, str]:
    """The training subprocess's environment: ``benchmarks/`` importable, wandb off, the thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS_DIR), env.get("PYTHONPATH")) if p)
    env.setdefault("WANDB_MODE", "disabled")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def lock_cache(cache: Path) -> int:
    """Lock ``cache`` for this benchmark; return the lock's file descriptor (kept open for the process).

    Trainings inherit the descriptor (see :func:`train`), so the cache stays locked while a training this
    benchmark started is alive, even if the benchmark itself was killed.

    Raises:
        RuntimeError: another benchmark, or a training one started, holds the lock.
    """
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / ".bench_quality.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "?"
        os.close(fd)
        raise RuntimeError(
            f"{cache} is in use by another bench_quality run or a training it started (started by pid "
            f"{holder}): wait for it to end, or pass another --cache"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def terminate_all() -> None:
    """Terminate every training this process started and is waiting for (on SIGTERM)."""
    with _LIVE_LOCK:
        for proc in _LIVE:
            proc.terminate()


def _launch(cmd: list[str], log_path: Path, env: dict[str, str], keep_fds: tuple[int, ...]) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=keep_fds)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            return proc.wait()  # no timeout: a full run takes what it takes
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)


def train(
    spec: RunSpec,
    cache: Path,
    threads: int | None,
    log: Callable[[str], None],
    keep_fds: tuple[int, ...] = (),
    teacher_file: Path | None = None,
) -> dict[str, Any]:
    """Run ``spec`` to the end unless finished; return its record (see :func:`read_run`).

    The training's output is appended to ``<cache>/logs/<name>.log``; ``keep_fds`` are passed on to it
    (the cache lock); ``teacher_file`` is the network of ``spec.teacher``. Raises ``RuntimeError`` with the
    log's tail when it fails.
    """
    directory = run_dir(cache, spec)
    check_spec(spec, directory)
    state = run_state(directory)
    launched = False
    if state != "finished":
        cmd = launch_arguments(spec, directory, state, teacher_file)
        log(f"  {spec.name}: {state} run of {spec.iterations} iterations started")
        log_path = cache / "logs" / f"{spec.name}.log"
        start = time.perf_counter()
        code = _launch(cmd, log_path, child_env(threads), keep_fds)
        _append_launch(directory, state, time.perf_counter() - start, code)
        if code != 0:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"run {spec.name} failed (exit {code}); log {log_path}:\n{tail}")
        launched = True
    record = read_run(spec, directory)
    record["launched"] = launched
    return record


def _append_launch(directory: Path, state: str, seconds: float, code: int) -> None:
    path = directory / "bench_launches.json"
    launches = json.loads(path.read_text()) if path.is_file() else []
    launches.append({"state": state, "seconds": seconds, "exit": code, "date": time.strftime("%FT%T%z")})
    path.write_text(json.dumps(launches, indent=2))


def read_run(spec: RunSpec, directory: Path) -> dict[str, Any]:
    """What a finished run left: student file, iterations, training wall and CPU s/it, process seconds.

    ``cpu_s_per_it`` is ``None`` for a run timed without CPU time (a segment from an older timer).
    """
    result = json.loads((directory / "eval.json").read_text())
    segments = read_segments(directory / "timing" / "timing.json")
    s_per_it = seconds_per_iteration(segments)
    timed_cpu = all("cpu_seconds" in s for s in segments)
    cpu_s_per_it = seconds_per_iteration(segments, "cpu_seconds") if timed_cpu else None
    launches_path = directory / "bench_launches.json"
    launches = json.loads(launches_path.read_text()) if launches_path.is_file() else []
    return {
        "name": spec.name,
        "method": spec.method,
        "group": spec.group,
        "seed": spec.seed,
        "iterations": int(result["iterations"]),
        # the exported network, found in the run dir (the dir may have moved since eval.json was written)
        "student": str(directory / Path(result.get("export", result.get("student"))).name),
        "s_per_it": s_per_it,
        "train_s": s_per_it * int(result["iterations"]),
        "cpu_s_per_it": cpu_s_per_it,
        "train_cpu_s": None if cpu_s_per_it is None else cpu_s_per_it * int(result["iterations"]),
        "process_s": sum(launch["seconds"] for launch in launches),
        "launches": len(launches),
        "run_dir": str(directory),
        **({"curve": read_curve(directory / "curve.json")} if spec.curve_every else {}),
    }
