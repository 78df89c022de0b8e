"""Loggers: the whole config, run names, validation panels, the results table, optional backends, Optuna."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write
from PIL import Image

from helpers.train_config import FAST, compose_train
from meta_kd_sr.cli import config_dir, wandb_view
from meta_kd_sr.cli.loggers import build_loggers, run_config, run_identity
from meta_kd_sr.cli.train import build_module, main, train
from meta_kd_sr.cli.wandb_view import config_values, history_values, wait_for_finished_run
from meta_kd_sr.data import EmbeddedPhotos
from meta_kd_sr.distill import Distiller, KRNetLoss
from meta_kd_sr.evaluation.inference import upscale_bicubic
from meta_kd_sr.evaluation.panels import centre_crop, diverging, hstack, kernel_grid, krnet_kernels
from meta_kd_sr.evaluation.summary import results_rows
from meta_kd_sr.models import EDSR
from meta_kd_sr.models.checkpoint import student_from_checkpoint
from meta_kd_sr.training.recovery import RunRefused

TEACHER = ["teacher.net.n_feats=16", "teacher.net.n_blocks=2"]


def compose_with_hydra(output_dir: Path, overrides: list[str]):
    """The train config as ``meta-kd-sr-train`` sees it: Hydra's runtime (choices, overrides) is set."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*FAST, f"paths.output_dir={output_dir}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def _mkd(ckpt) -> list[str]:
    return ["experiment=tiny_mkd", f"teacher.ckpt_path={ckpt}", *TEACHER]


# ------------------------------------------------------------------------------------------ identity
def test_run_identity_names_groups_and_tags_a_run(tmp_path):
    cfg = compose_with_hydra(
        tmp_path, ["experiment=tiny_kd", "distill=fakd", "seed=3", "teacher.ckpt_path=/t.ckpt"]
    )
    identity = run_identity(cfg, cfg.hydra)
    assert identity.name == "tiny_kd-fakd-s3" and identity.group == "tiny_kd"
    # the FAST overrides are the user's; paths and the teacher file are not tags; seed is in the name
    assert identity.tags[:3] == ["tiny_kd", "fakd", "trainer.accelerator=cpu"]
    assert not [t for t in identity.tags if t.startswith(("paths.", "teacher.ckpt_path", "seed"))]
    with read_write(cfg.hydra):  # the same run as point 7 of a sweep
        cfg.hydra.mode, cfg.hydra.job.num = RunMode.MULTIRUN, 7
        cfg.hydra.sweep.dir = "multirun/2026-12-01/10-00-00"
    identity = run_identity(cfg, cfg.hydra)
    assert identity.name == "tiny_kd-fakd-s3-j7" and identity.group == "tiny_kd:2026-12-01/10-00-00"


