"""The lever study (``--regime levers``): the whole-run signal summary on known values, the pairing of each
lever with its frozen reference, and ``--quick`` end to end on the stored runs of the shared quick run."""

from __future__ import annotations

import json
import math
import shutil

import bench_quality
import pytest
import torch
from quality.plan import LEVERS, QUICK_LEVERS
from quality.report_levers import signal_table, summarize, table
from quality.signal import pooled, summarize_signal, summarize_z
from quality.stats import paired_difference

from meta_kd_sr.meta.signal import MetaSignal


def test_signal_summary_counts_known_z_values():
    s = summarize_z([0.5, 2.5, 3.5, 5.0, math.inf], steps=7, control="none")
    assert s["share_above"] == {"2": 0.8, "3": 0.6, "4": 0.4}
    assert s["noise_share_above"]["3"] == pytest.approx(0.0026998, abs=1e-6)
    assert s["median"] == 3.5 and s["max"] == math.inf and (s["steps"], s["weights"]) == (7, 5)
    counts = s["histogram"]["counts"]
    assert sum(counts) == 5 and counts[2] == 1 and counts[10] == 1 and counts[20] == 1 and counts[-1] == 1
    with pytest.raises(ValueError, match="z is empty"):
        summarize_z([], steps=2, control="none")


def test_pure_noise_z_matches_the_half_normal():
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).abs()
    s = summarize_z(z, steps=1000, control="none")
    for k, noise in s["noise_share_above"].items():
        assert s["share_above"][k] == pytest.approx(noise, abs=4 * math.sqrt(noise / 400_000) + 1e-5)
    assert s["median"] == pytest.approx(0.6745, abs=0.005) and s["q99"] == pytest.approx(2.576, abs=0.02)


def test_signal_file_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(1)
    signal, weight = MetaSignal(), torch.zeros(3, 2)
    for _ in range(50):  # entry 0 has a mean of 1 and a spread of 0.1: z = sqrt(50) * ~10 > 3
        g = 0.1 * torch.randn(6, generator=gen, dtype=torch.float64)
        g[0] += 1.0
        signal.update([g.reshape(3, 2)])
    path = signal.export(tmp_path / "meta_signal.pt", [("w", weight)], "shuffle")
    s = summarize_signal(path)
    assert s == summarize_z(signal.z().float(), 50, "shuffle")  # the file keeps z in float32
    assert s["share_above"]["3"] >= 1 / 6 and s["control"] == "shuffle"
    assert summarize_signal(tmp_path / "absent.pt") is None


def _run(method: str, seed: int, psnr: float, signal: dict | None = None) -> dict:
    return {
        "method": method,
        "group": "levers" if method in LEVERS else "equal_iterations",
        "seed": seed,
        "iterations": 100,
        "psnr_y": psnr,
        "ssim_y": psnr / 100,
        "s_per_it": 0.1,
        "train_s": 10.0,
        "cpu_s_per_it": 0.1,
        "train_cpu_s": 10.0,
        "process_s": 1.0,
        "meta_health": None,
        "meta_signal": signal,
    }


def test_each_lever_is_paired_with_the_frozen_run_on_its_data():
    scores = {
        "none": (28.0, 28.1, 28.2),
        "mkd_frozen": (28.3, 28.3, 28.5),
        "mkd": (28.35, 28.3, 28.6),
        "mkd_frozen_natural": (28.1, 28.2, 28.2),
        "mkd_natural": (28.2, 28.2, 28.4),
    }
    z = summarize_z([0.5, 3.5], steps=10, control="none")
    records = [
        _run(m, seed, p, z if m in ("mkd", "mkd_natural") else None)
        for m, ps in scores.items()
        for seed, p in enumerate(ps)
    ]
    rows = {r["method"]: r for r in summarize(records)}
    assert rows["mkd_natural"]["reference"] == "mkd_frozen_natural"
    want = paired_difference(
        dict(enumerate(scores["mkd_natural"])), dict(enumerate(scores["mkd_frozen_natural"]))
    )
    assert rows["mkd_natural"]["vs_frozen"]["psnr_y"]["ci"] == pytest.approx(want["ci"])
    assert rows["mkd"]["vs_frozen"]["psnr_y"]["mean"] == pytest.approx(0.05)
    assert rows["none"]["reference"] == "-" and rows["none"]["vs_frozen"] is None
    assert rows["mkd_frozen"]["reference"] == "-" and rows["mkd_frozen"]["vs_frozen"] is None
    lines = {line.split(" | ")[0]: line for line in table(list(rows.values()))}
    low, high = want["ci"]
    assert f"| {want['mean']:+.3f} [{low:+.3f}, {high:+.3f}] |" in lines["| mkd_natural"]  # d = (.1, 0, .2)
    assert pooled([records[0]]) is None and pooled(records)["runs"] == 6
    signal = signal_table(list(rows.values()))
    assert [line.split(" | ")[0] for line in signal[2:]] == [
        "| mkd",
        "| mkd_natural",
        "| pure noise (half-normal)",
    ]
    assert "| 0.5000 | 0.5000 | 0.0000 |" in signal[2]  # z > 2, > 3, > 4 of (0.5, 3.5)


