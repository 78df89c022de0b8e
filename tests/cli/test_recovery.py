"""Failure and recovery as users meet them: kills, resume, NaN, unwritable dirs, reused run dirs, configs."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.recovery_runs import cli_train, equal_state
from helpers.train_config import compose_train
from meta_kd_sr.cli.train import train
from meta_kd_sr.runtime import finite
from meta_kd_sr.runtime.atomic import remove_stale_temporaries
from meta_kd_sr.training import recovery
from meta_kd_sr.training.module import SRModule
from meta_kd_sr.training.recovery import RunRefused

HERE = Path(__file__).parent
TEACHER = ["teacher.net.n_feats=16", "teacher.net.n_blocks=2"]
# 64 items / batch 4 = 16 iterations an epoch; a resume point every 5 and validation at 12 and 24
RESUMABLE = [
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "callbacks.resume_checkpoint.every_n_steps=5",
]
EPOCH, EVERY, VAL = 16, 5, 12


def _overrides(experiment: str, teacher_ckpt: Path) -> list[str]:
    if experiment == "tiny_sr":
        return ["experiment=tiny_sr", *RESUMABLE]
    return ["experiment=tiny_mkd", f"teacher.ckpt_path={teacher_ckpt}", *TEACHER, *RESUMABLE]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_teacher_ckpt):
    """The final ``last.ckpt`` of the 24-iteration run that never stopped, per experiment (trained once)."""
    runs: dict[str, dict] = {}

    def run(experiment: str) -> dict:
        if experiment not in runs:
            out = tmp_path_factory.mktemp(f"straight_{experiment}")
            train(compose_train(out, _overrides(experiment, tiny_teacher_ckpt)))
            last = out / "checkpoints" / "last.ckpt"
            runs[experiment] = torch.load(last, map_location="cpu", weights_only=True)
        return runs[experiment]

    return run


def _assert_same_run(straight: dict, resumed: dict, experiment: str, context: str) -> None:
    assert straight["global_step"] == resumed["global_step"] == 24, context
    keys = set(straight["state_dict"])
    if experiment == "tiny_mkd":  # the KRNets and both optimizers are in it
        assert (
            any(k.startswith("distiller.kd_losses.") for k in keys) and len(straight["optimizer_states"]) == 2
        )
    diff = equal_state(straight["state_dict"], resumed["state_dict"], "state_dict")
    diff += equal_state(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    diff += equal_state(straight["lr_schedulers"], resumed["lr_schedulers"], "lr_schedulers")
    assert not diff, f"{context}: differs in {diff[:5]}"


@pytest.mark.parametrize("experiment", ["tiny_sr", "tiny_mkd"])
def test_sigkill_mid_epoch_then_resume_is_bit_equal(tmp_path, tiny_teacher_ckpt, straight_run, experiment):
    overrides = _overrides(experiment, tiny_teacher_ckpt)
    # a random iteration (not the tests' seeded one) that is neither a resume point nor an epoch end
    kill = random.SystemRandom().choice([i for i in range(EVERY + 1, 24) if i % EVERY and i % EPOCH])
    killed = cli_train(
        tmp_path / "killed",
        [*overrides, "+callbacks.kill._target_=recovery_helpers.KillAt", f"+callbacks.kill.step={kill}"],
    )
    assert killed.returncode == -9, f"killed at {kill}: " + killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    # the newest of the resume points (every 5) and the validation at 12 before the kill
    assert at == max(kill // EVERY * EVERY, VAL if kill > VAL else 0), f"killed at {kill}, resumed from {at}"
    assert at % EPOCH, f"resume point {at} is not mid-epoch"
    train(compose_train(tmp_path / "killed", [*overrides, f"resume={last}"]))
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    _assert_same_run(straight_run(experiment), resumed, experiment, f"killed at {kill}, resumed from {at}")


@pytest.mark.parametrize("experiment", ["tiny_sr", "tiny_mkd"])
def test_finished_run_extended_with_more_steps_is_bit_equal(
    tmp_path, tiny_teacher_ckpt, straight_run, experiment
):
    """A run that ``max_steps`` ended mid-epoch, resumed with a larger ``max_steps``, continues that epoch.

    11 is neither a resume point (every 5) nor a validation (12) nor an epoch end (16): the file resumed
    from is the one ``ModelCheckpoint`` writes at train end, after Lightning closed the cut epoch.
    """
    overrides = _overrides(experiment, tiny_teacher_ckpt)
    run = tmp_path / "extended"
    train(
        compose_train(run, [o if o != "trainer.max_steps=24" else "trainer.max_steps=11" for o in overrides])
    )
    last = run / "checkpoints" / "last.ckpt"
    stopped = torch.load(last, map_location="cpu", weights_only=True)
    assert (stopped["global_step"], stopped["epoch"]) == (11, 0)
    train(compose_train(run, [*overrides, f"resume={last}"]))
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    _assert_same_run(
        straight_run(experiment), resumed, experiment, "stopped at 11 by max_steps, extended to 24"
    )


def _checkpoint(ready: int, completed: int, position: dict | None) -> dict:
    counts = {"ready": ready, "started": ready, "processed": completed, "completed": completed}
    fit_loop = {
        "epoch_progress": {"current": dict(counts), "total": dict(counts)},
        "state_dict": {"combined_loader": [position] if position else []},
    }
    return {"epoch": completed, "loops": {"fit_loop": fit_loop}}


def _position(epoch: int, batches: int) -> dict:
    return {"epoch": epoch, "batches": batches, "batch_size": 4, "items_per_rank": 64}  # 16 batches a pass


@pytest.mark.parametrize(
    ("checkpoint", "reopened"),
    [
        (_checkpoint(3, 3, _position(2, 11)), True),  # max_steps cut epoch 2 after 11 of 16 batches
        (_checkpoint(3, 3, _position(2, 16)), False),  # epoch 2 ran to its end
        (_checkpoint(3, 2, _position(2, 11)), False),  # a mid-epoch save: already open
        (_checkpoint(3, 3, _position(1, 11)), False),  # the position belongs to another epoch
        (_checkpoint(3, 3, None), False),  # no resumable loader
    ],
    ids=["cut", "full_pass", "open", "other_epoch", "no_loader"],
)
def test_keep_cut_epoch_open(checkpoint, reopened):
    before = json.loads(json.dumps(checkpoint))
    recovery.keep_cut_epoch_open(checkpoint)
    if not reopened:
        assert checkpoint == before
        return
    for counts in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
        assert counts == {"ready": 3, "started": 3, "processed": 2, "completed": 2}
    assert checkpoint["epoch"] == 2


def test_nan_run_exits_nonzero_with_nothing_non_finite_on_disk(tmp_path):
    out = tmp_path / "run"
    proc = cli_train(
        out,
        [
            "experiment=tiny_sr",
            "optim.optimizer.lr=1e6",
            "trainer.max_steps=8",
            "callbacks.resume_checkpoint.every_n_steps=2",
        ],
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(
        r"meta-kd-sr-train: training stopped: train/loss\S* is (nan|inf) at iteration \d+", last
    ), last
    for path in [*out.rglob("*.ckpt"), *out.rglob("*.pt")]:
        assert finite.first_nonfinite_name(torch.load(path, map_location="cpu", weights_only=True)) is None, (
            path
        )
    if (out / "eval.json").exists():
        json.loads(
            (out / "eval.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in eval.json")
        )


def test_unwritable_checkpoint_dir_fails_before_the_first_iteration(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the checkpoint folder's parent should be")
    monkeypatch.setattr(SRModule, "training_step", _no_training)
    overrides = ["experiment=tiny_sr", f"callbacks.model_checkpoint.dirpath={blocker / 'checkpoints'}"]
    with pytest.raises(RunRefused, match=r"not_a_dir/checkpoints.* is not writable"):
        train(compose_train(tmp_path / "run", overrides))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_dir_fails_before_the_first_iteration(tmp_path):
    ckpts = tmp_path / "ro"
    ckpts.mkdir()
    ckpts.chmod(0o500)
    with pytest.raises(RunRefused, match="is not writable"):
        train(
            compose_train(
                tmp_path / "run", ["experiment=tiny_sr", f"callbacks.model_checkpoint.dirpath={ckpts}"]
            )
        )


def test_first_failed_save_stops_the_run(tmp_path, monkeypatch):
    def full_disk(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recovery, "atomic_save", full_disk)
    overrides = ["experiment=tiny_sr", "callbacks.resume_checkpoint.every_n_steps=2", "trainer.max_steps=6"]
    with pytest.raises(OSError, match="No space left"):
        train(compose_train(tmp_path, overrides))
    assert not (tmp_path / "eval.json").exists()


def test_kill_during_a_save_across_filesystems_leaves_a_loadable_last_ckpt(tmp_path):
    train(compose_train(tmp_path / "run", ["experiment=tiny_sr"]))
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    target = tmp_path / "elsewhere" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    if Path("/dev/shm").is_dir():  # $TMPDIR on another filesystem, as on the clusters where this was seen
        env["TMPDIR"] = "/dev/shm"
    proc = subprocess.run(
        [sys.executable, str(HERE / "recovery_helpers.py"), str(good), str(target)], env=env
    )
    assert proc.returncode == -9
    saved = torch.load(target, map_location="cpu", weights_only=True)
    assert not equal_state(saved["state_dict"], torch.load(good, weights_only=True)["state_dict"])
    orphans = list(target.parent.glob(".last.ckpt.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0  # the killed write, beside its target
    assert remove_stale_temporaries(target.parent) == orphans  # its process is gone
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_atomic_save_follows_the_umask_and_leaves_no_temporary(tmp_path):
    path = recovery.atomic_save({"w": torch.ones(2)}, tmp_path / "a" / "x.pt")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]


def test_checkpoint_io_refuses_non_finite_tensors(tmp_path):
    io = recovery.AtomicCheckpointIO()
    with pytest.raises(FloatingPointError, match=r"state_dict.student.w holds NaN/inf"):
        io.save_checkpoint(
            {"state_dict": {"student.w": torch.tensor([1.0, float("nan")])}}, tmp_path / "a.ckpt"
        )
    bad_adam = {
        "state_dict": {},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}],
    }
    with pytest.raises(FloatingPointError, match="optimizer_states"):
        io.save_checkpoint(bad_adam, tmp_path / "a.ckpt")
    assert not list(tmp_path.iterdir())


def test_reused_run_dir_is_refused_unless_resumed_or_overwritten(tmp_path):
    train(compose_train(tmp_path, ["experiment=tiny_sr"]))
    first = json.loads((tmp_path / "eval.json").read_text())
    with pytest.raises(
        RunRefused, match=r"already holds a run \(checkpoints, student.pt, eval.json\).*overwrite=true"
    ):
        train(compose_train(tmp_path, ["experiment=tiny_sr"]))
    assert json.loads((tmp_path / "eval.json").read_text()) == first
    train(compose_train(tmp_path, ["experiment=tiny_sr", "overwrite=true", "seed=1"]))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if "-v1" in n], names
    assert json.loads((tmp_path / "eval.json").read_text())["val"] != first["val"]


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "eval.json").write_text("{}")
    proc = cli_train(tmp_path, ["experiment=tiny_sr"])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("meta-kd-sr-train: error: run dir"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    train(compose_train(out, ["experiment=tiny_sr"]))
    return out


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (
            lambda d, run: d.joinpath("notes.txt").write_text("not a checkpoint") and d / "notes.txt",
            [],
            "is not a readable training checkpoint",
        ),
        (
            lambda d, run: run / "student.pt",
            [],
            r"is an exported network \(weights only\), not a training checkpoint",
        ),
        (
            lambda d, run: run / "checkpoints" / "last.ckpt",
            ["model.n_feats=12"],
            "trained the student .* but this run builds",
        ),
        (lambda d, run: d / "missing.ckpt", [], "no such file"),
    ],
    ids=["text_file", "exported_student", "other_architecture", "missing"],
)
def test_resume_errors_are_one_clear_line(tmp_path, finished_run, make, extra, message):
    path = make(tmp_path, finished_run)
    with pytest.raises(RunRefused, match=message) as err:
        train(compose_train(tmp_path / "run", ["experiment=tiny_sr", f"resume={path}", *extra]))
    assert "\n" not in str(err.value)


def test_resume_refuses_another_teacher_or_method(tmp_path, tiny_teacher_ckpt):
    overrides = ["experiment=tiny_kd", f"teacher.ckpt_path={tiny_teacher_ckpt}", *TEACHER, "distill=fitnet"]
    train(compose_train(tmp_path / "kd", overrides))
    last = tmp_path / "kd" / "checkpoints" / "last.ckpt"
    other = tmp_path / "teacher.ckpt"
    state = torch.load(tiny_teacher_ckpt, map_location="cpu", weights_only=True)
    state["state_dict"] = {
        k: v + 1e-3 if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, other)
    with pytest.raises(RunRefused, match="distilled from another teacher"):
        train(compose_train(tmp_path / "a", [*overrides, f"teacher.ckpt_path={other}", f"resume={last}"]))
    with pytest.raises(RunRefused, match=r"does not fit this run .*resume with the distillation"):
        train(compose_train(tmp_path / "b", [*overrides[:-1], "distill=mkd_frozen", f"resume={last}"]))


def _no_training(self, *args):
    raise AssertionError("training started")


def test_mkd_without_a_meta_split_is_refused_before_training(tmp_path, tiny_teacher_ckpt, monkeypatch):
    monkeypatch.setattr(SRModule, "training_step", _no_training)
    overrides = ["experiment=tiny_kd", "distill=mkd", f"teacher.ckpt_path={tiny_teacher_ckpt}", *TEACHER]
    with pytest.raises(RunRefused, match="needs a meta split .* experiment=tiny_mkd, or data=embedded_meta"):
        train(compose_train(tmp_path, overrides))
    monkeypatch.undo()
    # frozen KRNets need none
    train(compose_train(tmp_path / "frozen", [*overrides[:1], "distill=mkd_frozen", *overrides[2:]]))
