"""The lever study's report: each lever against its frozen-KRNet reference, and the whole-run meta signal.

Every meta-learned run is paired with the frozen-KRNet run on the same data (``plan.FROZEN_REFERENCE``,
default ``mkd_frozen``), so a lever's row says what its meta-learning adds. The signal section compares the
z distribution of every meta-learned method (``quality.signal``) with pure noise (a half-normal) and with the
control run ``mkd_shuffle``, whose meta targets carry no information about its meta inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .plan import FROZEN_REFERENCE
from .report import _delta, _num, _pm, partial_lines, summarize_method
from .signal import pooled

CONTROL = "mkd_shuffle"


def reference_of(method: str) -> str:
    """The frozen-KRNet method that ``method`` is paired with."""
    return FROZEN_REFERENCE.get(method, "mkd_frozen")


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: paired against its frozen reference, scratch and MKD; its pooled meta signal."""

    def select(method: str) -> list[Mapping[str, Any]]:
        return [r for r in records if r["method"] == method]

    rows = []
    for method in dict.fromkeys(r["method"] for r in records):
        reference = None if method == "none" else reference_of(method)
        reference = None if reference == method else reference
        frozen = select(reference) if reference else []
        row = summarize_method(select(method), select("none"), select("mkd"), frozen)
        rows.append(row | {"reference": reference or "-", "signal": pooled(select(method))})
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Quality and cost: Δ against the frozen reference, scratch and MKD (PSNR_y, paired seeds)."""
    lines = [
        "| method | reference | seeds | PSNR_y (dB) | Δ vs reference [95 % CI] | Δ vs scratch [95 % CI] "
        "| Δ vs mkd [95 % CI] | CPU s/it |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ref = _delta(r["vs_frozen"]["psnr_y"])[0] if r["vs_frozen"] else "-"
        scratch = _delta(r["vs_scratch"]["psnr_y"])[0] if r["vs_scratch"] else "-"
        scratch = "(scratch)" if r["method"] == "none" else scratch
        mkd = _delta(r["vs_mkd"]["psnr_y"])[0] if r["vs_mkd"] else "-"
        lines.append(
            f"| {r['method']} | {r['reference']} | {len(r['seeds'])} | {_pm(r['psnr_y'], 3)} | {ref} | "
            f"{scratch} | {mkd} | {_num(r['cpu_s_per_it'], 4)} |"
        )
    return lines


def signal_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Whole-run z per KRNet weight (mean over seeds) against pure noise and the shuffled-target control."""
    lines = [
        "| method | runs | meta-gradients per run | KRNet weights | z > 2 | z > 3 | z > 4 | median z | "
        "99 % quantile |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    noise = None
    for r in rows:
        s = r["signal"]
        if s is None:
            continue
        noise = s["noise_share_above"]
        shares = " | ".join(f"{s['share_above'][k]:.4f}" for k in ("2", "3", "4"))
        lines.append(
            f"| {r['method']} | {s['runs']} | {s['steps']:.0f} | {s['weights']} | {shares} "
            f"| {s['median']:.3f} | {s['q99']:.2f} |"
        )
    if noise is not None:
        shares = " | ".join(f"{noise[k]:.4f}" for k in ("2", "3", "4"))
        lines.append(f"| pure noise (half-normal) | - | - | - | {shares} | 0.674 | 2.58 |")
    return lines


def signal_verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    """MKD's share of weights with z > 3 against the control's and pure noise's, in words."""
    by = {r["method"]: r["signal"] for r in rows if r.get("signal")}
    if "mkd" not in by:
        return "No meta-learned run has finished yet."
    mkd = by["mkd"]["share_above"]["3"]
    noise = by["mkd"]["noise_share_above"]["3"]
    text = f"Share of KRNet weights with z > 3: mkd {mkd:.4f}, pure noise {noise:.4f}"
    if CONTROL in by:
        text += f", the shuffled-target control {by[CONTROL]['share_above']['3']:.4f}"
    return text + "."


def markdown(result: Mapping[str, Any]) -> str:
    """The whole report of the lever study."""
    m, s, t = result["machine"], result["sizes"], result["teacher"]
    lines = [
        f"# Levers of the meta step ({result['mode']})",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; git commit: {result['git_commit']}",
        *partial_lines(result),
        f"- machine: {m['platform']}, {m['cpu']}, {m['cores']} cores; torch threads per run: "
        f"{m['torch_threads']}, parallel runs: {m['jobs']}",
        f"- x{result['scale']}; student EDSR {s['student'][0]} × {s['student'][1]}, {s['iterations']} "
        f"iterations, LR patch {s['lq_patch']}, batch {s['batch']}, Adam lr {s['lr']} with cosine decay; "
        f"teacher {t['name']} ({t['psnr_y']:.3f} dB)",
        f"- loss weights: {result['weights']}",
        f"- held-out photos (never trained on): {', '.join(result['heldout'])}; Y, crop {result['scale']}, "
        "uint8",
        "- Δ: paired difference over seeds, 95 % t interval; * the interval excludes 0. A lever's reference "
        "is the frozen-KRNet run on the same data. CPU s/it: training iterations only, one torch thread.",
        "",
        "## Quality",
        "",
        *table(result["summary"]),
        "",
        "## Whole-run meta signal",
        "",
        "z = |Σ g| / (sd(g) √N) per KRNet weight over a run's N meta-gradients; pure noise gives a "
        "half-normal. The control `mkd_shuffle` pairs each meta input with another meta image's target.",
        "",
        *signal_table(result["summary"]),
        "",
        signal_verdict(result["summary"]),
    ]
    return "\n".join(lines) + "\n"


def plot_signal(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Histogram (density) of z per meta-learned method, pooled over seeds, and the half-normal density."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        s = r.get("signal")
        if s is None:
            continue
        edges, counts = s["histogram"]["edges"], s["histogram"]["counts"]
        width = edges[1] - edges[0]
        total = sum(counts) or 1
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        ax.step(centers, [c / total / width for c in counts], where="mid", label=r["method"])
    xs = [0.05 * i for i in range(161)]
    ax.plot(xs, [math.sqrt(2 / math.pi) * math.exp(-x * x / 2) for x in xs], "k--", label="pure noise")
    ax.set_yscale("log")
    ax.set_xlabel("whole-run z of a KRNet weight")
    ax.set_ylabel("density")
    ax.set_title("Meta-gradient consistency over a run")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
