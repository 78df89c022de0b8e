"""Statistics of the quality benchmark: mean and spread over seeds, paired differences, timing.

Seeds are paired across methods (the same ``seed=`` gives the same student initialisation and data stream),
so a method is compared with a reference by the per-seed differences ``d_i = x_i - ref_i``: their mean, a
95 % interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (Student's t, n - 1 degrees of freedom) and
``t = mean / (sd / sqrt(n))``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as scipy_stats


def mean_sd(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "sd", "n"}`` of ``values``; ``sd`` is the sample standard deviation (None for one value)."""
    if len(values) == 0:
        raise ValueError("mean_sd needs at least one value, got none")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def paired_difference(
    values: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> dict[str, Any]:
    """Paired difference ``values - reference`` over the seeds both hold.

    Args:
        values: seed -> metric of the method.
        reference: seed -> metric of the reference (e.g. scratch), same seeds.
        confidence: two-sided level of the interval.

    Returns:
        ``{"mean", "sd", "n", "dof", "t", "ci": [low, high], "confidence", "seeds"}``; ``t`` is infinite when
        every difference is the same non-zero number, NaN when they are all zero.

    Raises:
        ValueError: fewer than two paired seeds, or a confidence outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    seeds = sorted(set(values) & set(reference))
    if len(seeds) < 2:
        raise ValueError(
            f"a paired difference needs >= 2 seeds present in both, got {seeds} "
            f"(method seeds {sorted(values)}, reference seeds {sorted(reference)})"
        )
    diffs = [values[s] - reference[s] for s in seeds]
    n = len(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    if se > 0:
        t = mean / se
    else:
        t = math.copysign(math.inf, mean) if mean else math.nan
    return {
        "mean": mean,
        "sd": sd,
        "n": n,
        "dof": n - 1,
        "t": t,
        "ci": [mean - quantile * se, mean + quantile * se],
        "confidence": confidence,
        "seeds": seeds,
    }


def beyond_noise(diff: Mapping[str, Any]) -> bool:
    """Whether a paired difference's interval excludes zero."""
    low, high = diff["ci"]
    return low > 0 or high < 0


def seconds_per_iteration(segments: Sequence[Mapping[str, Any]], key: str = "seconds") -> float:
    """Training seconds per iteration over the timing segments of a run (every process of it).

    Iterations a resumed run replayed count in both sums, so the rate stays that of the machine.

    Args:
        segments: the run's timing segments (``quality.timing``).
        key: ``seconds`` (wall time) or ``cpu_seconds`` (the process's CPU time).
    """
    iterations = sum(int(s["iterations"]) for s in segments)
    if iterations <= 0:
        raise ValueError(f"no timed iterations in {len(segments)} timing segment(s): {list(segments)}")
    missing = [s for s in segments if key not in s]
    if missing:
        raise ValueError(f"timing segment(s) without {key!r}: {missing}")
    return sum(float(s[key]) for s in segments) / iterations
