"""The demo's pipeline with a tiny budget: teacher (cached), scratch and MKD students, one table."""

from __future__ import annotations

import pytest

from meta_kd_sr.assets import shipped_teacher, teacher_manifest
from meta_kd_sr.cli.demo import demo_outputs, format_rows, run_demo


def _phase_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[demo ")]


def test_demo_table_has_every_row_with_a_retrained_teacher(tmp_path, capsys):
    rows = run_demo(tmp_path, steps=2, teacher_steps=3, retrain_teacher=True)
    for name in ("bicubic", "scratch", "MKD", "teacher"):
        assert 5 < rows[name]["psnr_y"] < 60 and 0 < rows[name]["ssim_y"] <= 1
    assert rows["teacher"]["params"] > rows["MKD"]["params"] == rows["scratch"]["params"]
    table = format_rows(rows)
    assert "PSNR_y" in table and "MKD" in table and "bicubic" in table
    teacher = tmp_path / "teacher" / "teacher.pt"
    lines = _phase_lines(capsys.readouterr().out)
    assert lines[0] == "[demo 1/4] training the tiny teacher (3 iterations) ..."
    assert lines[1].startswith("[demo 1/4] done in ") and lines[1].endswith(f" s: {teacher}")
    assert lines[2] == "[demo 2/4] training the scratch student (2 iterations) ..."
    assert lines[3].endswith(f" s: {tmp_path / 'scratch' / 'student.pt'}")
    assert lines[4] == "[demo 3/4] training the meta-KD student (2 iterations, KRNets meta-learned) ..."
    assert lines[5].endswith(f" s: {tmp_path / 'mkd' / 'student.pt'}")
    assert lines[6] == "[demo 4/4] scoring bicubic, scratch, MKD and the teacher on the held-out photos ..."
    assert lines[7].startswith("[demo 4/4] done in ") and len(lines) == 8
    assert not (tmp_path / "teacher" / "student.pt").exists()


def test_demo_uses_the_shipped_teacher_by_default(tmp_path, capsys):
    rows = run_demo(tmp_path, steps=2, teacher_steps=3)
    shipped = shipped_teacher()
    manifest = teacher_manifest()
    assert rows["teacher"]["train_s"] == 0.0 and rows["_setup"]["teacher"] == str(shipped)
    # the manifest's held-out scores are what the demo's scoring gives for the shipped file
    assert rows["teacher"]["psnr_y"] == pytest.approx(manifest["held_out"]["psnr_y"], abs=1e-6)
    assert rows["teacher"]["psnr_y"] > rows["bicubic"]["psnr_y"] + 0.4
    first = _phase_lines(capsys.readouterr().out)[0]
    assert first == f"[demo 1/4] using the shipped tiny teacher {shipped} (--retrain-teacher trains one)"
    assert demo_outputs(tmp_path, str(shipped)).splitlines() == [
        "outputs:",
        f"  table        {tmp_path / 'demo.json'}",
        f"  teacher      {shipped}",
        f"  scratch run  {tmp_path / 'scratch'}",
        f"  MKD run      {tmp_path / 'mkd'}",
    ]
