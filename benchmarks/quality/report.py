"""Summaries of the quality benchmark: per-method statistics, the markdown report and the front plot."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .stats import beyond_noise, mean_sd, paired_difference

METRICS = ("psnr_y", "ssim_y")
GROUP_TITLES = {
    "equal_iterations": "Equal iterations",
    "equal_time": "Equal training time",
    "explore": "Explore",
    "converged": "Converged",
}
HEALTH_KEYS = ("grad_norm_start", "grad_norm_end", "drift_end", "noise_share_second_half", "snr_second_half")


def _by_seed(records: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[metric]) for r in records}


def _paired(records: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]) -> dict | None:
    same = {(r["method"], r["group"]) for r in records} == {(r["method"], r["group"]) for r in reference}
    common = {int(r["seed"]) for r in records} & {int(r["seed"]) for r in reference}
    if not reference or same or len(common) < 2:  # < 2 paired seeds: only in a partial (--stored-only) report
        return None
    return {m: paired_difference(_by_seed(records, m), _by_seed(reference, m)) for m in METRICS}


def _mean_or_none(values: Sequence[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present and len(present) == len(values) else None


def _health(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None] | None:
    """Mean over seeds of each run's meta signal summary (``quality.health``); None without meta steps."""
    runs = [r.get("meta_health") for r in records]
    if not runs or any(h is None for h in runs):
        return None
    return {key: _mean_or_none([h.get(key) for h in runs]) for key in HEALTH_KEYS}


def summarize_method(
    records: Sequence[Mapping[str, Any]],
    scratch: Sequence[Mapping[str, Any]],
    mkd: Sequence[Mapping[str, Any]],
    frozen: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One table row: mean +- sd over seeds, timing, paired differences to scratch, MKD (and mkd_frozen)."""
    iterations = sorted({int(r["iterations"]) for r in records})
    return {
        "method": records[0]["method"],
        "group": records[0]["group"],
        "iterations": iterations[0] if len(iterations) == 1 else iterations,
        "seeds": sorted(int(r["seed"]) for r in records),
        **{m: mean_sd([float(r[m]) for r in records]) for m in METRICS},
        "s_per_it": statistics.fmean(float(r["s_per_it"]) for r in records),
        "train_s": statistics.fmean(float(r["train_s"]) for r in records),
        "cpu_s_per_it": _mean_or_none([r.get("cpu_s_per_it") for r in records]),
        "train_cpu_s": _mean_or_none([r.get("train_cpu_s") for r in records]),
        "process_s": statistics.fmean(float(r["process_s"]) for r in records),
        "vs_scratch": _paired(records, scratch),
        "vs_mkd": _paired(records, mkd),
        "vs_frozen": _paired(records, frozen),
        "meta_health": _health(records),
    }


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows of both comparisons.

    Equal iterations: every method against scratch (``none``) and MKD at the same iteration count.
    Equal training time: the methods given MKD's training CPU time, with the equal-iteration MKD runs as the
    MKD row, against scratch given the same time and against MKD. Explore: MKD variants at equal
    iterations, with MKD and mkd_frozen as the first rows, against mkd_frozen and MKD (a variant with
    fewer than two finished seeds is left out).
    """

    def select(group: str, method: str | None = None) -> list[Mapping[str, Any]]:
        return [r for r in records if r["group"] == group and (method is None or r["method"] == method)]

    def methods(group: str) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in select(group)))

    mkd = select("equal_iterations", "mkd")
    out: dict[str, list[dict[str, Any]]] = {"equal_iterations": [], "equal_time": [], "explore": []}
    scratch = select("equal_iterations", "none")
    for method in methods("equal_iterations"):
        out["equal_iterations"].append(summarize_method(select("equal_iterations", method), scratch, mkd))
    if select("equal_time"):
        scratch_t = select("equal_time", "none") or scratch
        rows = [summarize_method(mkd, scratch_t, mkd) | {"group": "equal_time", "reference": True}]
        for method in methods("equal_time"):
            rows.append(summarize_method(select("equal_time", method), scratch_t, mkd))
        out["equal_time"] = rows
    frozen = select("equal_iterations", "mkd_frozen")
    if select("explore"):
        as_reference = {"group": "explore", "reference": True}
        rows = [summarize_method(mkd, scratch, mkd, frozen) | as_reference]
        if frozen:
            rows.append(summarize_method(frozen, scratch, mkd, frozen) | as_reference)
        for method in methods("explore"):
            runs = select("explore", method)
            if len(runs) >= 2:  # fewer seeds (--no-explore mid-way): no paired statistics yet
                rows.append(summarize_method(runs, scratch, mkd, frozen))
        out["explore"] = rows
    return out


def _pm(stat: Mapping[str, Any], digits: int) -> str:
    sd = "-" if stat["sd"] is None else f"{stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {sd}"


