"""``meta-kd-sr-report``: the table of a sweep's eval.json files, checked against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meta_kd_sr.cli import report

# (job, overrides, val psnr_y, val ssim_y, Set5 psnr_y): two settings x three seeds, one lone setting
JOBS = [
    (0, ["experiment=tiny_kd", "distill=fakd", "seed=0"], 27.0, 0.80, 30.0),
    (1, ["experiment=tiny_kd", "distill=fakd", "seed=1"], 27.2, 0.81, 30.5),
    (2, ["experiment=tiny_kd", "distill=fakd", "seed=2"], 27.7, 0.84, 31.0),
    (3, ["experiment=tiny_kd", "distill=mkd", "seed=0"], 28.0, 0.85, 32.0),
    (4, ["experiment=tiny_kd", "distill=mkd", "seed=1"], 28.5, 0.86, 32.0),
    (10, ["experiment=tiny_kd", "distill=mkd", "seed=2"], 28.1, 0.87, 32.3),
    (5, ["experiment=tiny_kd", "distill=none", "seed=0"], 26.5, 0.75, 29.0),
]


def _run_dir(root: Path, job: int, overrides: list[str], psnr: float, ssim: float, set5: float) -> Path:
    run = root / f"{job}_{','.join(o for o in overrides if not o.startswith('experiment'))}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    result = {
        "output_dir": str(run),
        "iterations": 4,
        "val": {"psnr_y": psnr, "ssim_y": ssim},
        "benchmarks": {
            "Set5": {"psnr_y": set5, "ssim_y": 0.9, "n_images": 5},
            "protocol": {"scale": 4},
            "checkpoint": "student.pt",
        },
    }
    (run / "eval.json").write_text(json.dumps(result))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    for job in JOBS:
        _run_dir(root, *job)
    (root / "optimization_results.yaml").write_text("name: optuna\n")  # other files in a sweep dir
    failed = root / "6_distill=fakd,seed=3"  # started, stopped before writing eval.json
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["distill=fakd", "seed=3"]))
    return root


def _sd(values: list[float]) -> float:  # sample sd written out, the reference for statistics.stdev
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_report_of_a_sweep_gives_mean_and_sd_over_seeds(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    md, table, png = sweep / "report.md", sweep / "report.csv", sweep / "report.png"
    assert [str(md), str(table), str(png)] == printed.strip().splitlines()[-3:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    rows = {r["setting"]: r for r in csv.DictReader(table.open())}
    assert list(rows) == ["distill=fakd", "distill=mkd", "distill=none"]  # order of the first run of each
    fakd, mkd, none = rows["distill=fakd"], rows["distill=mkd"], rows["distill=none"]
    assert fakd["runs"] == "3" and fakd["seeds"] == "0,1,2" and mkd["seeds"] == "0,1,2"
    # hand-computed: fakd val PSNR 27.0, 27.2, 27.7 -> mean 27.3, sd sqrt(0.13/1) ... of (n - 1) = 2
    assert float(fakd["val/psnr_y"]) == pytest.approx(27.3)
    assert float(fakd["val/psnr_y_sd"]) == pytest.approx(math.sqrt((0.09 + 0.01 + 0.16) / 2))
    assert float(fakd["val/psnr_y_sd"]) == pytest.approx(_sd([27.0, 27.2, 27.7]))
    assert float(mkd["val/psnr_y"]) == pytest.approx((28.0 + 28.5 + 28.1) / 3)
    assert float(mkd["val/ssim_y_sd"]) == pytest.approx(0.01)  # 0.85, 0.86, 0.87
    assert float(mkd["Set5/psnr_y"]) == pytest.approx(32.1) and float(mkd["Set5/psnr_y_sd"]) == pytest.approx(
        math.sqrt(0.06 / 2)
    )
    assert float(none["val/psnr_y"]) == 26.5 and none["val/psnr_y_sd"] == ""  # one run: no sd
    assert mkd["run_dirs"].split(";")[-1].endswith("10_distill=mkd,seed=2")  # job 10 after job 4

    text = md.read_text()
    assert "shared overrides: experiment=tiny_kd" in text
    assert "Left out (no eval.json: failed or not finished): 6_distill=fakd,seed=3" in text
    assert (
        "| distill=fakd | 3 | 0,1,2 | 27.300 ± 0.361 | 0.8167 ± 0.0208 | 30.500 ± 0.500 | 0.9000 ± 0.0000 |"
        in text
    )
    assert "| distill=none | 1 | 0 | 26.500 | 0.7500 | 29.000 | 0.9000 |" in text
    assert text in printed


def test_run_dirs_given_one_by_one_and_ignored_keys(sweep, tmp_path):
    runs = sorted(p for p in sweep.iterdir() if (p / "eval.json").is_file())
    written = report.report(runs, tmp_path / "out", (*report.IGNORED, "distill"), chart=False)
    assert [p.name for p in written] == ["report.md", "report.csv"]
    rows = list(csv.DictReader(written[1].open()))
    assert len(rows) == 1 and rows[0]["runs"] == str(len(JOBS))  # distill ignored: one group
    assert float(rows[0]["val/psnr_y"]) == pytest.approx(sum(j[2] for j in JOBS) / len(JOBS))


def test_overrides_naming_the_run_dir_itself_do_not_split_a_setting(tmp_path):
    runs = []
    for seed, psnr in ((0, 27.0), (1, 28.0)):
        run = tmp_path / f"mkd-s{seed}"
        own = f"+callbacks.timer.path={run.resolve()}/timing/timing.json"
        runs.append(_run_dir(tmp_path, seed, ["distill=mkd", f"seed={seed}", own], psnr, 0.8, 30.0))
        runs[-1].rename(run)
        runs[-1] = run
    groups = report.group_runs([report.read_run(r) for r in runs])
    assert [g.setting for g in groups] == [("distill=mkd",)]
    assert groups[0].mean_sd("val/psnr_y") == pytest.approx((27.5, _sd([27.0, 28.0])))


def test_non_finite_values_and_runs_without_overrides(tmp_path):
    a = _run_dir(tmp_path, 0, ["seed=0"], 27.0, 0.8, 30.0)
    b = _run_dir(tmp_path, 1, ["seed=1"], 28.0, 0.9, 31.0)
    data = json.loads((b / "eval.json").read_text())
    data["val"]["psnr_y"] = None  # a NaN is written as null
    (b / "eval.json").write_text(json.dumps(data))
    bare = tmp_path / "bare"  # a run dir without .hydra: its seed is unknown, its setting the defaults
    bare.mkdir()
    (bare / "eval.json").write_text(json.dumps({"val": {"psnr_y": 25.0, "ssim_y": 0.7}}))
    c = _run_dir(tmp_path, 2, ["b=2", "a=1"], 20.0, 0.5, 20.0)
    d = _run_dir(tmp_path, 3, ["a=1", "seed=5", "b=2"], 22.0, 0.5, 20.0)  # the same setting as c
    runs = [report.read_run(p) for p in (a, b, bare, c, d)]
    groups = report.group_runs(runs)
    assert [len(g.runs) for g in groups] == [3, 2] and [r.seed for r in groups[0].runs] == ["0", "1", None]
    assert groups[1].mean_sd("val/psnr_y") == pytest.approx((21.0, _sd([20.0, 22.0])))
    assert groups[0].mean_sd("val/psnr_y") == pytest.approx((26.0, _sd([27.0, 25.0])))  # null left out
    assert groups[0].mean_sd("val/ssim_y") == pytest.approx((0.8, 0.1))


def _exit_code(argv):
    with pytest.raises(SystemExit) as exit_info:
        report.main(argv)
    return exit_info.value.code


def test_errors_a_user_sees(tmp_path, capsys, monkeypatch):
    assert _exit_code([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no eval.json in it or below" in err and len(err.strip().splitlines()) == 1
    assert _exit_code([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    run = _run_dir(tmp_path, 0, ["seed=0"], 27.0, 0.8, 30.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: the tables, and a hint
    assert report.main([str(run)]) == 0 and (run / "report.md").is_file() and (run / "report.csv").is_file()
    assert not (run / "report.png").exists()
    assert "no chart: the chart (report.png) needs matplotlib" in capsys.readouterr().err
    assert report.main([str(run), "--no-chart"]) == 0 and "no chart" not in capsys.readouterr().err


def test_console_script(sweep, tmp_path):
    out = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "meta_kd_sr.cli.report", str(sweep), "--out", str(out), "--no-chart"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip().splitlines()[-2:] == [str(out / "report.md"), str(out / "report.csv")]
