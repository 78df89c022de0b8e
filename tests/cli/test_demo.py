"""The demo's pipeline with a tiny budget: teacher (cached), scratch and MKD students, one table."""

from __future__ import annotations

from meta_kd_sr.cli.demo import format_rows, run_demo


def test_demo_table_has_every_row_and_reuses_the_teacher(tmp_path):
    rows = run_demo(tmp_path, steps=2, teacher_steps=2)
    for name in ("bicubic", "scratch", "MKD", "teacher"):
        assert 5 < rows[name]["psnr_y"] < 60 and 0 < rows[name]["ssim_y"] <= 1
    assert rows["teacher"]["params"] > rows["MKD"]["params"] == rows["scratch"]["params"]
    table = format_rows(rows)
    assert "PSNR_y" in table and "MKD" in table and "bicubic" in table
    ckpt = (tmp_path / "teacher" / "eval.json").stat().st_mtime
    again = run_demo(tmp_path, steps=2, teacher_steps=2)
    assert (tmp_path / "teacher" / "eval.json").stat().st_mtime == ckpt and again["teacher"]["train_s"] == 0.0
