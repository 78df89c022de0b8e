"""The quality benchmark: statistics on known values, the resume/skip logic, ``--quick`` end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import bench_quality
import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from quality import pipeline, runner
from quality.health import summarize_run as summarize_health
from quality.heldout import HELDOUT, check_disjoint
from quality.measure import random_teacher
from quality.plan import QUICK, RunSpec, round_iterations, student_spec
from quality.report import before_after_table, explore_table, markdown, summarize, table
from quality.results import before_sweep
from quality.stats import beyond_noise, mean_sd, paired_difference, seconds_per_iteration
from scipy import stats as scipy_stats

from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.train import build_module

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"

T_975_2DOF = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (printed tables)


# ------------------------------------------------------------------------------------------ statistics
def test_paired_difference_hand_computed():
    # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3), CI 2 -+ 4.3027 / sqrt(3)
    diff = paired_difference({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert diff["mean"] == pytest.approx(2.0)
    assert diff["sd"] == pytest.approx(1.0)
    assert (diff["n"], diff["dof"], diff["seeds"]) == (3, 2, [0, 1, 2])
    assert diff["t"] == pytest.approx(2 * math.sqrt(3))
    half = T_975_2DOF / math.sqrt(3)
    assert diff["ci"] == pytest.approx([2 - half, 2 + half])
    assert not beyond_noise(diff)  # the interval (-0.48, 4.48) holds 0


def test_paired_difference_matches_scipy_paired_t_test():
    a = {0: 26.81, 1: 26.95, 2: 26.90, 3: 27.02}
    b = {0: 26.80, 1: 26.79, 2: 26.84, 3: 26.83}
    diff = paired_difference(a, b)
    ref = scipy_stats.ttest_rel(list(a.values()), list(b.values()))
    low, high = ref.confidence_interval(0.95)
    assert diff["t"] == pytest.approx(ref.statistic)
    assert diff["ci"] == pytest.approx([low, high])
    assert beyond_noise(diff) == (low > 0 or high < 0)


def test_paired_difference_pairs_by_seed_and_refuses_one_seed():
    # seed 5 has no partner: only seeds 0 and 1 are paired, whatever the dict order
    diff = paired_difference({1: 3.0, 0: 1.0, 5: 99.0}, {0: 0.0, 1: 1.0})
    assert diff["seeds"] == [0, 1] and diff["mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"needs >= 2 seeds present in both, got \[0\]"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 2: 0.0})


def test_paired_difference_without_spread():
    assert paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})["t"] == math.inf
    assert math.isnan(paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})["t"])


def test_mean_sd_and_seconds_per_iteration():
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "sd": math.sqrt(5 / 3), "n": 4})
    assert mean_sd([7.0])["sd"] is None
    # two processes of one resumed run: 40 iterations in 6 s
    segments = [{"iterations": 10, "seconds": 2.0}, {"iterations": 30, "seconds": 4.0}]
    assert seconds_per_iteration(segments) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="no timed iterations"):
        seconds_per_iteration([{"iterations": 0, "seconds": 1.0}])


def test_equal_time_iterations():
    assert round_iterations(100.0, 0.3, 10) == 330  # 333.3 -> 330
    assert round_iterations(1.0, 0.3, 10) == 10  # never below one step of rounding
    with pytest.raises(ValueError, match="positive"):
        round_iterations(0.0, 0.3, 10)


def _record(method: str, group: str, seed: int, psnr: float, s_per_it: float = 0.1, iterations: int = 100):
    """A run record; its wall time reads 20 % above its CPU time (a busy machine)."""
    return {
        "method": method,
        "group": group,
        "seed": seed,
        "iterations": iterations,
        "psnr_y": psnr,
        "ssim_y": psnr / 100,
        "s_per_it": 1.2 * s_per_it,
        "train_s": 1.2 * s_per_it * iterations,
        "cpu_s_per_it": s_per_it,
        "train_cpu_s": s_per_it * iterations,
        "process_s": s_per_it * iterations + 10,
        "meta_health": None,
    }


def test_equal_time_budget_is_computed_once_in_cpu_time(tmp_path):
    ctx = pipeline.Context(tmp_path, QUICK, 1, 1, tmp_path / "log")
    records = [_record("none", "equal_iterations", s, 20.0, 0.1) for s in (0, 1)]
    records += [_record("mkd", "equal_iterations", s, 20.0, 0.5) for s in (0, 1)]  # 50 CPU s per MKD run
    budget = pipeline.equal_time_budget(ctx, records)
    assert budget["mkd_train_s"] == pytest.approx(50.0) and budget["clock"] == "cpu"
    assert budget["iterations"] == {"none": 500}
    # a rerun trains the runs it started, even when the timings it is given changed
    assert pipeline.equal_time_budget(ctx, records[:1] + records[2:3]) == budget


def test_summary_rows_and_table():
    records = []
    for seed, (none, mkd, fakd) in enumerate(
        [(26.80, 26.95, 26.85), (26.82, 27.10, 26.80), (26.81, 27.00, 26.9)]
    ):
        records += [
            _record("none", "equal_iterations", seed, none),
            _record("mkd", "equal_iterations", seed, mkd, 0.5),
            _record("fakd", "equal_iterations", seed, fakd, 0.3),
            _record("none", "equal_time", seed, none + 0.4, iterations=500),
        ]
    summary = summarize(records)
    rows = {r["method"]: r for r in summary["equal_iterations"]}
    assert rows["none"]["vs_scratch"] is None and rows["mkd"]["vs_mkd"] is None
    expected = paired_difference({0: 26.95, 1: 27.10, 2: 27.00}, {0: 26.80, 1: 26.82, 2: 26.81})
    got = rows["mkd"]["vs_scratch"]["psnr_y"]
    assert got["ci"] == pytest.approx(expected["ci"]) and got["t"] == pytest.approx(expected["t"])
    assert rows["mkd"]["psnr_y"]["mean"] == pytest.approx((26.95 + 27.10 + 27.00) / 3)
    assert rows["mkd"]["train_cpu_s"] == pytest.approx(50.0) and rows["mkd"]["train_s"] == pytest.approx(60.0)
    # equal time: MKD (its equal-iteration runs) against scratch given the same time
    timed = {r["method"]: r for r in summary["equal_time"]}
    assert timed["mkd"]["vs_scratch"]["psnr_y"]["mean"] == pytest.approx(expected["mean"] - 0.4, abs=1e-9)
    assert timed["none"]["iterations"] == 500 and timed["none"]["vs_scratch"] is None
    lines = {line.split(" | ")[0]: line for line in table(summary["equal_iterations"])}
    # MKD - scratch: d = (0.15, 0.28, 0.19), mean 0.207, CI excludes 0 (marked *), t = 5.38
    assert lines["| mkd"] == (
        "| mkd | 100 | 27.017 ± 0.076 | 0.2702 ± 0.0008 | +0.207 [+0.041, +0.372] * | 5.38 | 0.5000 | 50 "
        "| 60 |"
    )
    assert "(reference)" in lines["| none"]


def test_before_and_after_the_sweep_rows(tmp_path):
    def summary(fakd):  # scratch the same before and after; FAKD's three seeds change
        records = []
        for seed, (none, f) in enumerate(zip((26.80, 26.82, 26.81), fakd)):
            records += [_record("none", "equal_iterations", seed, none)]
            records += [_record("fakd", "equal_iterations", seed, f, 0.3)]
        return summarize(records)

    old = {"git_commit": "a" * 40, "date": "2026-12-03T12:45:49+00:00"}
    old["summary"] = summary((26.1, 26.7, 26.4))
    (tmp_path / "quality_untuned.json").write_text(json.dumps(old))
    before = before_sweep(tmp_path)
    assert before["git_commit"] == "a" * 40 and before["file"].endswith("quality_untuned.json")
    assert before_sweep(tmp_path / "absent") is None
    after = summary((26.85, 26.90, 26.83))["equal_iterations"]
    lines = {line.split(" | ")[0]: line for line in before_after_table(before["rows"], after)}
    # before: d = (-0.70, -0.12, -0.41), mean -0.410, sd 0.290; after: d = (0.05, 0.08, 0.02), mean +0.050
    expected = paired_difference({0: 26.1, 1: 26.7, 2: 26.4}, {0: 26.80, 1: 26.82, 2: 26.81})
    assert expected["mean"] == pytest.approx(-0.41)
    low, high = expected["ci"]
    assert lines["| fakd"] == (
        f"| fakd | 26.400 ± 0.300 | 26.860 ± 0.036 | {expected['mean']:+.3f} [{low:+.3f}, {high:+.3f}] "
        "| +0.050 [-0.025, +0.125] |"
    )
    assert lines["| none"] == "| none | 26.810 ± 0.010 | 26.810 ± 0.010 | (reference) | (reference) |"
    # a method in only one of the two results is left out
    only_after = summarize([_record("fsp", "equal_iterations", s, 26.0) for s in (0, 1)])["equal_iterations"]
    assert len(before_after_table(before["rows"], only_after)) == 2


def test_explore_rows_compare_with_frozen_krnets_and_mkd():
    records = []
    scores = [(27.00, 27.02, 27.20), (27.10, 27.05, 27.25), (27.05, 27.07, 27.3)]
    for seed, (frozen, mkd, fast) in enumerate(scores):
        records += [
            _record("none", "equal_iterations", seed, 26.8),
            _record("mkd", "equal_iterations", seed, mkd, 0.5),
            _record("mkd_frozen", "equal_iterations", seed, frozen, 0.3),
            _record("mkd_metalr1e-3", "explore", seed, fast, 0.5),
        ]
    rows = {r["method"]: r for r in summarize(records)["explore"]}
    assert list(rows) == ["mkd", "mkd_frozen", "mkd_metalr1e-3"]
    assert rows["mkd"]["reference"] and rows["mkd_frozen"]["vs_frozen"] is None
    expected = paired_difference({0: 27.20, 1: 27.25, 2: 27.3}, {0: 27.00, 1: 27.10, 2: 27.05})
    assert rows["mkd_metalr1e-3"]["vs_frozen"]["psnr_y"]["ci"] == pytest.approx(expected["ci"])
    assert rows["mkd"]["vs_frozen"]["psnr_y"]["mean"] == pytest.approx((0.02 - 0.05 + 0.02) / 3)
    result = {"summary": summarize(records)}
    lines = {line.split(" | ")[0]: line for line in explore_table(result["summary"]["explore"])}
    row = "| mkd_metalr1e-3 | 27.250 ± 0.050 | 0.2725 ± 0.0005 | +0.200"
    assert lines["| mkd_metalr1e-3"].startswith(row)
    assert "(reference)" in lines["| mkd_frozen"]


def test_meta_health_summary_from_the_csv_log(tmp_path):
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    rows = ["step,train/loss,train/meta_grad_norm,train/krnet_drift,train/meta_noise_share,train/meta_snr"]
    for step in range(0, 100, 5):  # 20 logged meta steps; the noise share and SNR from step 50 on
        noise, snr = ("", "") if step < 50 else (str(0.5 + step / 1000), str(step / 100))
        rows.append(f"{step},1.0,{1e-5 / (1 + step)},{step / 1000},{noise},{snr}")
    rows.append("99,0.9,,,,")  # a logging step without a meta step
    (run / "csv" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    health = summarize_health(run, 100)
    assert health["logged_meta_steps"] == 20
    assert health["grad_norm_start"] == pytest.approx((1e-5 + 1e-5 / 6) / 2)  # first tenth: steps 0, 5
    assert health["grad_norm_end"] == pytest.approx((1e-5 / 91 + 1e-5 / 96) / 2)
    assert health["drift_end"] == pytest.approx(0.095)
    assert health["noise_share_second_half"] == pytest.approx(0.5 + 0.0725)  # steps 50..95
    assert health["snr_second_half"] == pytest.approx(0.725)
    (run / "csv" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    assert summarize_health(run, 100) is None


# ------------------------------------------------------------------------------------- resume logic
def _spec(name: str = "none-s0-n6") -> RunSpec:
    return RunSpec(name, "none", "equal_iterations", 0, 6, ("experiment=tiny_sr", "seed=0"))


def test_run_state_decides_skip_resume_restart(tmp_path):
    spec, run = _spec(), tmp_path / "run"
    assert runner.run_state(run) == "fresh"
    args = runner.launch_arguments(spec, run, "fresh")
    assert args[1:3] == ["-m", "meta_kd_sr.cli.train"] and f"hydra.run.dir={run}" in args
    assert not any(a.startswith(("resume=", "overwrite=")) for a in args)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step0000004.ckpt").write_bytes(b"x")  # killed before its first resume point
    assert runner.run_state(run) == "restart"
    assert "overwrite=true" in runner.launch_arguments(spec, run, "restart")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert runner.run_state(run) == "resume"
    assert f"resume={run / 'checkpoints' / 'last.ckpt'}" in runner.launch_arguments(spec, run, "resume")
    (run / "eval.json").write_text("{}")
    assert runner.run_state(run) == "finished"
    with pytest.raises(ValueError, match="is finished"):
        runner.launch_arguments(spec, run, "finished")


def test_run_dir_of_other_settings_is_refused(tmp_path):
    spec = _spec()
    runner.check_spec(spec, tmp_path)
    runner.check_spec(spec, tmp_path)  # the same settings: fine
    other = RunSpec(spec.name, "none", "equal_iterations", 0, 8, spec.overrides)
    with pytest.raises(ValueError, match=r"other settings \(iterations differ\): delete it, or pass another"):
        runner.check_spec(other, tmp_path)


def test_one_benchmark_per_cache(tmp_path):
    fd = runner.lock_cache(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is in use by another bench_quality run"):
            runner.lock_cache(tmp_path)
    finally:
        os.close(fd)
    os.close(runner.lock_cache(tmp_path))  # free again


def _student_and_first_batch(spec: RunSpec, out: Path, teacher: Path):
    """What ``train()`` builds first for ``spec``: seeded, then the data, then the module."""
    overrides = runner.with_teacher(spec, teacher)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={out}"])
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()["train"]))
    return torch.cat([p.detach().flatten() for p in module.student.parameters()]), batch["lq"]


def test_seeds_are_paired_across_methods(tmp_path):
    teacher = random_teacher(tmp_path / "teacher.pt", *QUICK.teacher)
    built = {
        m: _student_and_first_batch(student_spec(QUICK, m, 1, 6, "equal_iterations"), tmp_path, teacher)
        for m in ("none", "output", "mkd", "mkd_frozen")
    }
    other_seed = _student_and_first_batch(
        student_spec(QUICK, "none", 0, 6, "equal_iterations"), tmp_path, teacher
    )
    for method, (params, lq) in built.items():
        assert torch.equal(params, built["none"][0]), method  # same initialisation
        assert torch.equal(lq, built["none"][1]), method  # same data stream
    assert not torch.equal(other_seed[0], built["none"][0])


def test_heldout_photos_are_disjoint_from_training():
    check_disjoint(HELDOUT, bench_quality.training_photos())
    with pytest.raises(ValueError, match=r"\['chelsea'\] are also in the training"):
        check_disjoint(["cat", "camera"], ["astronaut", "chelsea"])


# ------------------------------------------------------------------------------------ --quick, twice
def test_quick_writes_results_with_the_schema(quick_run):
    result = json.loads((quick_run / "quality.json").read_text())
    for key in ("command", "date", "git_commit", "machine", "sizes", "heldout", "teacher", "bicubic"):
        assert key in result
    assert {"platform", "cpu", "cores", "torch_threads"} <= set(result["machine"])
    assert isinstance(result["machine"]["torch_threads"], int) and result["mode"] == "quick"
    assert len(result["git_commit"]) >= 40 and "--quick" in result["command"]
    assert isinstance(result["teacher_margin"]["ok"], bool)
    runs = result["runs"]
    assert sorted((r["method"], r["group"], r["seed"]) for r in runs) == sorted(
        [(m, "equal_iterations", s) for m in QUICK.methods for s in QUICK.seeds]
        + [(m, "equal_time", s) for m in QUICK.equal_time for s in QUICK.seeds]
        + [(m, "explore", s) for m in QUICK.explore for s in QUICK.seeds]
    )
    for r in runs:
        assert isinstance(r["psnr_y"], float) and 0 < r["ssim_y"] < 1
        assert r["s_per_it"] > 0 and r["train_s"] == pytest.approx(r["s_per_it"] * r["iterations"])
        assert r["cpu_s_per_it"] > 0
        assert r["train_cpu_s"] == pytest.approx(r["cpu_s_per_it"] * r["iterations"])
        if r["method"] == "none":
            assert r["meta_health"] is None
        if r["method"] == "mkd":  # a meta step every iteration, logged every iteration
            assert r["meta_health"]["logged_meta_steps"] == r["iterations"]
            assert r["meta_health"]["grad_norm_start"] > 0 and r["meta_health"]["drift_end"] > 0
        if r["method"] == "mkd_late":  # meta-learned from half the run: 3 of 6 iterations
            assert r["meta_health"]["logged_meta_steps"] == r["iterations"] // 2
    eq_time = {r["method"]: r for r in result["summary"]["equal_time"]}
    assert eq_time["none"]["iterations"] == result["budget"]["iterations"]["none"]
    mkd = {r["method"]: r for r in result["summary"]["equal_iterations"]}["mkd"]
    for metric in ("psnr_y", "ssim_y"):
        diff = mkd["vs_scratch"][metric]
        assert {"mean", "sd", "t", "ci", "dof", "n"} <= set(diff) and diff["n"] == len(QUICK.seeds)
        assert diff["ci"][0] <= diff["mean"] <= diff["ci"][1]
    text = (quick_run / "quality.md").read_text()
    assert result["git_commit"] in text and "| method | iterations | PSNR_y (dB) |" in text
    assert "## Explore" in text and "| mkd_late |" in text and "## Meta signal" in text
    assert "- loss weights: " in text and result["weights"] in text
    assert "## Before and after" not in text  # no quality_untuned.json in the quick run's folder
    assert (quick_run / "quality_front.png").read_bytes()[:4] == b"\x89PNG"
    assert (quick_run / "cache" / "bench_quality.log").read_text().count("phase") >= 8


def test_quick_rerun_trains_nothing_and_resumes_a_killed_run(quick_run, train_launches, capsys):
    before = json.loads((quick_run / "quality.json").read_text())
    launches = train_launches
    # an earlier record of the regime beside it (here: this one) is set beside the equal-iteration rows
    untuned = quick_run / "quality_untuned.json"
    shutil.copy(quick_run / "quality.json", untuned)
    try:
        again = bench_quality.main(["--quick", "--out", str(quick_run)])
    finally:
        untuned.unlink()
    assert launches == []  # every run finished: nothing trained
    assert [r["psnr_y"] for r in again["runs"]] == [r["psnr_y"] for r in before["runs"]]
    out = capsys.readouterr().out
    assert "| method | iterations |" in out and "## Before and after the loss-weight sweep" in out
    assert again["before_sweep"]["git_commit"] == before["git_commit"]
    assert "| none | " in out and "| (reference) | (reference) |" in out
    # a run killed after its last checkpoint (no eval.json, no stored record) is continued with resume=
    name = next(r["name"] for r in before["runs"] if r["method"] == "none")
    killed = quick_run / "cache" / "runs" / name
    (killed / "eval.json").unlink()
    shutil.rmtree(quick_run / "runs" / name)
    resumed = bench_quality.main(["--quick", "--out", str(quick_run)])
    assert len(launches) == 1 and f"resume={killed / 'checkpoints' / 'last.ckpt'}" in launches[0]
    assert [r["psnr_y"] for r in resumed["runs"]] == [r["psnr_y"] for r in before["runs"]]
    assert markdown(resumed).count("\n") > 10


def test_no_explore_reports_only_the_finished_exploration_runs(quick_run, train_launches):
    before = json.loads((quick_run / "quality.json").read_text())
    explored = [r for r in before["runs"] if r["group"] == "explore"]
    (quick_run / "cache" / "runs" / explored[0]["name"] / "eval.json").unlink()
    shutil.rmtree(quick_run / "runs" / explored[0]["name"])
    launches = train_launches
    result = bench_quality.main(["--quick", "--out", str(quick_run), "--no-explore"])
    assert launches == []
    names = [r["name"] for r in result["runs"] if r["group"] == "explore"]
    assert names == [r["name"] for r in explored[1:]]
