"""The meta signal of a run, read back from its CSV log: meta-gradient norm, KRNet drift, noise share.

The training logs them at its logging steps (``meta_kd_sr.meta.health``): ``train/meta_grad_norm``,
``train/krnet_drift`` and ``train/meta_noise_share``. A run summarises as the median meta-gradient norm of
the first and of the last tenth of the logged meta steps, the drift at the end, and the mean noise share and
median-weight signal-to-noise ratio over the second half of the run (``None`` where the run did not log them).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

COLUMNS = {
    "grad_norm": "train/meta_grad_norm",
    "drift": "train/krnet_drift",
    "noise": "train/meta_noise_share",
    "snr": "train/meta_snr",
}


def read_series(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` of the meta columns in ``<run_dir>/csv/version_*/metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {name: [] for name in COLUMNS}
    for path in sorted(Path(run_dir).glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for name, column in COLUMNS.items():
                    value = row.get(column, "")
                    if value not in ("", None):
                        series[name].append((int(row["step"]), float(value)))
    return {name: sorted(dict(values).items()) for name, values in series.items()}  # a resume logs twice


def summarize_run(run_dir: str | Path, iterations: int) -> dict[str, Any] | None:
    """The run's meta signal (see the module docstring); ``None`` when it logged no meta step."""
    series = read_series(run_dir)
    norms = [v for _, v in series["grad_norm"]]
    if not norms:
        return None
    tenth = max(1, math.ceil(len(norms) / 10))
    late_noise = [v for step, v in series["noise"] if step >= iterations // 2]
    late_snr = [v for step, v in series["snr"] if step >= iterations // 2]
    return {
        "logged_meta_steps": len(norms),
        "grad_norm_start": statistics.median(norms[:tenth]),
        "grad_norm_end": statistics.median(norms[-tenth:]),
        "drift_end": series["drift"][-1][1] if series["drift"] else None,
        "noise_share_second_half": statistics.fmean(late_noise) if late_noise else None,
        "snr_second_half": statistics.fmean(late_snr) if late_snr else None,
    }
