"""The converged regime, the loss-weight sweep and the committed store: known values, ``--quick`` end to end,
and the committed students re-scored."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import bench_quality
import pytest
from quality import report_converged, store, sweep
from quality.curve import converged, last_quarter_change
from quality.heldout import HELDOUT, PHOTO_SETS, SWEEP_VAL, HeldoutPhotos, check_disjoint, score
from quality.plan import QUICK, QUICK_CONVERGED, RunSpec, Sizes

from meta_kd_sr.models.checkpoint import student_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ units
def test_budget_rule_reads_the_last_quarter_of_the_curve():
    curve = [{"step": s, "psnr_y": p} for s, p in [(100, 27.0), (200, 27.5), (300, 27.71), (400, 27.725)]]
    assert last_quarter_change(curve, 400) == pytest.approx(0.015)  # PSNR(400) - PSNR(300)
    assert converged(curve, 400, 0.02) and not converged(curve, 400, 0.01)
    with pytest.raises(ValueError, match=r"no point at steps \[300\]"):
        last_quarter_change(curve[:2] + curve[3:], 400)
    with pytest.raises(ValueError, match="curve_points must be a multiple of 4"):
        Sizes(**(QUICK.as_dict() | {"curve_points": 6}))
    with pytest.raises(ValueError, match="budget_ladder must increase"):
        Sizes(**(QUICK.as_dict() | {"budget_ladder": (8, 4)}))
    converged_sizes = QUICK_CONVERGED.as_dict()
    with pytest.raises(ValueError, match="doubled must hold 'none' and methods of the regime"):
        Sizes(**(converged_sizes | {"doubled": ("mkd",)}))
    with pytest.raises(ValueError, match="doubled must hold 'none' and methods of the regime"):
        Sizes(**(converged_sizes | {"doubled": ("none", "fakd")}))  # not a method of this regime
    with pytest.raises(ValueError, match="doubled_seeds must be 2 to 2, got 3"):
        Sizes(**(converged_sizes | {"doubled_seeds": 3}))


@pytest.mark.parametrize(
    ("doubled", "says"),
    [
        ({"iterations": 4000, "psnr_y": 28.75, "gain_db": 0.11}, "rule's 0.02 dB, so a longer schedule"),
        ({"iterations": 4000, "psnr_y": 28.65, "gain_db": -0.01}, "also a plateau of the network"),
        (None, "scratch for 4000 iterations): not run"),
    ],
    ids=["still_gains", "flat", "left_out"],
)
def test_doubling_check_line(doubled, says):
    budget = {"iterations": 2000, "plateau_db": 0.02, "doubled": doubled}
    line = report_converged.doubling_line(budget)
    assert says in line and line.count("\n") == 0
    if doubled is not None:
        assert f"{doubled['psnr_y']:.3f} dB, {doubled['gain_db']:+.3f} dB" in line


def test_sweep_photos_are_neither_trained_on_nor_held_out():
    check_disjoint(SWEEP_VAL, [*bench_quality.training_photos(), *HELDOUT])
    assert PHOTO_SETS == {"heldout": HELDOUT, "sweep_val": SWEEP_VAL}


def test_sweep_chooses_the_best_mean_and_the_mkd_family_follows_mkd_frozen():
    grid = {"output": {"a": ("x=1",), "b": ("x=2",)}}
    runs = [
        {
            "name": f"sweep-output-{label}-s{seed}-n10",
            "method": "output",
            "seed": seed,
            "psnr_y": p,
            "ssim_y": 0.5,
        }
        for label, seed, p in [("a", 0, 27.0), ("a", 1, 27.4), ("b", 0, 27.3), ("b", 1, 27.3)]
    ]
    chosen = sweep.choose(runs, grid)["output"]
    assert chosen["chosen"] == {"label": "b", "overrides": ["x=2"]}  # 27.3 > 27.2
    assert [r["psnr_y"]["mean"] for r in chosen["points"]] == pytest.approx([27.2, 27.3])
    tuned = {"mkd_frozen": ("distill.kd_weight=3.0",), "output": ("x=2",)}
    assert sweep.weights_for("mkd", tuned) == ("distill.kd_weight=3.0",)
    assert sweep.weights_for("output", tuned) == ("x=2",) and sweep.weights_for("none", tuned) == ()
    # the FAKD grid holds the preset before its fix (10) and after (10 / 255)
    assert sweep.GRID["fakd"]["kd10"] == ("distill.kd_weight=10.0",)
    assert sweep.GRID["fakd"]["kd10of255"] == (f"distill.kd_weight={10 / 255}",)


def test_command_line_holds_no_machine_path(tmp_path):
    line = bench_quality.command_line(
        ["--out", str(REPO / "benchmarks" / "results"), "--cache", str(tmp_path)]
    )
    outside = f"'<outside the repository>/{tmp_path.name}'"
    assert line == f"python benchmarks/bench_quality.py --out benchmarks/results --cache {outside}"


def test_store_skips_a_stored_run_and_refuses_other_settings(tmp_path):
    spec = RunSpec("none-s0-n6", "none", "equal_iterations", 0, 6, ("seed=0",))
    network = tmp_path / "student.pt"
    network.write_bytes(b"weights")
    assert store.load(tmp_path / "store", spec) is None
    saved = store.save(
        tmp_path / "store", spec, {"name": spec.name, "psnr_y": 20.0, "run_dir": "/x"}, network, "abc"
    )
    loaded = store.load(tmp_path / "store", spec)
    assert loaded["psnr_y"] == 20.0 and loaded["sha256"] == saved["sha256"] == store.sha256(network)
    assert Path(loaded["student"]).read_bytes() == b"weights" and "run_dir" not in loaded
    other = RunSpec(spec.name, "none", "equal_iterations", 0, 6, ("seed=1",))
    with pytest.raises(ValueError, match=r"other settings \(overrides differ\): delete its folder"):
        store.load(tmp_path / "store", other)


# ------------------------------------------------------------------------------ --quick sweep + converged
@pytest.fixture(scope="module")
def quick_regimes(quick_run) -> Path:
    """``--quick --sweep`` then ``--quick --regime converged`` in the folder of the shared ``--quick`` run."""
    bench_quality.main(["--quick", "--sweep", "--out", str(quick_run)])
    bench_quality.main(["--quick", "--regime", "converged", "--out", str(quick_run)])
    return quick_run


def test_quick_sweep_writes_the_chosen_weights(quick_regimes):
    result = json.loads((quick_regimes / "sweep.json").read_text())
    points = result["methods"]["mkd_frozen"]["points"]
    assert [p["label"] for p in points] == list(sweep.QUICK_GRID["mkd_frozen"])
    best = max(points, key=lambda p: p["psnr_y"]["mean"])
    weights = json.loads((quick_regimes / "weights.json").read_text())["chosen"]
    assert weights["mkd_frozen"] == {"label": best["label"], "overrides": best["overrides"]}
    assert {r["photos"]["set"] for r in result["runs"]} == {"sweep_val"}
    assert "| mkd_frozen |" in (quick_regimes / "sweep.md").read_text()


def test_quick_converged_measures_the_budget_and_uses_the_tuned_weights(quick_regimes):
    result = json.loads((quick_regimes / "converged.json").read_text())
    budget = result["budget"]
    assert budget["iterations"] in QUICK_CONVERGED.budget_ladder and "< 0.02 dB" in budget["rule"]
    for rung in budget["ladder"]:  # a point every quarter of each run
        assert [p["step"] for p in rung["curve"]] == [rung["iterations"] * k // 4 for k in (1, 2, 3, 4)]
        assert rung["last_quarter_db"] == pytest.approx(
            rung["curve"][-1]["psnr_y"] - rung["curve"][-2]["psnr_y"]
        )
    doubled, rung = budget["doubled"], budget["ladder"][-1]  # scratch, first seed, for twice the budget
    assert doubled["iterations"] == 2 * budget["iterations"] and len(doubled["curve"]) == 4
    assert doubled["gain_db"] == pytest.approx(doubled["psnr_y"] - rung["psnr_y"])
    assert doubled["psnr_y"] == pytest.approx(doubled["curve"][-1]["psnr_y"])
    # the methods of ``doubled`` at 2N, paired like the budget's runs; scratch's first seed is the check's run
    q = QUICK_CONVERGED
    at_double = result["doubled_runs"]
    assert sorted((r["method"], r["seed"]) for r in at_double) == sorted(
        (m, seed) for m in q.doubled for seed in q.seeds[: q.doubled_seeds]
    )
    assert {r["iterations"] for r in at_double} == {doubled["iterations"]}
    assert all("student" not in r and not Path(r["path"]).is_absolute() for r in at_double)
    check = next(r for r in at_double if (r["method"], r["seed"]) == ("none", q.seeds[0]))
    assert check["psnr_y"] == doubled["psnr_y"]
    twice = {r["method"]: r for r in result["doubled_summary"]}
    assert twice["mkd"]["vs_scratch"]["psnr_y"]["n"] == q.doubled_seeds
    runs = result["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in QUICK_CONVERGED.methods for s in QUICK_CONVERGED.seeds
    )
    assert {r["iterations"] for r in runs} == {budget["iterations"]} and result["teacher_margin"][
        "required"
    ] == 1.0
    # the scratch run of the first seed at the budget is the budget's run: its final point is its score
    s0 = next(r for r in runs if r["method"] == "none" and r["seed"] == QUICK_CONVERGED.seeds[0])
    assert s0["curve"][-1]["psnr_y"] == pytest.approx(s0["psnr_y"])
    chosen = json.loads((quick_regimes / "weights.json").read_text())["chosen"]["mkd_frozen"]["overrides"]
    mkd = json.loads(
        (quick_regimes / "runs" / f"mkd-conv-s0-n{budget['iterations']}" / "record.json").read_text()
    )
    assert mkd["spec"]["overrides"][-len(chosen) :] == chosen  # MKD takes mkd_frozen's tuned weight
    rows = {r["method"]: r for r in result["summary"]}
    assert rows["mkd"]["vs_scratch"]["psnr_y"]["n"] == len(QUICK_CONVERGED.seeds)
    text = (quick_regimes / "converged.md").read_text()
    assert "## Student budget" in text and "| mkd |" in text and "tuned by the sweep" in text
    assert f"trained for {doubled['iterations']} iterations scores {doubled['psnr_y']:.3f} dB" in text
    assert "## At twice the budget" in text and f"| mkd | {doubled['iterations']} | 2 |" in text
    signal = text.split("## Whole-run meta signal", 1)[1]  # z of every KRNet weight, pooled over the seeds
    seeds = len(QUICK_CONVERGED.seeds)
    assert rows["mkd"]["signal"]["runs"] == seeds and f"| mkd | {seeds} |" in signal
    assert "| pure noise (half-normal) |" in signal and "| none |" not in signal
    assert (quick_regimes / "converged_budget.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_store_outlives_the_cache(quick_regimes, train_launches, tmp_path):
    before = json.loads((quick_regimes / "converged.json").read_text())
    launches = train_launches
    cache_runs = quick_regimes / "cache" / "runs"
    shutil.move(cache_runs, tmp_path / "runs")  # another machine: only the committed store is there
    try:
        again = bench_quality.main(["--quick", "--regime", "converged", "--out", str(quick_regimes)])
    finally:
        shutil.rmtree(cache_runs, ignore_errors=True)
        shutil.move(tmp_path / "runs", cache_runs)
    assert launches == []
    assert [r["psnr_y"] for r in again["runs"]] == [r["psnr_y"] for r in before["runs"]]
    manifest = json.loads((quick_regimes / "students.json").read_text())
    for row in manifest:
        assert store.sha256(quick_regimes / row["path"]) == row["sha256"]
        assert not Path(row["path"]).is_absolute()


# ------------------------------------------------------------------------------ committed results
def _committed_students() -> list[dict]:
    path = RESULTS / "students.json"
    return json.loads(path.read_text()) if path.is_file() else []


def test_paths_are_relative_to_the_checkout_that_holds_the_store(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    inside = tmp_path / "repo" / "benchmarks" / "results"
    network = inside / "runs" / "a-s0-n8" / "student.pt"
    assert store.repository_of(inside) == tmp_path / "repo"
    assert store.shown(network, inside) == "benchmarks/results/runs/a-s0-n8/student.pt"
    outside = tmp_path / "out"  # in no checkout: relative to the store
    assert store.repository_of(outside) is None
    assert store.shown(outside / "runs" / "a-s0-n8" / "student.pt", outside) == "runs/a-s0-n8/student.pt"
    assert store.shown(RESULTS / "students.json", RESULTS) == "benchmarks/results/students.json"


def test_a_committed_student_rescores_to_its_row():
    students = [s for s in _committed_students() if s["method"] != "teacher"]
    assert students, "benchmarks/results/students.json lists no committed student"
    row = min(students, key=lambda s: s["name"])
    path = REPO / row["path"]
    assert store.sha256(path) == row["sha256"]
    record = json.loads((path.parent / "record.json").read_text())
    net, _ = student_from_checkpoint(path)  # what meta-kd-sr-eval ckpt_path=<path> loads
    photos = HeldoutPhotos(record["photos"]["names"], bench_quality.SCALE)
    assert list(photos.image_names) == list(PHOTO_SETS[record["photos"]["set"]])
    scores = score(net, photos)["all"]
    assert scores["psnr_y"] == pytest.approx(record["psnr_y"], abs=1e-4) == row["psnr_y"]
    assert scores["ssim_y"] == pytest.approx(record["ssim_y"], abs=1e-6)


def test_readme_tables_are_rows_of_the_committed_reports():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Headline result") : readme.index("## Documentation")]
    reports = {name: (RESULTS / name).read_text() for name in ("converged.md", "levers.md")}
    rows = [line for line in section.splitlines() if re.match(r"\| [a-z_0-9]+ \|", line)]
    assert len(rows) >= 15, "the README's result tables went missing"
    stale = [row for row in rows if not any(row in text.splitlines() for text in reports.values())]
    assert not stale, f"README rows not in benchmarks/results/converged.md or levers.md: {stale}"


def test_committed_results_name_no_machine_path():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Is it worth it?") :]
    texts = {path: path.read_text() for path in [*RESULTS.glob("*.json"), *RESULTS.glob("*.md")]}
    texts |= {path: path.read_text() for path in RESULTS.glob("runs/*/record.json")}
    texts["README.md, Is it worth it?"] = section.split("\n## ", 1)[0]
    absolute = re.compile(r"""["'`(\s=]/(?:work|home|tmp|Users|root|mnt)/""")
    for where, text in texts.items():
        assert str(REPO) not in text and not absolute.search(text), where