def test_quick_lever_study_trains_only_the_levers(quick_run, train_launches, tmp_path):
    """The short regime's stored mkd and scratch runs are reused; the levers train; z is in each record."""
    shutil.copytree(quick_run / "runs", tmp_path / "runs")  # the store, without any sweep's weights.json
    result = bench_quality.main(["--quick", "--regime", "levers", "--out", str(tmp_path)])
    trained = sorted(
        next(a for a in argv if a.startswith("hydra.run.dir=")).rsplit("/", 1)[1] for argv in train_launches
    )
    assert trained == sorted(f"{m}-s{s}-n6" for m in QUICK_LEVERS.levers for s in QUICK_LEVERS.seeds)
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert runs[("none", 0)]["meta_signal"] is None
    for method, control in (("mkd", "none"), ("mkd_shuffle", "shuffle"), ("mkd_k2", "none")):
        signal = runs[(method, 0)]["meta_signal"]
        assert signal["control"] == control and signal["steps"] == 6 and signal["weights"] > 0
    stored = json.loads((tmp_path / "runs" / "mkd_k2-s1-n6" / "record.json").read_text())
    assert "meta.inner_steps=2" in stored["spec"]["overrides"] and stored["meta_signal"]["steps"] == 6
    text = (tmp_path / "levers.md").read_text()
    assert "## Whole-run meta signal" in text and "| mkd_shuffle |" in text and "pure noise" in text
    assert (tmp_path / "levers_signal.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "levers.json").read_text())["regime"] == "levers"
    # --stored-only trains nothing: an unstored run is left out, and with it its method's lone other seed
    shutil.rmtree(tmp_path / "runs" / "mkd_k2-s1-n6")
    launched = len(train_launches)
    partial = bench_quality.main(["--quick", "--regime", "levers", "--stored-only", "--out", str(tmp_path)])
    assert len(train_launches) == launched and partial["left_out"] == ["mkd_k2-s1-n6", "mkd_k2-s0-n6"]
    assert {r["method"] for r in partial["summary"]} == {"mkd", "none", "mkd_shuffle"}
    assert "**partial**: 2 runs left out, not finished yet" in (tmp_path / "levers.md").read_text()


def test_only_and_stored_only_select_runs_and_name_those_left_out(tmp_path):
    from quality import pipeline, store

    ctx = pipeline.Context(tmp_path / "cache", QUICK_LEVERS, 1, 1, tmp_path / "log", store=tmp_path / "store")
    every = pipeline.lever_specs(ctx)
    assert len(every) == len(QUICK_LEVERS.seeds) * (len(QUICK_LEVERS.methods) + len(QUICK_LEVERS.levers))
    assert pipeline.selected(ctx, "levers", every) == every and ctx.left_out == []
    stored = next(s for s in every if s.method == "mkd")
    network = tmp_path / "student.pt"
    network.write_bytes(b"net")
    store.save(ctx.store, stored, {"psnr_y": 1.0}, network, "abc")
    ctx.only = ("mkd_k2", "none-s1-n6")  # a method and a run
    picked = pipeline.selected(ctx, "levers", every)
    assert {x.name for x in picked} == {stored.name, "none-s1-n6", "mkd_k2-s0-n6", "mkd_k2-s1-n6"}
    assert set(ctx.left_out) == {x.name for x in every} - {x.name for x in picked}
    ctx.only, ctx.stored_only, ctx.left_out = (), True, []
    assert pipeline.selected(ctx, "levers", every) == [stored] and len(ctx.left_out) == len(every) - 1
    pipeline.check_only(QUICK_LEVERS, ("mkd_k2", "none-s1-n6"))
    with pytest.raises(ValueError, match=r"--only: unknown methods or runs \['mkd_typo'\]"):
        pipeline.check_only(QUICK_LEVERS, ("mkd_typo", "mkd-s0-n6"))


def test_a_partial_report_pairs_only_methods_with_two_common_seeds():
    records = [
        _run("mkd", 0, 28.0),
        _run("mkd", 2, 28.1),
        _run("mkd_frozen", 0, 27.9),
        _run("mkd_frozen", 1, 27.95),
        _run("none", 0, 27.0),
        _run("none", 2, 27.1),
    ]
    rows = {r["method"]: r for r in summarize(records)}
    assert rows["mkd"]["vs_frozen"] is None  # seeds {0, 2} and {0, 1}: one pair
    assert rows["mkd"]["vs_scratch"]["psnr_y"]["mean"] == pytest.approx(1.0)
    lines = {line.split(" | ")[0]: line.split(" | ") for line in table(list(rows.values()))}
    assert lines["| mkd"][4] == "-" and lines["| mkd_frozen"][5] == "-" and lines["| none"][5] == "(scratch)"
