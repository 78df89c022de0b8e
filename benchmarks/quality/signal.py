"""The whole-run meta signal of a run, read from the z file its training writes (``meta.signal_file``).

For each KRNet weight, z = |sum_t g_t| / (sd(g) sqrt(N)) over the N meta-gradients of the run
(``meta_kd_sr.meta.signal``). Pure noise gives a half-normal: a share 0.0027 of the weights above 3 and a
median of 0.674. A record keeps the shares above 2, 3 and 4 (with pure noise's), quantiles and a histogram of
z, so the distributions of a method and of its control (``meta.control=shuffle``) can be compared and
plotted without the run dir.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meta_kd_sr.meta.signal import half_normal_share

SIGNAL_FILE = "meta_signal.pt"  # the default of ``meta.signal_file``
THRESHOLDS = (2.0, 3.0, 4.0)
HISTOGRAM_EDGES = tuple(0.25 * i for i in range(33))  # 0 ... 8; the last bin also counts z > 8


def summarize_z(z: Sequence[float] | Any, steps: int, control: str) -> dict[str, Any]:
    """Shares above ``THRESHOLDS`` (and pure noise's), median, 90/99 % quantiles, max and a histogram of z."""
    import torch

    z = torch.as_tensor(z, dtype=torch.float64).reshape(-1)
    if z.numel() == 0:
        raise ValueError("z is empty: no KRNet weights")
    finite = z.clamp_max(1e30)  # an infinite z (constant non-zero gradient) counts in the top bin
    top = HISTOGRAM_EDGES[-1]
    counts = torch.histc(finite.clamp(0.0, top - 1e-9), bins=len(HISTOGRAM_EDGES) - 1, min=0.0, max=top)
    return {
        "steps": int(steps),
        "weights": int(z.numel()),
        "control": control,
        "share_above": {f"{t:g}": (z > t).double().mean().item() for t in THRESHOLDS},
        "noise_share_above": {f"{t:g}": half_normal_share(t) for t in THRESHOLDS},
        "median": z.median().item(),
        "q90": torch.quantile(finite, 0.9).item(),
        "q99": torch.quantile(finite, 0.99).item(),
        "max": z.max().item(),
        "histogram": {"edges": list(HISTOGRAM_EDGES), "counts": [int(c) for c in counts.tolist()]},
    }


def summarize_signal(path: str | Path) -> dict[str, Any] | None:
    """``summarize_z`` of the z file at ``path``; ``None`` when the run wrote none (no meta step)."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=True)
    return summarize_z(data["z"], data["steps"], data["control"])


def pooled(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean over the runs (seeds) of the shares above each threshold and of the median z."""
    signals = [r["meta_signal"] for r in records if r.get("meta_signal")]
    if not signals:
        return None
    n = len(signals)
    counts = [sum(s["histogram"]["counts"][i] for s in signals) for i in range(len(HISTOGRAM_EDGES) - 1)]
    return {
        "runs": n,
        "steps": sum(s["steps"] for s in signals) / n,
        "weights": signals[0]["weights"],
        "share_above": {k: sum(s["share_above"][k] for s in signals) / n for k in signals[0]["share_above"]},
        "noise_share_above": signals[0]["noise_share_above"],
        "median": sum(s["median"] for s in signals) / n,
        "q99": sum(s["q99"] for s in signals) / n,
        "histogram": {"edges": list(HISTOGRAM_EDGES), "counts": counts},
    }
