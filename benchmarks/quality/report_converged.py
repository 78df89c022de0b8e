"""The converged regime's report: the budget rule and its curve; each method vs scratch and mkd_frozen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import _delta, _num, _pm, health_table, partial_lines, summarize_method
from .report_levers import signal_table
from .signal import pooled


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: paired against scratch, MKD and mkd_frozen at the same budget; its meta signal."""

    def select(method: str) -> list[Mapping[str, Any]]:
        return [r for r in records if r["method"] == method]

    methods = list(dict.fromkeys(r["method"] for r in records))
    scratch, mkd, frozen = select("none"), select("mkd"), select("mkd_frozen")
    return [
        summarize_method(select(m), scratch, mkd, frozen) | {"signal": pooled(select(m))}
        for m in methods
        if len(select(m)) >= 1
    ]


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every method: quality, paired Δ against scratch and mkd_frozen, and training cost."""
    lines = [
        "| method | iterations | seeds | PSNR_y (dB) | SSIM_y | Δ vs scratch [95 % CI] "
        "| Δ vs mkd_frozen [95 % CI] | CPU s/it | CPU s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        scratch, _ = _delta(r["vs_scratch"]["psnr_y"] if r["vs_scratch"] else None)
        frozen, _ = _delta(r["vs_frozen"]["psnr_y"] if r["vs_frozen"] else None)
        if r["method"] != "mkd_frozen" and r["vs_frozen"] is None:
            frozen = "-"  # no mkd_frozen runs to pair with
        if r["method"] != "none" and r["vs_scratch"] is None:
            scratch = "-"  # fewer than 2 seeds paired with scratch (a partial report)
        lines.append(
            f"| {r['method']} | {r['iterations']} | {len(r['seeds'])} | {_pm(r['psnr_y'], 3)} | "
            f"{_pm(r['ssim_y'], 4)} | {scratch} | {frozen} | {_num(r['cpu_s_per_it'], 4)} "
            f"| {_num(r['train_cpu_s'], 0)} | {r['train_s']:.0f} |"
        )
    return lines


def budget_lines(budget: Mapping[str, Any]) -> list[str]:
    """The rule; for each budget tried, its held-out curve (PSNR_y at each point), last-quarter change."""
    state = "met" if budget["reached"] else "NOT met by any budget tried: the largest is used"
    lines = [f"- rule: {budget['rule']}; {state}; budget **{budget['iterations']}** iterations", ""]
    lines += ["| budget N | last quarter Δ (dB) | held-out PSNR_y at step: dB |", "| ---: | ---: | --- |"]
    for rung in budget["ladder"]:
        points = ", ".join(f"{p['step']}: {p['psnr_y']:.3f}" for p in rung["curve"])
        lines.append(f"| {rung['iterations']} | {rung['last_quarter_db']:+.4f} | {points} |")
    return [*lines, "", doubling_line(budget)]


def doubling_line(budget: Mapping[str, Any]) -> str:
    """What scratch gains from a schedule twice the budget (one seed), and what that means for the regime."""
    check, n = budget.get("doubled"), budget["iterations"]
    if check is None:
        return f"- doubling check (scratch for {2 * n} iterations): not run (left out of this report)"
    threshold = budget["plateau_db"]
    head = (
        f"- doubling check: scratch (the rule's seed) trained for {check['iterations']} iterations scores "
        f"{check['psnr_y']:.3f} dB, {check['gain_db']:+.3f} dB against the budget's run (one seed)"
    )
    if abs(check["gain_db"]) < threshold:
        return head + f": within the rule's {threshold} dB, so the budget is also a plateau of the network."
    return (
        head + f": more than the rule's {threshold} dB, so a longer schedule still gains that much; the rule "
        f"finds the flat end of a {n}-iteration schedule, and the methods below are compared at that budget."
    )


def doubled_lines(result: Mapping[str, Any]) -> list[str]:
    """The methods trained for twice the budget (fewer seeds), paired as at the budget; none: no section."""
    rows = result.get("doubled_summary") or []
    if not rows:
        return []
    seeds = max(len(r["seeds"]) for r in rows)
    return [
        "## At twice the budget",
        "",
        f"The same paired statistics for {', '.join(r['method'] for r in rows)} trained for "
        f"{rows[0]['iterations']} iterations (a cosine schedule over that length), {seeds} seeds: whether "
        "the differences at the budget hold on a schedule twice as long.",
        "",
        *table(rows),
        "",
    ]


def markdown(result: Mapping[str, Any]) -> str:
    """The whole report of the converged regime."""
    m, s, t, margin = result["machine"], result["sizes"], result["teacher"], result["teacher_margin"]
    verdict = "ok" if margin["ok"] else f"below the required {margin['required']} dB"
    lines = [
        f"# Quality benchmark, converged regime ({result['mode']})",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; git commit: {result['git_commit']}",
        *partial_lines(result),
        f"- machine: {m['platform']}, {m['cpu']}, {m['cores']} cores; torch threads per run: "
        f"{m['torch_threads']}, parallel runs: {m['jobs']}",
        f"- x{result['scale']}; student EDSR {s['student'][0]} × {s['student'][1]}; teacher EDSR "
        f"{s['teacher'][0]} × {s['teacher'][1]} ({t['params']:,} params; {t['iterations']} iterations); "
        f"students: LR patch {s['lq_patch']}, batch {s['batch']}, Adam lr {s['lr']} with cosine decay over "
        "the budget",
        f"- loss weights: {result['weights']}",
        f"- held-out photos (never trained on): {', '.join(result['heldout'])}; Y, crop {result['scale']}, "
        "uint8",
        f"- teacher {t['psnr_y']:.3f} dB; bicubic {result['bicubic']['psnr_y']:.3f} dB; teacher − converged "
        f"scratch ({margin['reference']}): {margin['psnr_y']:+.3f} dB ({verdict})",
        "- Δ: paired difference over seeds, 95 % t interval; * the interval excludes 0. CPU time: training "
        "iterations only, one torch thread per run.",
        "",
        "## Student budget",
        "",
        *budget_lines(result["budget"]),
        "",
        "## Methods at the budget",
        "",
        *table(result["summary"]),
        "",
        *doubled_lines(result),
        "## Meta signal (mean over seeds)",
        "",
        *health_table({"converged": result["summary"]}),
        "",
        "## Whole-run meta signal",
        "",
        "z = |Σ g| / (sd(g) √N) per KRNet weight over a run's N meta-gradients (pure noise: a half-normal); "
        "a weight with a steady direction has a z that grows like √N, so its share above 3 grows with the "
        "budget. Runs stored before the signal file existed have none (`runs` counts those that do).",
        "",
        *signal_table(result["summary"]),
    ]
    return "\n".join(lines) + "\n"


def plot_curve(budget: Mapping[str, Any], path: Path) -> Path:
    """Held-out PSNR_y of scratch along each budget's run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for rung in budget["ladder"]:
        steps = [p["step"] for p in rung["curve"]]
        ax.plot(steps, [p["psnr_y"] for p in rung["curve"]], marker="o", label=f"N = {rung['iterations']}")
    check = budget.get("doubled")
    if check is not None:
        steps = [p["step"] for p in check["curve"]]
        label = f"2N = {check['iterations']} (check)"
        ax.plot(steps, [p["psnr_y"] for p in check["curve"]], marker=".", linestyle="--", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("iteration (cosine schedule over N)")
    ax.set_ylabel("scratch PSNR_y on held-out photos (dB)")
    ax.set_title(f"Student budget: {budget['iterations']} iterations")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
