import csv
import json
import logging
import sys

from helpers.train_config import FAST, compose_train
from meta_kd_sr.cli.train import main, train
from meta_kd_sr.data import EmbeddedPhotos
from meta_kd_sr.training.sanity import below_bicubic, bicubic_psnr


def test_bicubic_reference_and_the_warning():
    psnr, n = bicubic_psnr(EmbeddedPhotos(["chelsea", "coffee"], 4, train=False), 4, 4)
    assert n == 2 and abs(psnr - 29.3835) < 1e-3  # the bicubic row of the demo
    assert below_bicubic(psnr + 0.1, psnr) is None and below_bicubic(None, psnr) is None
    assert below_bicubic(6.1, 29.38).startswith(
        "the final validation PSNR_y 6.10 dB is below bicubic's 29.38 dB"
    )


def test_a_diverged_run_warns_on_the_console_and_in_eval_json(tmp_path, caplog):
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", "optim.optimizer.lr=1", "trainer.max_steps=8"])
    with caplog.at_level(logging.WARNING, logger="meta_kd_sr.cli.train"):
        train(cfg)
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["val"]["psnr_y"] < record["val"]["bicubic_psnr_y"] and record["val"]["n_images"] == 2
    (warning,) = record["warnings"]
    assert "is below bicubic's" in warning and warning in caplog.text


def test_a_smoke_run_shorter_than_log_every_n_steps_logs_its_train_metrics(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=tiny_sr", "logger=csv", "trainer.log_every_n_steps=50"])
    train(cfg)
    rows = list(csv.DictReader(next((tmp_path / "csv").glob("version_*/metrics.csv")).open()))
    assert [r for r in rows if r.get("train/loss")], rows[:3]


def test_train_prints_its_resolved_config_to_the_console_and_its_log(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(
        sys, "argv", ["meta-kd-sr-train", *FAST, "experiment=tiny_sr", f"hydra.run.dir={run}"]
    )
    main()
    out = capsys.readouterr().out
    log = (run / "train.log").read_text()
    for text in (out, log):
        assert "resolved config:" in text and "lq_patch: 8" in text and f"output_dir: {run}" in text