def _run(method: str, seed: int, psnr: float, cpu_s_per_it: float) -> dict:
    return {
        "method": method,
        "group": "converged",
        "seed": seed,
        "iterations": 100,
        "psnr_y": psnr,
        "ssim_y": psnr / 100,
        "s_per_it": cpu_s_per_it,
        "train_s": cpu_s_per_it * 100,
        "cpu_s_per_it": cpu_s_per_it,
        "train_cpu_s": cpu_s_per_it * 100,
        "process_s": 1.0,
        "meta_health": None,
    }


def test_converged_rows_pair_each_method_with_scratch_and_mkd_frozen():
    from quality.report_converged import summarize, table
    from quality.stats import paired_difference

    scores = {"none": (28.0, 28.1, 28.2), "mkd_frozen": (28.3, 28.3, 28.5), "mkd": (28.35, 28.3, 28.6)}
    records = [_run(m, seed, p, 0.1) for m, ps in scores.items() for seed, p in enumerate(ps)]
    rows = {r["method"]: r for r in summarize(records)}
    want = paired_difference(dict(enumerate(scores["mkd"])), dict(enumerate(scores["mkd_frozen"])))
    assert rows["mkd"]["vs_frozen"]["psnr_y"]["ci"] == pytest.approx(want["ci"])
    assert rows["mkd"]["vs_scratch"]["psnr_y"]["mean"] == pytest.approx(0.95 / 3)  # d = (0.35, 0.2, 0.4)
    lines = {line.split(" | ")[0]: line for line in table(summarize(records))}
    low, high = want["ci"]
    assert f"| {want['mean']:+.3f} [{low:+.3f}, {high:+.3f}] |" in lines["| mkd"]
    assert lines["| none"].count("(reference)") == 1 and "| -0.267 [-0.410, -0.123] * |" in lines["| none"]
    assert lines["| mkd_frozen"].count("(reference)") == 1
