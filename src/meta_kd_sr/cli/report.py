"""``meta-kd-sr-report``: one table and one chart of the ``eval.json`` files of a sweep or of run dirs.

    meta-kd-sr-report multirun/2026-12-01/10-00-00            # a sweep dir: every run dir below it
    meta-kd-sr-report outputs/train/a outputs/train/b --out reports

Runs are grouped by their command-line overrides (``.hydra/overrides.yaml``) without ``seed``: the runs of a
group differ only in their seed, and each metric is shown as mean ± sd over them (sample sd, n - 1; the
value alone for a group of one run). Columns: PSNR_y and SSIM_y of the validation set (``val``, the best
checkpoint) and of each benchmark folder. Writes ``report.md``, ``report.csv`` and ``report.png`` (a bar
chart of PSNR_y with sd error bars; needs matplotlib, ``--no-chart`` skips it) and prints their paths.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meta_kd_sr.cli.names import readable_override
from meta_kd_sr.runtime.console import one_line_errors

METRICS = ("psnr_y", "ssim_y")
# Overrides that do not make a run another setting: its seed and where it writes.
IGNORED = ("seed", "resume", "overwrite", "paths.output_dir")
DECIMALS = {"psnr_y": 3, "ssim_y": 4}


@dataclass
class Run:
    """One run dir: its overrides, seed and metrics (``{"val/psnr_y": ..., "Set5/ssim_y": ...}``)."""

    path: Path
    overrides: tuple[str, ...]
    seed: str | None
    metrics: dict[str, float]


@dataclass
class Group:
    """Runs that differ only in their seed (and the ignored overrides)."""

    setting: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, column: str) -> list[float]:
        """The finite values of ``column`` over the group's runs."""
        return [r.metrics[column] for r in self.runs if math.isfinite(r.metrics.get(column, math.nan))]

    def mean_sd(self, column: str) -> tuple[float | None, float | None]:
        """Mean and sample sd (``None`` with fewer than two values) of ``column``."""
        values = self.values(column)
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _job_order(path: Path) -> tuple[Any, ...]:
    """Natural order of run dirs: ``2_...`` before ``10_...`` (Hydra's job numbers)."""
    return tuple(int(p) if p.isdigit() else p for part in path.parts for p in re.split(r"(\d+)", part))


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """The run dirs (dirs holding ``eval.json``) named by ``paths``, or found below them, in job order.

    Raises:
        FileNotFoundError: a path does not exist or holds no ``eval.json`` at any depth.
    """
    found: list[Path] = []
    for path in paths:
        if (path / "eval.json").is_file():
            found.append(path)
            continue
        below = sorted((p.parent for p in path.rglob("eval.json")), key=_job_order) if path.is_dir() else []
        if not below:
            what = "no such directory" if not path.is_dir() else "no eval.json in it or below"
            raise FileNotFoundError(
                f"{path}: {what} (give a run dir of meta-kd-sr-train, or a multirun dir that holds run dirs)"
            )
        found += below
    return list(dict.fromkeys(found))


