"""The meta-step levers through the CLI: composed from conf/, z exported, a bit-equal resume mid-window."""

from __future__ import annotations

import torch

from helpers.recovery_runs import cli_train, equal_state
from helpers.train_config import compose_train
from meta_kd_sr.cli.train import train

LEVERS = [
    "experiment=tiny_mkd",
    "teacher.net.n_feats=16",
    "teacher.net.n_blocks=2",
    "data=embedded_meta_natural",
    "meta.inner_steps=2",
    "meta.accumulate=2",
    "meta.optimizer=momentum",
    "meta.lr=10.0",
    "meta.control=shuffle",
    "callbacks.resume_checkpoint.every_n_steps=3",
    "trainer.val_check_interval=5",
    "trainer.max_steps=5",
]


def test_levers_run_export_z_and_resume_mid_window_bit_equal(tmp_path, tiny_teacher_ckpt) -> None:
    levers = [*LEVERS, f"teacher.ckpt_path={tiny_teacher_ckpt}"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(compose_train(straight, levers))
    kill = ["+callbacks.kill._target_=recovery_helpers.KillAt", "+callbacks.kill.step=4"]
    proc = cli_train(killed, [*levers, *kill])  # killed after iteration 4; the resume point is iteration 3
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = killed / "checkpoints" / "last.ckpt"
    at_kill = torch.load(last, map_location="cpu", weights_only=True)
    assert at_kill["global_step"] == 3 and at_kill["meta_accumulator"]["count"] == 1  # mid-window
    train(compose_train(killed, [*levers, f"resume={last}"]))

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 5 and a["hyper_parameters"]["meta"]["inner_steps"] == 2
    diff = []
    for key in ("state_dict", "optimizer_states", "meta_accumulator", "meta_signal", "meta_health"):
        diff += equal_state(a[key], b[key], key)
    assert not diff, diff[:5]
    assert a["meta_signal"]["steps"] == 5 and a["optimizer_states"][1]["param_groups"][0]["momentum"] == 0.9
    z_a = torch.load(straight / "meta_signal.pt", weights_only=True)
    z_b = torch.load(killed / "meta_signal.pt", weights_only=True)
    assert torch.equal(z_a["z"], z_b["z"]) and z_a["control"] == "shuffle" and z_a["steps"] == 5
