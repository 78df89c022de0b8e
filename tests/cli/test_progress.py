"""Feedback while running: the iteration progress bars, the printed outputs, phase lines, no known noise."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_module
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import OmegaConf

from helpers.bar_spy import RECORDS
from helpers.train_config import compose_train
from meta_kd_sr.cli.prepare import prepare
from meta_kd_sr.cli.train import train
from meta_kd_sr.data import save_png
from meta_kd_sr.models import EDSR
from meta_kd_sr.runtime.console import Phases, eval_mode_warning, format_outputs, quiet_known_noise
from meta_kd_sr.training.progress import RichStepProgressBar, StepProgressBar, display_callbacks, step_total
from meta_kd_sr.training.recovery import RunRefused, prepare_run_dir
from meta_kd_sr.training.teacher import load_teacher

TEACHER = ["teacher.net.n_feats=16", "teacher.net.n_blocks=2"]
TINY = ["experiment=tiny_sr", "model.n_feats=8", "model.n_blocks=1"]
BAR = ["trainer.enable_progress_bar=true", "+callbacks.spy._target_=helpers.bar_spy.BarSpy"]
THREE_STEP_EPOCHS = ["data.batch_size=4", "data.train.samples_per_epoch=12"]
# a logger, and epochs (1 batch of the train and meta loaders) shorter than the logging interval, which
# train() lowers to max_steps in a run shorter than it: Lightning's short-epoch warning fires
LOGGED = [
    "logger=csv",
    "trainer.log_every_n_steps=5000",
    "data.train.samples_per_epoch=4",
    "data.meta.samples_per_epoch=4",
]


@pytest.fixture
def records():
    RECORDS.clear()
    yield RECORDS
    RECORDS.clear()


# ------------------------------------------------------------------------------------- acceptance: the bar
def test_bar_total_is_max_steps_across_epochs_and_validations(tmp_path, records):
    overrides = [*TINY, *BAR, *THREE_STEP_EPOCHS, "trainer.max_steps=7", "trainer.val_check_interval=2"]
    result = train(compose_train(tmp_path, overrides))
    assert result["iterations"] == 7
    batches = [r for r in records if r["hook"] == "batch"]
    assert [r["n"] for r in batches] == [1, 2, 3, 4, 5, 6, 7] == [r["step"] for r in batches]
    assert {r["total"] for r in records} == {7}
    assert [r["epoch"] for r in batches] == [0, 0, 0, 1, 1, 1, 2]  # 3-step epochs: never reset
    assert records[0] == {
        "hook": "start",
        "step": 0,
        "summaries": [],
        "n": 0,
        "total": 7,
        "initial": 0,
        "postfix": None,
    }
    last = batches[-1]["postfix"]
    assert "loss=" in last and "loss_rec=" in last and "val/psnr_y=" in last and "train/" not in last


def test_resumed_run_starts_its_bar_at_the_resumed_step(tmp_path, records, recwarn):
    base = [*TINY, *BAR, *THREE_STEP_EPOCHS, "trainer.val_check_interval=4"]
    train(
        compose_train(tmp_path, [*base, "trainer.max_steps=4", "callbacks.resume_checkpoint.every_n_steps=2"])
    )
    records.clear()
    last = tmp_path / "checkpoints" / "last.ckpt"
    train(compose_train(tmp_path, [*base, "trainer.max_steps=7", f"resume={last}"]))
    assert records[0]["hook"] == "start" and records[0]["n"] == records[0]["initial"] == 4
    assert [r["n"] for r in records[1:]] == [5, 6, 7] and {r["total"] for r in records} == {7}
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]  # its own checkpoints


def test_rich_preset_counts_max_steps_and_summarises_the_model(tmp_path, records):
    collected = _collect_lightning_info()
    try:
        result = train(
            compose_train(tmp_path, [*TINY, *BAR, "callbacks=rich", "trainer.enable_model_summary=true"])
        )
    finally:
        rank_zero_module.log.removeHandler(collected)
    assert result["iterations"] == 4
    assert [(r["n"], r["total"]) for r in records] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert records[0]["summaries"] == ["RichModelSummary"]  # the preset's, not a second default one
    assert not [m for m in collected.messages if "already configured with model summary" in m]


def test_meta_kd_bar_shows_the_main_loss_terms_and_known_noise_is_silent(
    tmp_path, records, tiny_teacher_ckpt, recwarn
):
    collected = _collect_lightning_info()
    try:
        overrides = [
            "experiment=tiny_mkd",
            f"teacher.ckpt_path={tiny_teacher_ckpt}",
            *TEACHER,
            *BAR,
            *LOGGED,
        ]
        train(compose_train(tmp_path, [*overrides, "trainer.max_steps=3", "trainer.val_check_interval=3"]))
    finally:
        rank_zero_module.log.removeHandler(collected)
    postfix = records[-1]["postfix"]
    names = [item.split("=")[0] for item in postfix.split(", ")]
    assert names == [
        "v_num",
        "loss",
        "loss_rec",
        "loss_kd",
        "loss_meta",
    ]  # not loss_kd_<pos>, meta_grad_norm, lr...
    noise = ("in eval mode", "LeafSpec", "smaller than the logging interval")
    assert not [str(w.message) for w in recwarn if any(n in str(w.message) for n in noise)]
    assert not [m for m in collected.messages if "Tip:" in m]
    assert any(m.startswith("GPU available") for m in collected.messages)  # the rest still shows


def test_without_the_filters_that_noise_shows(tmp_path, tiny_teacher_ckpt, recwarn, monkeypatch):
    """The control of the test above: the same run, nothing silenced, shows every one of those messages."""
    import meta_kd_sr.cli.train as train_cli

    monkeypatch.setattr(train_cli, "quiet_known_noise", lambda *args: None)
    log = rank_zero_module.log
    filters = list(log.filters)
    for f in filters:
        log.removeFilter(f)
    collected = _collect_lightning_info()
    try:
        overrides = ["experiment=tiny_mkd", f"teacher.ckpt_path={tiny_teacher_ckpt}", *TEACHER, *LOGGED]
        train(compose_train(tmp_path, [*overrides, "trainer.max_steps=2", "trainer.val_check_interval=2"]))
    finally:
        log.removeHandler(collected)
        for f in filters:
            log.addFilter(f)
    seen = " | ".join(str(w.message) for w in recwarn)
    for noise in ("in eval mode", "LeafSpec", "smaller than the logging interval"):
        assert noise in seen
    assert [m for m in collected.messages if m.startswith("💡 Tip: For seamless cloud logging")]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _collect_lightning_info() -> _Collect:
    """Collect what Lightning's rank_zero_info passes (its logger's filters run before any handler)."""
    handler = _Collect()
    rank_zero_module.log.addHandler(handler)
    return handler


# ------------------------------------------------------------------------------------------ unit checks
def test_step_total_is_max_steps_when_it_alone_bounds_the_run():
    assert step_total(SimpleNamespace(max_steps=7, max_epochs=-1)) == 7
    assert step_total(SimpleNamespace(max_steps=-1, max_epochs=-1)) is None  # no max_steps: count epochs
    assert step_total(SimpleNamespace(max_steps=7, max_epochs=3)) is None  # two limits: Lightning's bar


def test_display_callbacks_follow_the_trainer_flags():
    bar, summary = StepProgressBar(), RichModelSummary()
    assert display_callbacks([bar, summary], {"enable_progress_bar": True}) == [bar, summary]
    assert (
        display_callbacks([bar, summary], {"enable_progress_bar": False, "enable_model_summary": False}) == []
    )
    added = display_callbacks([], {})
    assert len(added) == 1 and type(added[0]) is StepProgressBar  # callbacks=none still counts max_steps
    rich = RichStepProgressBar()
    assert display_callbacks([rich], {}) == [rich]
    assert isinstance(bar, TQDMProgressBar) and isinstance(summary, ModelSummary)


def test_eval_mode_warning_is_silenced_for_the_teacher_count_only():
    teacher = EDSR(scale=4, n_feats=8, n_blocks=2)
    n = len(list(teacher.modules()))
    text = "Found {} module(s) in eval mode at the start of training. This may lead to unexpected behavior"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise(teacher)
        warnings.warn(text.format(n), PossibleUserWarning, stacklevel=1)
        warnings.warn(text.format(n + 1), PossibleUserWarning, stacklevel=1)  # a student module left in eval
        warnings.warn(text.format(n), UserWarning, stacklevel=1)  # another category: not ours to hide
    assert [str(w.message).split()[1] for w in seen] == [str(n + 1), str(n)]
    assert eval_mode_warning(3) == r"Found 3 module\(s\) in eval mode at the start of training\."


def test_lightning_tips_are_dropped_exactly():
    quiet_known_noise()
    collected = _collect_lightning_info()
    try:
        log = rank_zero_module.log
        log.info(
            "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](https://x) ..."
        )
        log.info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](y) .."
        )
        log.info("GPU available: False, used: False")
    finally:
        rank_zero_module.log.removeHandler(collected)
    assert collected.messages == ["GPU available: False, used: False"]


def test_phase_lines_number_phases_and_give_seconds_and_outputs():
    ticks = iter([10.0, 13.6, 20.0, 20.2])
    out = io.StringIO()
    phases = Phases("demo", 4, stream=out, clock=lambda: next(ticks))
    phases.start("training the tiny teacher (5 iterations)")
    assert phases.done("/runs/teacher/teacher.pt") == pytest.approx(3.6)
    phases.skip("scratch: reusing /runs/scratch/student.pt")
    phases.start("scoring")
    phases.done()
    assert out.getvalue().splitlines() == [
        "[demo 1/4] training the tiny teacher (5 iterations) ...",
        "[demo 1/4] done in 4 s: /runs/teacher/teacher.pt",
        "[demo 2/4] scratch: reusing /runs/scratch/student.pt",
        "[demo 3/4] scoring ...",
        "[demo 3/4] done in 0 s",
    ]


def test_format_outputs_aligns_names_and_skips_missing_paths():
    text = format_outputs([("run dir", Path("/r")), ("student", "/r/student.pt"), ("eval", None)])
    assert text == "outputs:\n  run dir  /r\n  student  /r/student.pt"


# ---------------------------------------------------------------- what train and prepare print at the end
def _printed_outputs(stdout: str) -> dict[str, str]:
    """The last ``outputs:`` block of ``stdout`` as ``{name: path}`` (names and paths: 2+ spaces apart)."""
    block = stdout[stdout.rindex("outputs:\n") :].splitlines()[1:]
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in block if line.startswith("  ")]
    return dict(rows)


def test_teacher_run_exports_teacher_pt_and_prints_where_its_outputs_are(tmp_path, capsys):
    result = train(
        compose_train(tmp_path, ["experiment=tiny_teacher", "model.n_feats=16", "model.n_blocks=2"])
    )
    printed = _printed_outputs(capsys.readouterr().out)
    assert result["export"] == str(tmp_path / "teacher.pt") and "student" not in result
    assert not (tmp_path / "student.pt").exists()
    assert json.loads((tmp_path / "eval.json").read_text())["export"] == result["export"]
    assert printed["run dir"] == str(tmp_path)
    assert printed["teacher"] == str(tmp_path / "teacher.pt")
    assert (
        printed["checkpoints"] == f"{tmp_path / 'checkpoints'} (evaluated: {Path(result['checkpoint']).name})"
    )
    assert printed["eval"] == str(tmp_path / "eval.json")
    # the teacher presets read it, and a teacher exported as student.pt by earlier versions still loads
    old = tmp_path / "old" / "student.pt"
    old.parent.mkdir()
    shutil.copy(tmp_path / "teacher.pt", old)
    for path in (tmp_path / "teacher.pt", old):
        assert not load_teacher(EDSR(scale=4, n_feats=16, n_blocks=2), path).training


def test_student_run_keeps_student_pt_and_its_key(tmp_path, capsys):
    result = train(compose_train(tmp_path, TINY))
    printed = _printed_outputs(capsys.readouterr().out)
    assert result["export"] == result["student"] == str(tmp_path / "student.pt")
    assert printed["student"] == str(tmp_path / "student.pt")


def test_export_name_must_be_a_pt_file_name_and_is_refused_before_training(tmp_path):
    with pytest.raises(RunRefused, match=r"export_name='runs/t.pt': expected a file name ending in \.pt"):
        train(compose_train(tmp_path, [*TINY, "export_name=runs/t.pt"]))
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_dir_holding_a_teacher_pt_is_refused_and_overwrite_removes_it(tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"an earlier teacher run")
    with pytest.raises(RunRefused, match=r"already holds a run \(teacher\.pt\)"):
        prepare_run_dir(tmp_path, resume=None, overwrite=False)
    prepare_run_dir(tmp_path, resume=None, overwrite=True)
    assert not (tmp_path / "teacher.pt").exists()
    (tmp_path / "edsr_tiny.pt").write_bytes(b"a run exported under its own name")
    prepare_run_dir(tmp_path, resume=None, overwrite=False)  # another run's name is not this run's output
    with pytest.raises(RunRefused, match=r"already holds a run \(edsr_tiny\.pt\)"):
        prepare_run_dir(tmp_path, resume=None, overwrite=False, export_name="edsr_tiny.pt")
    prepare_run_dir(tmp_path, resume=None, overwrite=True, export_name="edsr_tiny.pt")
    assert not (tmp_path / "edsr_tiny.pt").exists()


def test_prepare_prints_its_lr_folders(tmp_path, capsys, photos_uint8):
    import torch

    hr = tmp_path / "HR"
    hr.mkdir()
    save_png(torch.from_numpy(photos_uint8["coffee"][:32, :40].copy()).permute(2, 0, 1), hr / "coffee.png")
    done = prepare(OmegaConf.create({"hr_dir": str(hr), "out_dir": str(tmp_path / "lr"), "scales": [2, 4]}))
    assert capsys.readouterr().out.splitlines() == [
        "outputs:",
        f"  x2 LR  {done[2]} (1 images)",
        f"  x4 LR  {done[4]} (1 images)",
    ]
    assert done[4] == tmp_path / "lr" / "X4"
