"""Fair baselines: each KD method's main loss weight, chosen on validation photos (``--sweep``).

Every point of ``GRID`` trains at the 1000-iteration regime (``FULL``) for ``SWEEP_SEEDS`` and is scored on
``quality.heldout.SWEEP_VAL``, never on the held-out photos the regimes report. The point with the best mean
PSNR_y is the method's weights (``weights.json``); both regimes read them. The MKD family takes the weight
chosen for ``mkd_frozen`` (``TUNED_BY``): the same KRNet loss, tuned without the meta step's cost, so MKD and
``mkd_frozen`` differ by the meta-learning alone.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plan import EXPLORE, LEVERS, MKD_VARIANTS, RunSpec, Sizes, student_spec
from .stats import mean_sd

SWEEP_SEEDS = (0, 1)
FAKD_10 = 10 / 255  # FAKD's 10 on a [0, 255] L1, on our [0, 1] L1 (conf/distill/fakd.yaml)
# method -> {label: overrides}; the first method runs first (FAKD: the preset before and after its fix).
GRID: dict[str, dict[str, tuple[str, ...]]] = {
    "fakd": {
        "kd10": ("distill.kd_weight=10.0",),  # the preset before the fix: 10 next to a [0, 1] L1
        "kd10of255": (f"distill.kd_weight={FAKD_10}",),  # the preset: FAKD's balance
        "kd30of255": (f"distill.kd_weight={3 * FAKD_10}",),
        "kd3of255": (f"distill.kd_weight={FAKD_10 / 3}",),
        "kd10of255-gt": (
            f"distill.kd_weight={FAKD_10}",
            "distill.rec_weight=1.0",
            "distill.output_weight=0.0",
        ),
    },
    "output": {
        "a0.25": ("distill.rec_weight=0.75", "distill.output_weight=0.25"),
        "a0.5": ("distill.rec_weight=0.5", "distill.output_weight=0.5"),  # the preset (FAKD's split)
        "a0.75": ("distill.rec_weight=0.25", "distill.output_weight=0.75"),
        "a0.9": ("distill.rec_weight=0.1", "distill.output_weight=0.9"),  # past the first grid's best edge
    },
    "mkd_frozen": {
        "kd0.3": ("distill.kd_weight=0.3",),
        "kd1": ("distill.kd_weight=1.0",),  # the preset
        "kd3": ("distill.kd_weight=3.0",),
        "kd10": ("distill.kd_weight=10.0",),  # past the first grid's best edge
    },
    **{
        m: {
            "kd0.1": ("distill.kd_weight=0.1",),
            "kd1": ("distill.kd_weight=1.0",),
            "kd10": ("distill.kd_weight=10.0",),
            "kd0.01": ("distill.kd_weight=0.01",),  # past the first grid's best edge
            "kd0.03": ("distill.kd_weight=0.03",),
        }
        for m in ("fitnet", "at", "fsp")
    },
}
QUICK_GRID = {"mkd_frozen": {"kd0.3": GRID["mkd_frozen"]["kd0.3"], "kd1": GRID["mkd_frozen"]["kd1"]}}
TUNED_BY = {m: "mkd_frozen" for m in ("mkd", "mkd_static", "mkd_nocorr", *MKD_VARIANTS, *EXPLORE, *LEVERS)}


def sweep_specs(
    sizes: Sizes, grid: Mapping[str, Mapping[str, tuple[str, ...]]], seeds: Sequence[int]
) -> list[RunSpec]:
    """Every grid point for every seed (method by method, seed-major within a method)."""
    return [
        student_spec(sizes, method, seed, sizes.iterations, "sweep", overrides, label)
        for method, points in grid.items()
        for seed in seeds
        for label, overrides in points.items()
    ]


def label_of(record: Mapping[str, Any]) -> str:
    """The grid label of a sweep run (its name is ``sweep-<method>-<label>-s<seed>-n<iterations>``)."""
    prefix = f"sweep-{record['method']}-"
    return record["name"][len(prefix) :].rsplit("-s", 1)[0]


def choose(records: Sequence[Mapping[str, Any]], grid: Mapping[str, Mapping[str, tuple[str, ...]]]) -> dict:
    """Per method: every point's mean +- sd PSNR_y over seeds, and the best point (``chosen``)."""
    out: dict[str, Any] = {}
    for method, points in grid.items():
        rows = []
        for label, overrides in points.items():
            runs = [r for r in records if r["method"] == method and label_of(r) == label]
            if runs:
                rows.append(
                    {
                        "label": label,
                        "overrides": list(overrides),
                        "psnr_y": mean_sd([r["psnr_y"] for r in runs]),
                        "ssim_y": mean_sd([r["ssim_y"] for r in runs]),
                        "seeds": sorted(r["seed"] for r in runs),
                        "train_cpu_s": _mean([r.get("train_cpu_s") for r in runs]),
                    }
                )
        if rows:
            best = max(rows, key=lambda r: r["psnr_y"]["mean"])
            out[method] = {"points": rows, "chosen": {k: best[k] for k in ("label", "overrides")}}
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def read_weights(path: Path) -> dict[str, tuple[str, ...]]:
    """``{method: overrides}`` chosen by a finished sweep (``weights.json``); ``{}`` when there is none."""
    if not path.is_file():
        return {}
    chosen = json.loads(path.read_text())["chosen"]
    return {m: tuple(c["overrides"]) for m, c in chosen.items()}


def weights_for(method: str, tuned: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The tuned loss-weight overrides of ``method`` (``()``: the preset's weights)."""
    return tuple(tuned.get(TUNED_BY.get(method, method), ()))


def markdown(result: Mapping[str, Any]) -> str:
    """The sweep report: every point (validation photos) and the chosen weights."""
    lines = [
        "# Loss-weight sweep (validation photos, never the held-out ones)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; git commit: {result['git_commit']}",
        f"- {result['iterations']} iterations (the 1000-iteration regime's schedule), seeds "
        f"{result['seeds']}; scored on {', '.join(result['photos'])} (Y, crop {result['scale']}, uint8, "
        "per image)",
        f"- teacher {result['teacher']['name']}; the chosen point has the best mean PSNR_y; the MKD family "
        "uses mkd_frozen's weight",
        "",
        "| method | point | overrides | PSNR_y (dB) | SSIM_y | CPU s | chosen |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for method, entry in result["methods"].items():
        for row in entry["points"]:
            p, s = row["psnr_y"], row["ssim_y"]
            sd = "-" if p["sd"] is None else f"{p['sd']:.3f}"
            ssd = "-" if s["sd"] is None else f"{s['sd']:.4f}"
            cpu = "-" if row["train_cpu_s"] is None else f"{row['train_cpu_s']:.0f}"
            mark = "✓" if row["label"] == entry["chosen"]["label"] else ""
            lines.append(
                f"| {method} | {row['label']} | `{' '.join(row['overrides'])}` | {p['mean']:.3f} ± {sd} "
                f"| {s['mean']:.4f} ± {ssd} | {cpu} | {mark} |"
            )
    return "\n".join(lines) + "\n"