def unfinished(paths: Iterable[Path]) -> list[Path]:
    """Run dirs below ``paths`` that Hydra started (``.hydra/``) with no ``eval.json`` (failed, running)."""
    started = (
        p.parent.parent for path in paths if path.is_dir() for p in path.rglob(".hydra/overrides.yaml")
    )
    return sorted({p for p in started if not (p / "eval.json").is_file()}, key=_job_order)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def read_run(path: Path) -> Run:
    """A run dir's overrides (``.hydra/overrides.yaml``, none if absent), seed and metrics."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = (
        tuple(str(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        if overrides_file.is_file()
        else ()
    )
    seed = next((o.split("=", 1)[1] for o in overrides if _key(o) == "seed"), None)
    config_file = path / ".hydra" / "config.yaml"
    if seed is None and config_file.is_file():
        seed_value = (yaml.safe_load(config_file.read_text()) or {}).get("seed")
        seed = None if seed_value is None else str(seed_value)
    return Run(path, overrides, seed, metrics_of(json.loads((path / "eval.json").read_text())))


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """``{"<set>/<metric>": value}`` of an ``eval.json``: ``val`` first, then each benchmark folder."""
    sets = {"val": result.get("val") or {}}
    sets |= {k: v for k, v in (result.get("benchmarks") or {}).items() if isinstance(v, dict)}
    out = {}
    for name, scores in sets.items():
        for metric in METRICS:
            value = scores.get(metric)
            out[f"{name}/{metric}"] = math.nan if value is None else float(value)  # null: not finite
    return out


def group_runs(runs: Sequence[Run], ignore: Iterable[str] = IGNORED) -> list[Group]:
    """Runs grouped by their overrides minus the ``ignore`` keys, in the order of their first run.

    An override whose value names a path inside the run's own dir (e.g. a callback writing there) differs
    from run to run by construction, so it is left out of the setting as well.
    """
    ignore = set(ignore)
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        own = str(Path(run.path).resolve())
        setting = tuple(o for o in run.overrides if _key(o) not in ignore and own not in o.split("=", 1)[-1])
        groups.setdefault(tuple(sorted(setting)), Group(setting)).runs.append(run)  # order-blind
    return list(groups.values())


def labels(groups: Sequence[Group]) -> tuple[list[str], list[str]]:
    """A short label per group (the overrides that differ between groups) and the overrides all share."""
    common = [o for o in groups[0].setting if all(o in g.setting for g in groups)] if groups else []
    named = [" ".join(readable_override(o) for o in g.setting if o not in common) for g in groups]
    if len(groups) == 1 and not named[0]:
        named = [" ".join(map(readable_override, common)) or "(defaults)"]
    return [n or "(defaults)" for n in named], common


def columns_of(runs: Sequence[Run]) -> list[str]:
    """Every metric column of ``runs`` with at least one value, in the order first seen."""
    seen = dict.fromkeys(c for r in runs for c in r.metrics)
    return [c for c in seen if any(math.isfinite(r.metrics.get(c, math.nan)) for r in runs)]


def cell(mean: float | None, sd: float | None, column: str) -> str:
    """``mean ± sd`` (the mean alone without sd, blank without values), decimals by metric."""
    if mean is None:
        return ""
    d = DECIMALS.get(column.rsplit("/", 1)[-1], 4)
    return f"{mean:.{d}f}" if sd is None else f"{mean:.{d}f} ± {sd:.{d}f}"


def markdown(groups: Sequence[Group], columns: Sequence[str], missing: Sequence[Path] = ()) -> str:
    """The table in markdown, after a line with the overrides every run shares and the runs left out."""
    names, common = labels(groups)
    header = ["setting", "runs", "seeds", *(c.replace("/", " ") for c in columns)]
    lines = [f"Runs: {sum(len(g.runs) for g in groups)}; shared overrides: {' '.join(common) or 'none'}"]
    if missing:
        lines.append(f"Left out (no eval.json: failed or not finished): {', '.join(p.name for p in missing)}")
    lines.append("")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in zip(names, groups):
        cells = [name.replace("|", "\\|"), str(len(group.runs)), _seeds(group)]
        cells += [cell(*group.mean_sd(c), c) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seeds(group: Group) -> str:
    return ",".join(r.seed if r.seed is not None else "?" for r in group.runs)


def write_csv(path: Path, groups: Sequence[Group], columns: Sequence[str]) -> None:
    """One row per group: setting, runs, seeds, run dirs, then ``<column>`` (mean) and ``<column>_sd``."""
    names, _ = labels(groups)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["setting", "runs", "seeds", "run_dirs", *(x for c in columns for x in (c, f"{c}_sd"))]
        )
        for name, group in zip(names, groups):
            stats = [group.mean_sd(c) for c in columns]
            row = [name, len(group.runs), _seeds(group), ";".join(str(r.path) for r in group.runs)]
            writer.writerow(row + ["" if v is None else repr(v) for pair in stats for v in pair])


CHART_HINT = (
    "the chart (report.png) needs matplotlib: pip install matplotlib (in a checkout: pip install '.[report]')"
)


def chart_available() -> bool:
    """Whether matplotlib can be imported (the tables never need it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    """Pyplot of matplotlib on the Agg backend (files only, no display).

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message says what to do).
    """
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(CHART_HINT) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_chart(path: Path, groups: Sequence[Group], columns: Sequence[str], metric: str = "psnr_y") -> None:
    """Horizontal bars of ``metric`` per group (mean, sd error bars), one panel per image set."""
    plt = _pyplot()
    names, _ = labels(groups)
    shown = [c for c in columns if c.endswith(f"/{metric}")] or list(columns[:1])
    fig, axes = plt.subplots(
        1, len(shown), figsize=(4.5 * len(shown), 1 + 0.45 * len(groups)), squeeze=False, sharey=True
    )
    for ax, column in zip(axes[0], shown):
        stats = [g.mean_sd(column) for g in groups]
        means = [m if m is not None else math.nan for m, _ in stats]
        sds = [s or 0.0 for _, s in stats]
        ax.barh(range(len(groups)), means, xerr=sds, color="tab:blue", capsize=3)
        finite = [m for m in means if math.isfinite(m)]
        if finite:  # an axis from 0 would hide differences of tenths of a dB
            margin = max(finite) - min(finite) + max(sds) + 0.05
            ax.set_xlim(min(finite) - margin, max(finite) + margin)
        ax.set_title(column.replace("/", " "))
        ax.set_xlabel(f"{metric}, mean ± sd over seeds")
    axes[0][0].set_yticks(range(len(groups)), names)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(
    paths: Sequence[Path], out_dir: Path, ignore: Iterable[str] = IGNORED, chart: bool = True
) -> list[Path]:
    """Read the runs of ``paths``, write ``report.md``, ``report.csv`` (and ``report.png``) to ``out_dir``.

    Returns:
        The files written.
    """
    runs = [read_run(p) for p in find_runs(paths)]
    groups = group_runs(runs, ignore)
    columns = columns_of(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md", out_dir / "report.csv"]
    written[0].write_text(markdown(groups, columns, unfinished(paths)))
    write_csv(written[1], groups, columns)
    if chart:
        write_chart(out_dir / "report.png", groups, columns)
        written.append(out_dir / "report.png")
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meta-kd-sr-report",
        description="Table (markdown, CSV) and chart (PNG) of the eval.json files of a sweep or of run dirs; "
        "runs that differ only in their seed are one row, mean ± sd.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="a multirun dir, or run dirs (holding eval.json)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: the one dir given, else .)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="also group across this override key (repeatable; seed and output paths always are)",
    )
    parser.add_argument(
        "--no-chart", action="store_true", help="skip the PNG chart (written when matplotlib is)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``meta-kd-sr-report``); prints the table and the paths it wrote."""
    args = _parser().parse_args(argv)
    out = args.out if args.out is not None else (args.paths[0] if len(args.paths) == 1 else Path("."))
    chart = not args.no_chart and chart_available()
    with one_line_errors("meta-kd-sr-report"):  # a missing folder, an unwritable --out: one line, status 2
        written = report(args.paths, out, (*IGNORED, *args.ignore), chart=chart)
    print(written[0].read_text())
    for path in written:
        print(path)
    if not args.no_chart and not chart:
        print(f"no chart: {CHART_HINT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
