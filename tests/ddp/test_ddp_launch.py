"""Launching DDP runs: the console script under Lightning's launcher, ddp_spawn sweeps, torchrun, SLURM.

Each run is a subprocess on two CPU processes (gloo); a run must leave exactly one run dir with one set of
checkpoints, whoever started the ranks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy

from helpers.ddp_helpers import VENV_BIN, load_ranks, run_checked, tiny_overrides
from meta_kd_sr.cli import config_dir

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(VENV_BIN / "meta-kd-sr-train")
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2"]
FAKE_SRUN = """#!/usr/bin/env bash
# srun on one machine: SLURM_NTASKS copies of the command with SLURM's task variables.
while [[ "${1:-}" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def assert_one_run(run_dir: Path, log_versions: int = 1) -> None:
    """One Hydra run: its config once, one best + one last checkpoint, rank 0's logs and exports."""
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and ckpts[0] == "last.ckpt" and ckpts[1].startswith("step"), ckpts
    assert len(list((run_dir / "csv").iterdir())) == log_versions
    assert (run_dir / "eval.json").is_file() and (run_dir / "student.pt").is_file()


def dump_overrides(folder: Path) -> list[str]:
    return ["+callbacks.dump._target_=dump.StateDump", f"+callbacks.dump.path={folder}"]


def assert_ranks_agree(folder: Path, steps: int = 2) -> None:
    rank0, rank1 = load_ranks(folder)
    assert (rank0["world_size"], rank0["global_step"], rank1["global_step"]) == (2, steps, steps)
    for part in ("student", "krnets"):
        for key, value in rank0[part].items():
            assert torch.equal(value, rank1[part][key]), f"ranks differ in {part} {key}"


def test_ddp_presets_and_slurm_launcher_compose():
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        spawn = compose("train", overrides=["trainer=ddp_spawn"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs == {"find_unused_parameters": False}
    assert strategy._start_method == "popen"
    assert instantiate(spawn.trainer.strategy)._start_method == "spawn"
    assert cfg.trainer.use_distributed_sampler is False and cfg.data.batch_size_is_global is True


def test_console_script_ddp_writes_one_run_dir(ddp_assets, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [TRAIN, *tiny_overrides(ddp_assets), "distill.loss.hidden=8", "trainer=ddp", "trainer.devices=2"]
    run_checked([*cmd, *STEPS, f"hydra.run.dir={run_dir}", *dump_overrides(tmp_path / "dump")], cwd=tmp_path)
    assert_one_run(run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "run"]  # nothing under ./outputs
    # Lightning re-ran the command for rank 1 into the same dir, without a second .hydra/
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert_ranks_agree(tmp_path / "dump")


@pytest.mark.slow
def test_console_script_ddp_default_run_dir_is_shared_by_the_ranks(ddp_assets, tmp_path):
    cmd = [TRAIN, *tiny_overrides(ddp_assets), "distill=fakd", "trainer=ddp", "trainer.devices=2", *STEPS]
    run_checked(cmd, cwd=tmp_path)
    runs = [p for p in (tmp_path / "outputs" / "train").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    assert_one_run(runs[0])


@pytest.mark.slow
def test_ddp_spawn_runs_a_local_multirun(ddp_assets, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [TRAIN, "-m", *tiny_overrides(ddp_assets), "trainer=ddp_spawn", "trainer.devices=2", *STEPS]
    cmd += ["distill=fakd,output", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"]
    run_checked(cmd, cwd=tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for point in ("0", "1"):
        # the evaluation after fit is a second spawn, whose CSVLogger picks the next version and leaves the
        # training log (here: the teacher's PSNR logged at fit start) whole
        assert_one_run(sweep / point, log_versions=2)
        fit_log = (sweep / point / "csv" / "version_0" / "metrics.csv").read_text()
        assert "val/teacher_psnr_y" in fit_log.splitlines()[0]
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_torchrun_with_explicit_run_dir(ddp_assets, tmp_path):
    run_dir = tmp_path / "run"
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python"]
    cmd = [*torchrun, str(REPO / "scripts" / "rank_exec.sh"), TRAIN, *tiny_overrides(ddp_assets)]
    cmd += ["distill.loss.hidden=8", "trainer=ddp", "trainer.devices=2", *STEPS, f"hydra.run.dir={run_dir}"]
    run_checked([*cmd, *dump_overrides(tmp_path / "dump")], cwd=tmp_path)
    assert_one_run(run_dir)
    assert (run_dir / "train.log").is_file() and (run_dir / "train_rank1.log").is_file()
    assert_ranks_agree(tmp_path / "dump")


@pytest.mark.slow
def test_sbatch_script_under_a_stand_in_srun(ddp_assets, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
    }
    slurm |= {"SLURM_JOB_ID": str(4000 + os.getpid() % 1000), "SLURM_JOB_NAME": "meta-kd-sr"}
    slurm |= {"SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(REPO)}
    env = {**slurm, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TRAIN": TRAIN}
    env["RUN_DIR"] = str(tmp_path / "run")
    cmd = [
        "bash",
        str(REPO / "scripts" / "slurm_train.sh"),
        *tiny_overrides(ddp_assets),
        "distill.loss.hidden=8",
    ]
    run_checked([*cmd, *STEPS, *dump_overrides(tmp_path / "dump")], cwd=tmp_path, env=env)
    assert_one_run(tmp_path / "run")
    assert (tmp_path / "run" / "train_rank1.log").is_file()
    assert_ranks_agree(tmp_path / "dump")


def test_sbatch_script_parses():
    run_checked(["bash", "-n", str(REPO / "scripts" / "slurm_train.sh")], cwd=REPO)
    run_checked(["bash", "-n", str(REPO / "scripts" / "rank_exec.sh")], cwd=REPO)