def test_run_identity_without_hydra_reads_the_config(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=tiny_kd", "distill=fakd", "teacher.ckpt_path=/t.ckpt"])
    assert run_identity(cfg).name == "run-fakd-s0"
    assert run_identity(compose_train(tmp_path, ["distill=mkd"])).method == "krnet"
    assert run_identity(compose_train(tmp_path, ["distill=output"])).method == "output"
    long = "x" * 100  # wandb refuses tags over 64 characters
    cfg = compose_with_hydra(tmp_path, [f"+note={long}"])
    assert max(len(t) for t in run_identity(cfg, cfg.hydra).tags) == 64


def test_wandb_name_group_tags_from_the_run_or_from_the_config(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["experiment=tiny_sr", "logger=[csv,wandb]", "seed=2"])
    csv_logger, wandb_logger = build_loggers(cfg)
    assert type(csv_logger).__name__ == "CSVLogger"
    init = wandb_logger._wandb_init  # what wandb.init will get
    assert (init["name"], init["group"]) == ("tiny_sr-none-s2", "tiny_sr")
    assert init["tags"][:2] == ["tiny_sr", "none"] and "logger=[csv,wandb]" in init["tags"]
    assert os.environ["WANDB_DIR"] == str(tmp_path)  # where processes of a spawn launcher write media
    chosen = ["logger.wandb.name=mine", "logger.wandb.group=g", "logger.wandb.tags=[a,b]"]
    cfg = compose_with_hydra(tmp_path, ["experiment=tiny_sr", "logger=wandb", *chosen])
    init = build_loggers(cfg)[0]._wandb_init
    assert (init["name"], init["group"], init["tags"]) == ("mine", "g", ["a", "b"])


# ------------------------------------------------------------------------------------------- config
def test_run_config_is_whole_resolved_and_meta_says_what_runs(tmp_path, tiny_teacher_ckpt):
    teacher = [f"teacher.ckpt_path={tiny_teacher_ckpt}", *TEACHER]
    for method, meta_on in (("fakd", False), ("mkd", True), ("mkd_frozen", False)):
        data = ["data=embedded_meta"] if method.startswith("mkd") else []
        cfg = compose_with_hydra(tmp_path, ["experiment=tiny_kd", f"distill={method}", *teacher, *data])
        module = build_module(cfg)
        assert cfg.meta.enabled is True  # what conf/meta says; not what runs
        assert module.meta_enabled is meta_on and module.hparams["meta"]["enabled"] is meta_on
        config = run_config(cfg, module.meta_enabled)
        assert config["meta"]["enabled"] is meta_on
    # method, learning rate, data, seed, steps: all there, interpolations resolved
    assert config["run"]["method"] == "mkd_frozen" and config["run"]["experiment"] == "tiny_kd"
    assert config["optim"]["optimizer"]["lr"] == 1e-3 and config["seed"] == 0
    assert config["trainer"]["max_steps"] == 4 and config["data"]["train"]["patch_size"] == 32  # ${mul:8,4}
    assert config["data"]["meta"]["names"] == ["immunohistochemistry"] and "hydra" not in config
    assert config["teacher"]["ckpt_path"] == str(tiny_teacher_ckpt)


# -------------------------------------------------------------------------------- optional backends
@pytest.mark.parametrize(
    ("logger", "modules", "extra"),
    [("wandb", ["wandb"], "wandb"), ("tensorboard", ["tensorboard", "tensorboardX"], "tensorboard")],
)
def test_a_missing_backend_names_the_pip_extra(tmp_path, monkeypatch, logger, modules, extra):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", f"logger=[csv,{logger}]"])
    hint = rf"pip install {modules[0]} \(in a checkout: pip install '\.\[{extra}\]'\)"
    message = rf"logger '{logger}' needs the {modules[0]} package.*{hint}"
    with pytest.raises(RunRefused, match=message):
        build_loggers(cfg)
    with pytest.raises(RunRefused, match=message):  # before any training
        train(cfg)
    assert not (tmp_path / "csv").exists() and not (tmp_path / "eval.json").exists()


def test_nothing_in_the_library_imports_wandb_when_imported(tmp_path):
    script = f"""
import importlib, pkgutil, sys
import meta_kd_sr
names = [m.name for m in pkgutil.walk_packages(meta_kd_sr.__path__, "meta_kd_sr.")]
for name in names:
    importlib.import_module(name)
assert "wandb" not in sys.modules, [n for n in sys.modules if n.startswith("wandb")]
sys.modules["wandb"] = None  # now as if not installed
from hydra import compose, initialize_config_dir
from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.loggers import build_loggers
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("train", overrides=["paths.output_dir={tmp_path}", "logger=csv"])
    assert [type(lg).__name__ for lg in build_loggers(cfg)] == ["CSVLogger"]
    cfg = compose("train", overrides=["paths.output_dir={tmp_path}", "logger=wandb"])
try:
    build_loggers(cfg)
except ValueError as err:
    print(err)
print(len(names), "modules")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pip install wandb (in a checkout: pip install '.[wandb]')" in proc.stdout
    assert int(proc.stdout.split()[-2]) > 30


# ----------------------------------------------------------------------------------------- panels
def test_panel_helpers_known_values():
    assert torch.equal(
        diverging(torch.tensor([-1.0, 0.0, 1.0])).T, torch.tensor([[0, 0, 1], [1, 1, 1], [1, 0, 0.0]])
    )
    lq, gt = torch.arange(3 * 6 * 8.0).view(3, 6, 8), torch.arange(3 * 12 * 16.0).view(3, 12, 16)
    lq_c, gt_c = centre_crop(lq, gt, 4, 2)
    assert torch.equal(lq_c, lq[:, 1:5, 2:6]) and torch.equal(gt_c, gt[:, 2:10, 4:12])
    assert centre_crop(lq, gt, 100, 2)[0].shape == (3, 6, 8)  # a crop larger than the image: the image
    row = hstack([torch.zeros(3, 2, 2), torch.zeros(3, 2, 3)], gap=2)
    assert row.shape == (3, 2, 7) and row[:, :, 2:4].eq(1).all() and row[:, :, 4:].eq(0).all()
    k = torch.zeros(2, 3, 3)
    k[0, 0, 0], k[1, 2, 2] = 0.5, -0.25
    grid = kernel_grid({"f1": k, "f2": k}, cell=2, gap=1)
    assert grid.shape == (3, 2 * 6 + 1, 2 * 6 + 1)
    assert torch.equal(grid[:, 0, 0], torch.tensor([1.0, 0, 0]))  # the largest value: pure red
    assert torch.equal(grid[:, 5, 12], torch.tensor([0.5, 0.5, 1.0]))  # -0.25 / 0.5: half blue
    assert grid[:, 6, :].eq(1).all()  # the gap between the rows


@pytest.mark.parametrize("spatial", [False, True])
def test_krnet_kernels_are_the_kernels_the_krnets_make(spatial):
    torch.manual_seed(0)
    student, teacher = EDSR(4, n_feats=8, n_blocks=2), EDSR(4, n_feats=16, n_blocks=2)
    distiller = Distiller(
        loss=partial(KRNetLoss, n_kernels=4, hidden=8, spatial=spatial),
        positions=["f1", "f2", "f3"],
        student_channels=dict(student.feature_channels),
        teacher_channels=dict(teacher.feature_channels),
        feature_scale=1 / 255,
    )
    module = SimpleNamespace(student=student, teacher=teacher, distiller=distiller)
    lq = torch.rand(1, 3, 12, 10)
    shown = krnet_kernels(module, lq)
    with torch.no_grad():  # the reference: each KRNet on the adapted, scaled features, by hand
        _, fs = student(lq, return_feats=True)
        _, ft = teacher(lq, return_feats=True)
        for pos in ("f1", "f2", "f3"):
            raw, f_t = fs[pos] * (1 / 255), ft[pos] * (1 / 255)
            k = distiller.kd_losses[pos].kernels(distiller.adapters[pos](raw), f_t, raw)
            k = k[0, :, 6, 5] if spatial else k[0]  # per-pixel kernels: the centre pixel's
            assert torch.equal(shown[pos], k) and shown[pos].shape == (4, 3, 3)
            assert shown[pos].sum(dim=(-2, -1)).abs().max() < 1e-6  # zero-mean: texture filters
    no_krnet = SimpleNamespace(student=student, teacher=teacher, distiller=Distiller())
    assert krnet_kernels(no_krnet, lq) == {}


def _bench(tmp_path, photos_uint8) -> Path:
    bench = tmp_path / "bench" / "Tiny" / "HR"
    bench.mkdir(parents=True)
    Image.fromarray(photos_uint8["coffee"][:48, :64]).save(bench / "coffee.png")
    return bench


def test_offline_wandb_tensorboard_csv_hold_config_panels_and_results(
    tmp_path, tiny_teacher_ckpt, photos_uint8, monkeypatch, capsys
):
    """Acceptance: one meta-KD run with three loggers; each is read back from its own files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    out = tmp_path / "run"
    bench = _bench(tmp_path, photos_uint8)
    cfg = compose_with_hydra(
        out, [*_mkd(tiny_teacher_ckpt), "logger=[csv,tensorboard,wandb]", f"evaluation.hr_dirs=[{bench}]"]
    )
    result = train(cfg)
    saved = json.loads((out / "eval.json").read_text())

    # the expected panel: centre 32 x 32 LR crop of the first validation photo, x4
    item = EmbeddedPhotos(["chelsea", "coffee"], 4, train=False)[0]
    h, w = item["lq"].shape[-2:]
    top, left = (h - 32) // 2, (w - 32) // 2
    lq = item["lq"][:, top : top + 32, left : left + 32]
    gt = item["gt"][:, 4 * top : 4 * top + 128, 4 * left : 4 * left + 128]
    student, _ = student_from_checkpoint(saved["student"])  # = the weights of the only validation
    with torch.no_grad():
        sr = student(lq[None])[0]

    def u8(x):
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    # ---- wandb, from the offline run's own files
    run_dir = next((out / "wandb").glob("offline-run-*"))
    records = wait_for_finished_run(next(run_dir.glob("run-*.wandb")))
    capsys.readouterr()
    wandb_view.main([str(out)])  # the shipped viewer: python -m meta_kd_sr.cli.wandb_view <run dir>
    shown = capsys.readouterr().out
    assert "config:" in shown and "\n  val/psnr_y: " in shown and "\n  seed: 0" in shown
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.display_name, run.run_group) == ("tiny_mkd-mkd-s0", "tiny_mkd")
    assert {"tiny_mkd", "mkd", "logger=[csv,tensorboard,wandb]"} <= set(run.tags)
    config = config_values(records)
    assert (
        config["optim"]["optimizer"]["lr"] == 1e-3
        and config["seed"] == 0
        and config["meta"]["enabled"] is True
    )
    assert config["trainer"]["max_steps"] == 4 and config["distill"]["loss"]["_target_"].endswith("KRNetLoss")
    assert config["run"]["method"] == "mkd" and "student_config" in config  # the module's own too
    panels = history_values(records, "val/panels")
    assert len(panels) == 1  # one validation in fit; none in the evaluation after it
    assert panels[0]["captions"] == ["chelsea: LQ | bicubic | SR | teacher | GT"]
    panel = np.asarray(Image.open(run_dir / "files" / panels[0]["filenames"][0]).convert("RGB"))
    assert panel.shape == (128, 5 * 128 + 4 * 2, 3)
    assert np.array_equal(panel[:, -128:], u8(gt))  # GT: exact (PNG is lossless)
    assert np.array_equal(panel[:, :128], u8(lq.repeat_interleave(4, -1).repeat_interleave(4, -2)))
    assert np.array_equal(panel[:, 130:258], u8(upscale_bicubic(lq, 4)))
    assert np.abs(panel[:, 260:388].astype(int) - u8(sr).astype(int)).max() <= 1
    kernels = history_values(records, "val/kernels")
    grid = np.asarray(Image.open(run_dir / "files" / kernels[0]["filenames"][0]).convert("RGB"))
    assert grid.shape == (3 * 27 - 3, 8 * 27 - 3, 3)  # 3 positions x 8 kernels of 3 x 3 taps, 8 px each
    table = history_values(records, "results")
    assert len(table) == 1 and table[0]["_type"] == "table-file"
    content = json.loads((run_dir / "files" / table[0]["path"]).read_text())
    assert content["columns"] == ["set", "n_images", "psnr_y", "ssim_y"]
    rows = {row[0]: row for row in content["data"]}
    assert rows["val"][2] == pytest.approx(saved["val"]["psnr_y"]) and rows["val"][3] == pytest.approx(
        saved["val"]["ssim_y"]
    )
    assert rows["Tiny"][1:] == pytest.approx(
        [1, saved["benchmarks"]["Tiny"]["psnr_y"], saved["benchmarks"]["Tiny"]["ssim_y"]]
    )
    assert rows["val_teacher"][2] == pytest.approx(result["train_metrics"]["val/teacher_psnr_y"])
    assert rows["val"][1] == rows["val_teacher"][1] == saved["val"]["n_images"] == 2

    # ---- tensorboard, from its event files
    events = EventAccumulator(
        str(out / "tensorboard" / "version_0"), size_guidance={"images": 0, "tensors": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert {"val/panels/chelsea", "val/kernels/chelsea"} <= set(tags["images"])
    tb_panel = np.asarray(
        Image.open(__import__("io").BytesIO(events.Images("val/panels/chelsea")[0].encoded_image_string))
    )
    assert np.array_equal(tb_panel, panel)
    text = events.Tensors("results/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| val | 2 | {saved['val']['psnr_y']:.4f} | {saved['val']['ssim_y']:.4f} |" in text
    start = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert (
        hparams["optim/optimizer/lr"].number_value == pytest.approx(1e-3)
        and hparams["meta/enabled"].number_value == 1
    )
    assert events.Scalars("results/val/psnr_y")[0].value == pytest.approx(saved["val"]["psnr_y"], rel=1e-6)

    # ---- csv: the full config next to the metrics, no images
    hparams_yaml = yaml.safe_load((out / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams_yaml["optim"]["optimizer"]["lr"] == 1e-3 and hparams_yaml["meta"]["enabled"] is True
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()
    assert results_rows(saved)[0][0] == "val"


# ------------------------------------------------------------------------------------- sweeps
def test_main_returns_the_validation_psnr(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["experiment=tiny_sr", "logger=csv"])
    value = main(cfg)
    saved = json.loads((tmp_path / "eval.json").read_text())
    rows = list(csv.DictReader(next((tmp_path / "csv").glob("version_*/metrics.csv")).open()))
    logged = [float(r["val/psnr_y"]) for r in rows if r.get("val/psnr_y")]
    assert isinstance(value, float) and value == saved["val"]["psnr_y"] == pytest.approx(logged[-1])


def test_optuna_preset_maximises_what_main_returns(tmp_path, tiny_teacher_ckpt, monkeypatch):
    """Two tiny trials of ``hparams_search=mkd_optuna`` through the real command line (in this process)."""
    sweep = tmp_path / "sweep"
    args = [*FAST, *_mkd(tiny_teacher_ckpt), "hparams_search=mkd_optuna", "hydra.sweeper.n_trials=2"]
    args += [
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "meta.alpha=0.05",  # a value fixes a searched parameter, a range replaces its range
        "distill.kd_weight=tag(log, interval(0.5, 2.0))",
    ]
    monkeypatch.setattr(sys, "argv", ["meta-kd-sr-train", *args])
    main()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for job in ("0", "1"):
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        )
        assert 1e-5 <= float(overrides["meta.lr"]) <= 1e-3 and overrides["meta.alpha"] == "0.05"
        assert 0.5 <= float(overrides["distill.kd_weight"]) <= 2.0
        trials[job] = (json.loads((sweep / job / "eval.json").read_text())["val"]["psnr_y"], overrides)
    value, overrides = max(trials.values(), key=lambda t: t[0])
    assert best["best_value"] == value  # what main returned = eval.json's val PSNR_y
    assert best["best_params"]["meta.lr"] == pytest.approx(float(overrides["meta.lr"]))
    from meta_kd_sr.cli.report import report

    table = report([sweep], tmp_path / "report", chart=False)[1].read_text()
    assert len(table.strip().splitlines()) == 3  # header + one row per trial (different settings)
