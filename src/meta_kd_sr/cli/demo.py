"""``make demo``: meta KD end to end on the photos embedded in scikit-image, on CPU.

The tiny teacher shipped with the package is used (``--retrain-teacher`` trains one with the same recipe in
the output dir instead); a scratch student and a meta-KD student are then trained with the same budget;
everything is evaluated with the SR protocol on the held-out
embedded photos and printed as one table next to the bicubic row. Each phase prints a start line and a done
line with its seconds and output; a progress bar counts the iterations of each training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from meta_kd_sr.assets import shipped_teacher
from meta_kd_sr.cli import config_dir
from meta_kd_sr.cli.evaluate import score_dataset
from meta_kd_sr.cli.train import train
from meta_kd_sr.data import EmbeddedPhotos
from meta_kd_sr.evaluation.inference import upscale_bicubic
from meta_kd_sr.models.checkpoint import student_from_checkpoint
from meta_kd_sr.runtime.console import Phases, format_outputs

COMMON = ["trainer.enable_model_summary=false", "logger=csv"]
N_PHASES = 4  # teacher, scratch student, MKD student, evaluation


def _cfg(output_dir: Path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*COMMON, f"paths.output_dir={output_dir}", *overrides])


def _score(sr_fn: Any, scale: int, names: list[str]) -> dict[str, float]:
    scores = score_dataset(sr_fn, EmbeddedPhotos(names, scale, train=False), scale)
    return {"psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"]}


def _budget(steps: int) -> list[str]:
    # Validate 4 times; halve the learning rate at 60 % of the run (the EDSR schedule, compressed);
    # LR patches of 16 px keep the whole demo within minutes on 2 CPU cores.
    return [
        "lq_patch=16",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={max(1, steps // 4)}",
        f"optim.scheduler.step_size={max(1, int(0.6 * steps))}",
    ]


def exported_network(record: dict[str, Any]) -> str:
    """The network file a run exported, from its ``eval.json`` (runs before ``export_name``: ``student``)."""
    return record.get("export") or record["student"]


def _train_once(phases: Phases, what: str, out: Path, overrides: list[str]) -> tuple[str, float]:
    phases.start(what)
    result = train(_cfg(out, [*overrides, "overwrite=true"]))  # a rerun of the demo replaces its runs
    return result["export"], phases.done(result["export"])


def _teacher(phases: Phases, output_dir: Path, teacher_steps: int, retrain: bool) -> tuple[str, float]:
    """The shipped tiny teacher, or (``retrain``) one trained by its recipe in ``<output_dir>/teacher``."""
    if not retrain:
        path = str(shipped_teacher())
        phases.skip(f"using the shipped tiny teacher {path} (--retrain-teacher trains one)")
        return path, 0.0
    what = f"training the tiny teacher ({teacher_steps} iterations)"
    overrides = ["experiment=tiny_teacher", *_budget(teacher_steps)]
    return _train_once(phases, what, output_dir / "teacher", overrides)


def run_demo(
    output_dir: Path, steps: int, teacher_steps: int, retrain_teacher: bool = False
) -> dict[str, Any]:
    """Take the shipped teacher (or train one), train scratch and meta-KD students; return the table."""
    phases = Phases("demo", N_PHASES)
    teacher_path, t_teacher = _teacher(phases, output_dir, teacher_steps, retrain_teacher)
    rows: dict[str, Any] = {}
    scratch, t_scratch = _train_once(
        phases,
        f"training the scratch student ({steps} iterations)",
        output_dir / "scratch",
        ["experiment=tiny_sr", *_budget(steps)],
    )
    mkd, t_mkd = _train_once(
        phases,
        f"training the meta-KD student ({steps} iterations, KRNets meta-learned)",
        output_dir / "mkd",
        ["experiment=tiny_mkd", f"teacher.ckpt_path={teacher_path}", *_budget(steps)],
    )
    phases.start("scoring bicubic, scratch, MKD and the teacher on the held-out photos")
    cfg = _cfg(output_dir, ["experiment=tiny_sr"])
    names, scale = list(cfg.data.val.names), int(cfg.scale)
    rows["bicubic"] = {**_score(lambda lq: upscale_bicubic(lq, scale), scale, names), "train_s": 0.0}
    for name, path, secs in (
        ("scratch", scratch, t_scratch),
        ("MKD", mkd, t_mkd),
        ("teacher", teacher_path, t_teacher),
    ):
        net, _ = student_from_checkpoint(path)
        rows[name] = {
            **_score(net, scale, names),
            "train_s": secs,
            "params": sum(p.numel() for p in net.parameters()),
        }
    rows["_setup"] = {
        "scale": scale,
        "val_photos": names,
        "student_steps": steps,
        "teacher_steps": teacher_steps if retrain_teacher else None,
        "teacher": teacher_path,
    }
    phases.done()
    return rows


def demo_outputs(output_dir: Path, teacher: str | None = None) -> str:
    """Where the demo wrote its files (and which teacher it used)."""
    return format_outputs(
        [
            ("table", output_dir / "demo.json"),
            ("teacher", teacher),
            ("scratch run", output_dir / "scratch"),
            ("MKD run", output_dir / "mkd"),
        ]
    )


def format_rows(rows: dict[str, Any]) -> str:
    """The demo table."""
    setup = rows["_setup"]
    lines = [
        f"x{setup['scale']} on held-out embedded photos {setup['val_photos']}"
        f" (Y, crop {setup['scale']}, uint8)",
        f"{'method':<9} {'params':>8} {'PSNR_y':>8} {'SSIM_y':>7} {'train s':>8}",
    ]
    for name, r in rows.items():
        if not name.startswith("_"):
            params = f"{r['params']:,}" if "params" in r else "-"
            lines.append(
                f"{name:<9} {params:>8} {r['psnr_y']:>8.3f} {r['ssim_y']:>7.4f} {r['train_s']:>8.0f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the demo (``make demo``)."""
    parser = argparse.ArgumentParser(prog="python -m meta_kd_sr.cli.demo", description=__doc__)
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--steps", type=int, default=800, help="iterations of each student")
    parser.add_argument("--teacher-steps", type=int, default=1000, help="with --retrain-teacher")
    parser.add_argument(
        "--retrain-teacher", action="store_true", help="train the tiny teacher instead of the shipped one"
    )
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    rows = run_demo(out, args.steps, args.teacher_steps, retrain_teacher=args.retrain_teacher)
    (out / "demo.json").write_text(json.dumps(rows, indent=2))
    print(format_rows(rows))
    print(demo_outputs(out, rows["_setup"]["teacher"]))


if __name__ == "__main__":
    main()
