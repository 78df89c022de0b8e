"""The demo's pipeline with a tiny budget: teacher (cached), scratch and MKD students, one table."""

from __future__ import annotations

import json
import shutil

from meta_kd_sr.cli.demo import demo_outputs, format_rows, run_demo


def _phase_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[demo ")]


def test_demo_table_has_every_row_and_reuses_the_teacher(tmp_path, capsys):
    rows = run_demo(tmp_path, steps=2, teacher_steps=3)
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
    # a teacher cached by an earlier version (exported as student.pt, named so in eval.json) is reused
    old = tmp_path / "teacher" / "student.pt"
    shutil.move(teacher, old)
    (tmp_path / "teacher" / "eval.json").write_text(json.dumps({"student": str(old)}))
    again = run_demo(tmp_path, steps=2, teacher_steps=3)
    assert again["teacher"]["train_s"] == 0.0 and again["teacher"]["psnr_y"] == rows["teacher"]["psnr_y"]
    assert json.loads((tmp_path / "teacher" / "eval.json").read_text()) == {"student": str(old)}
    first = _phase_lines(capsys.readouterr().out)[0]
    assert first == (
        f"[demo 1/4] training the tiny teacher (3 iterations): reusing {old}"
        " (--retrain-teacher trains it again)"
    )
    assert demo_outputs(tmp_path).splitlines() == [
        "outputs:",
        f"  table        {tmp_path / 'demo.json'}",
        f"  teacher      {old}",
        f"  scratch run  {tmp_path / 'scratch'}",
        f"  MKD run      {tmp_path / 'mkd'}",
    ]