def _delta(diff: Mapping[str, Any] | None, digits: int = 3) -> tuple[str, str]:
    if diff is None:
        return "(reference)", "-"
    low, high = diff["ci"]
    star = " *" if beyond_noise(diff) else ""
    return f"{diff['mean']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{star}", f"{diff['t']:.2f}"


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The markdown table of one comparison."""
    lines = [
        "| method | iterations | PSNR_y (dB) | SSIM_y | Δ PSNR_y vs scratch [95 % CI] | t | CPU s/it | CPU s "
        "| wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        delta, t = _delta(r["vs_scratch"]["psnr_y"] if r["vs_scratch"] else None)
        lines.append(
            f"| {r['method']} | {r['iterations']} | {_pm(r['psnr_y'], 3)} | {_pm(r['ssim_y'], 4)} | {delta} "
            f"| {t} | {_num(r['cpu_s_per_it'], 4)} | {_num(r['train_cpu_s'], 0)} | {r['train_s']:.0f} |"
        )
    return lines


def partial_lines(result: Mapping[str, Any]) -> list[str]:
    """The header line of a ``--stored-only`` report that left unfinished runs out (none otherwise)."""
    left = result.get("left_out") or []
    if not left:
        return []
    return [
        f"- **partial**: {len(left)} runs left out, not finished yet or their method's only finished seed "
        "(rerun without --stored-only): " + ", ".join(left)
    ]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def explore_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The exploration: each MKD variant against frozen KRNets and against MKD (paired, PSNR_y)."""
    lines = [
        "| method | PSNR_y (dB) | SSIM_y | Δ vs mkd_frozen [95 % CI] | t | Δ vs mkd [95 % CI] | t | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        frozen, t_f = _delta(r["vs_frozen"]["psnr_y"] if r["vs_frozen"] else None)
        mkd, t_m = _delta(r["vs_mkd"]["psnr_y"] if r["vs_mkd"] else None)
        lines.append(
            f"| {r['method']} | {_pm(r['psnr_y'], 3)} | {_pm(r['ssim_y'], 4)} | {frozen} | {t_f} | {mkd} "
            f"| {t_m} | {_num(r['train_cpu_s'], 0)} |"
        )
    return lines


def health_table(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The meta signal of every meta-learned method (mean over seeds)."""
    lines = [
        "| method | comparison | meta-grad norm, first → last tenth | KRNet drift at the end "
        "| noise-dominated share, 2nd half | median SNR, 2nd half |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    seen = set()
    for group, rows in summary.items():
        for r in rows:
            h = r.get("meta_health")
            if h is None or (r["method"], r["iterations"]) in seen:
                continue
            seen.add((r["method"], r["iterations"]))
            norms = f"{_sci(h['grad_norm_start'])} → {_sci(h['grad_norm_end'])}"
            lines.append(
                f"| {r['method']} | {GROUP_TITLES.get(group, 'Explore').lower()} | {norms} "
                f"| {_num(h['drift_end'], 4)} | {_num(h['noise_share_second_half'], 3)} "
                f"| {_num(h['snr_second_half'], 3)} |"
            )
    return lines


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def mkd_table(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Whether MKD beat each method beyond the seed spread, at equal iterations and at equal time."""
    lines = [
        "| method | comparison | MKD − method, PSNR_y [95 % CI] | t | MKD − method, SSIM_y [95 % CI] |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for group, rows in summary.items():
        for r in rows:
            if not r["vs_mkd"] or group == "explore":
                continue
            flipped = {m: _negate(r["vs_mkd"][m]) for m in METRICS}
            psnr, t = _delta(flipped["psnr_y"])
            ssim, _ = _delta(flipped["ssim_y"], 4)
            lines.append(f"| {r['method']} | {GROUP_TITLES[group].lower()} | {psnr} | {t} | {ssim} |")
    return lines


def _negate(diff: Mapping[str, Any]) -> dict[str, Any]:
    low, high = diff["ci"]
    return {**diff, "mean": -diff["mean"], "t": -diff["t"], "ci": [-high, -low]}


def before_rows(old: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The equal-iteration rows of an earlier short-regime result: method, PSNR_y and its Δ vs scratch."""
    return [
        {
            "method": r["method"],
            "psnr_y": r["psnr_y"],
            "vs_scratch": r["vs_scratch"]["psnr_y"] if r["vs_scratch"] else None,
        }
        for r in old["summary"]["equal_iterations"]
    ]


def before_after_table(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each method's equal-iteration PSNR_y and Δ vs scratch before (``before_rows``) and after the sweep.

    Methods in only one of the two are left out; the order is ``after``'s.
    """
    old = {r["method"]: r for r in before}
    lines = [
        "| method | PSNR_y before (dB) | PSNR_y after (dB) | Δ PSNR_y vs scratch before "
        "| Δ PSNR_y vs scratch after |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in after:
        if r["method"] in old:
            o = old[r["method"]]
            then = _delta(o["vs_scratch"])[0]
            now = _delta(r["vs_scratch"]["psnr_y"] if r["vs_scratch"] else None)[0]
            psnr = f"{_pm(o['psnr_y'], 3)} | {_pm(r['psnr_y'], 3)}"
            lines.append(f"| {r['method']} | {psnr} | {then} | {now} |")
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    """The whole report: header (command, date, machine, commit), setup, both tables, MKD's comparisons."""
    m, s, t = result["machine"], result["sizes"], result["teacher"]
    margin = result["teacher_margin"]
    verdict = "ok" if margin["ok"] else f"FAILS the required {margin['required']} dB: little to distil"
    lines = [
        f"# Quality benchmark ({result['mode']})",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; git commit: {result['git_commit']}",
        f"- machine: {m['platform']}, {m['cpu']}, {m['cores']} cores; torch threads per run: "
        f"{m['torch_threads']}, parallel runs: {m['jobs']}",
        f"- x{result['scale']}; student EDSR {s['student'][0]} ch × {s['student'][1]} blocks "
        f"({result['student_params']:,} params); teacher EDSR {s['teacher'][0]} × {s['teacher'][1]} "
        f"({t['params']:,} params; {t['iterations']} iterations, LR patch {s['teacher_lq_patch']}, batch "
        f"{s['teacher_batch']}, lr {s['teacher_lr']}); students: LR patch {s['lq_patch']}, batch "
        f"{s['batch']}, Adam lr {s['lr']} with cosine decay; seeds {list(s['seeds'])} (paired)",
        f"- held-out photos (never trained on): {', '.join(result['heldout'])}; Y, crop {result['scale']}, "
        "uint8, per image",
        f"- teacher {t['psnr_y']:.3f} dB / {t['ssim_y']:.4f}; bicubic {result['bicubic']['psnr_y']:.3f} dB; "
        f"teacher − converged scratch ({margin['reference']}): {margin['psnr_y']:+.3f} dB ({verdict})",
        "- Δ: paired difference over seeds, 95 % interval from Student's t (n − 1 dof); * the interval "
        "excludes 0. CPU s/it, CPU s and wall s: training iterations only, timed inside each run (one torch "
        "thread per run: CPU time is the wall time of an idle core).",
    ]
    if "weights" in result:  # results written before the sweep existed have none
        lines.insert(-3, f"- loss weights: {result['weights']}")
    for group, rows in result["summary"].items():
        if rows and group != "explore":
            title = GROUP_TITLES[group]
            if group == "equal_time":
                title += (
                    f" (MKD's {result['budget']['mkd_train_s']:.0f} CPU s; Δ against scratch given that time)"
                )
            else:
                title += f" ({s['iterations']})"
            lines += ["", f"## {title}", "", *table(rows)]
    before = result.get("before_sweep")
    if before and result["summary"].get("equal_iterations"):
        lines += [
            "",
            f"## Before and after the loss-weight sweep ({s['iterations']} iterations)",
            "",
            f"Before: the presets' loss weights, from `{before['file']}` (commit {before['git_commit'][:7]}, "
            f"{before['date'][:10]}). After: this report's weights. Same sizes, seeds and held-out photos.",
            "",
            *before_after_table(before["rows"], result["summary"]["equal_iterations"]),
        ]
    lines += ["", "## MKD against each method (paired)", "", *mkd_table(result["summary"])]
    if result["summary"].get("explore"):
        lines += [
            "",
            f"## Explore: what makes the meta-learning pay ({s['iterations']} iterations)",
            "",
            *explore_table(result["summary"]["explore"]),
        ]
    lines += ["", "## Meta signal (mean over seeds)", "", *health_table(result["summary"])]
    return "\n".join(lines) + "\n"


def _front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no faster point beats: the best quality reached within each time."""
    front, best = [], -float("inf")
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_front(result: Mapping[str, Any], path: Path) -> Path:
    """Quality versus training time: mean PSNR_y +- sd per method and group, and the front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(11, 6))
    names = list(dict.fromkeys(r["method"] for rows in result["summary"].values() for r in rows))
    colors = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    points = []
    kinds = (("equal_iterations", "o", ""), ("equal_time", "s", ", equal time"), ("explore", "^", ""))
    for group, marker, tag in kinds:
        for r in result["summary"].get(group, []):
            if r.get("reference"):
                continue  # the equal-iteration MKD (and mkd_frozen) rows repeated as references
            x = r["train_cpu_s"] if r["train_cpu_s"] is not None else r["train_s"]
            y, sd = r["psnr_y"]["mean"], r["psnr_y"]["sd"] or 0.0
            label = f"{r['method']} ({r['iterations']} it{tag})"
            ax.errorbar(x, y, yerr=sd, fmt=marker, capsize=3, color=colors[r["method"]], label=label)
            points.append((x, y))
    ax.step(*zip(*_front(points)), where="post", color="gray", linestyle="--", label="best within the time")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("training time per run (CPU s of one thread, log scale)")
    ax.set_ylabel("PSNR_y on held-out photos (dB), mean ± sd over seeds")
    ax.set_title(
        f"Quality vs training time (circles: {result['sizes']['iterations']} iterations; squares: MKD's time)"
        f"\nteacher {result['teacher']['psnr_y']:.2f} dB, bicubic {result['bicubic']['psnr_y']:.2f} dB"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
