"""What keeps a long run safe: atomic finite checkpoints, periodic resume points, checks made before fit.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target directory, fsyncs it
  and renames it over the old one (``os.replace``): a kill at any moment leaves the previous checkpoint whole.
  It refuses to write non-finite tensors, and a failed save (full disk, read-only directory) stops the run.
- :class:`ResumeCheckpoint` writes ``last.ckpt`` every ``every_n_steps`` iterations, mid-epoch included; with
  the resumable training loaders a resumed run is bit-identical to one that never stopped.
- :func:`keep_cut_epoch_open` makes the checkpoint of a run that ``trainer.max_steps`` stopped mid-epoch
  continue that epoch, so that a finished run extended with a larger ``max_steps`` is bit-identical too.
- :func:`prepare_run_dir`, :func:`check_writable`, :func:`check_meta_split` and :func:`check_resume` refuse,
  before anything is trained, a run that would overwrite another one, an unwritable checkpoint directory,
  meta-learning without a meta split, and a ``resume=`` file that cannot continue this run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from meta_kd_sr.data.samplers import ResumableLoader
from meta_kd_sr.runtime.atomic import atomic_save, remove_stale_temporaries
from meta_kd_sr.runtime.finite import first_nonfinite_name

# what a finished or running run leaves in its dir, besides its exported network (export_name; the two
# names the presets use are always checked)
RUN_OUTPUTS = ("checkpoints", "student.pt", "teacher.pt", "eval.json")


class RunRefused(ValueError):
    """A run that must not start as configured; the message says what to change."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic in the target directory and refusing non-finite values.

    Lightning's own writer stages the file in ``$TMPDIR`` and moves it: across filesystems the move is a
    truncating copy (a kill during it destroyed ``last.ckpt``), and a ``PermissionError`` is logged and
    swallowed. Here every failure raises, so the first failed save stops the run.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically; raise ``FloatingPointError`` on a NaN/inf tensor."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        bad = first_nonfinite_name({"state_dict": checkpoint.get("state_dict", {})}) or first_nonfinite_name(
            {"optimizer_states": checkpoint.get("optimizer_states", [])}
        )
        if bad is not None:
            raise FloatingPointError(
                f"refusing to save {os.fspath(path)}: {bad} holds NaN/inf; the last good checkpoint is kept"
            )
        atomic_save(checkpoint, path)


class ResumeCheckpoint(pl.Callback):
    """Write ``<dirpath>/<filename>`` every ``every_n_steps`` training iterations (0: never).

    ``ModelCheckpoint`` with a monitored metric saves only at validation under manual optimization; this
    callback gives long runs a recent resume point wherever they are in an epoch.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int, filename: str = "last.ckpt") -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.path = Path(dirpath) / filename
        self.every_n_steps = int(every_n_steps)
        self._saved_at = -1

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Save when the iteration count reaches a multiple of ``every_n_steps``."""
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_at:
            trainer.save_checkpoint(self.path)
            self._saved_at = step


def keep_cut_epoch_open(checkpoint: dict[str, Any]) -> None:
    """Record an epoch that the run's end cut short as unfinished, as a mid-epoch resume point does.

    When ``trainer.max_steps`` (or any stop) ends a fit mid-epoch, Lightning closes the epoch before the
    end-of-fit saves (``ModelCheckpoint`` writes ``last.ckpt`` at train end). Resumed from that file with a
    larger ``max_steps``, a run would start the next epoch with a new order instead of serving the rest of
    the cut one. Where a training loader's saved position (see ``ResumableLoader``) lies inside the epoch
    that the loop state calls finished, this puts the loop state back to "started, not finished"; on
    resume Lightning then continues that epoch after the batches already trained on. Other checkpoints are
    left as they are.
    """
    fit_loop = checkpoint.get("loops", {}).get("fit_loop")
    if not isinstance(fit_loop, dict) or "epoch_progress" not in fit_loop:
        return
    positions = fit_loop.get("state_dict", {}).get("combined_loader") or []
    progress = fit_loop["epoch_progress"]
    epoch = progress["current"]["ready"] - 1  # the index of the epoch being trained
    if progress["current"]["completed"] != epoch + 1:
        return  # the epoch is open: a mid-epoch save
    if not any(ResumableLoader.stopped_inside(position, epoch) for position in positions):
        return  # the epoch ran to its end (or no loader keeps its place)
    for counts in (progress["current"], progress["total"]):
        counts["processed"] = counts["completed"] = counts["ready"] - 1
    checkpoint["epoch"] = epoch


def check_writable(directory: str | os.PathLike) -> None:
    """Create ``directory`` and write a probe file in it; raise :class:`RunRefused` if that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe.", suffix=".tmp") as f:
            f.write(b"probe")
            f.flush()
    except OSError as err:
        raise RunRefused(
            f"checkpoint directory {os.fspath(directory)!r} is not writable ({err.strerror or err}): no "
            "checkpoint could be saved; fix its permissions or choose another paths.output_dir"
        ) from err


def _is_inside(path: str | os.PathLike, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def check_run_dir(
    output_dir: str | os.PathLike, resume: str | None, overwrite: bool, export_name: str = "student.pt"
) -> list[str]:
    """The earlier run's outputs that this run replaces; :class:`RunRefused` if it may not reuse the dir.

    Reading only: a refused run has touched nothing (the Hydra callback of ``meta-kd-sr-train`` calls it
    before Hydra writes its ``.hydra/`` record). Resuming a checkpoint of the dir, or ``overwrite``, may.
    """
    output_dir = Path(output_dir)
    names = dict.fromkeys((*RUN_OUTPUTS, export_name))
    found = [name for name in names if _holds_output(output_dir / name)]
    if found and not (resume and _is_inside(resume, output_dir)) and not overwrite:
        last = output_dir / "checkpoints" / "last.ckpt"
        raise RunRefused(
            f"run dir {os.fspath(output_dir)!r} already holds a run ({', '.join(found)}): pass "
            f"resume={last} to continue it, overwrite=true to replace it, or choose another hydra.run.dir"
        )
    return found if not (resume and _is_inside(resume, output_dir)) else []


def prepare_run_dir(
    output_dir: str | os.PathLike, resume: str | None, overwrite: bool, export_name: str = "student.pt"
) -> None:
    """Refuse a run dir that holds another run's outputs, unless resuming into it or ``overwrite`` is set.

    ``overwrite=True`` deletes the old run's checkpoints, exported network (``export_name``, and
    ``student.pt``/``teacher.pt``) and ``eval.json`` first (logs stay: loggers start a new version), so no
    file of the old run can pass for the new one's.
    """
    output_dir = Path(output_dir)
    for name in check_run_dir(output_dir, resume, overwrite, export_name):
        target = output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    remove_stale_temporaries(output_dir / "checkpoints")


def _holds_output(path: Path) -> bool:
    if path.is_dir():  # dot files are probes and temporaries, not outputs
        return any(not p.name.startswith(".") for p in path.iterdir())
    return path.exists()


def check_meta_split(meta_learned: bool, has_meta_split: bool, distill: str, data: str) -> None:
    """Refuse meta-learned KRNets without a meta split (found today only at the first meta step)."""
    if meta_learned and not has_meta_split:
        raise RunRefused(
            f"distill={distill} meta-learns its KRNets, which needs a meta split disjoint from the training "
            f"images, and data={data} has none: use experiment=tiny_mkd, or data=embedded_meta / "
            "data=div2k_meta (or distill=mkd_frozen / meta.enabled=false to keep the KRNets frozen)"
        )


def weights_fingerprint(net: torch.nn.Module) -> str:
    """A SHA-256 of ``net``'s state dict (names, dtypes, shapes and bytes): which weights a run used."""
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class RunSettings(pl.Callback):
    """Saves, in every checkpoint, the settings a resumed run must share (``lq_patch``, the batch size).

    Lightning keeps a callback's ``state_dict`` under ``checkpoint["callbacks"]["RunSettings"]``;
    :func:`check_resume` compares it with the resuming run's before anything is trained.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__()
        self.settings = dict(settings)

    def state_dict(self) -> dict[str, Any]:
        """The settings, as saved in the checkpoint."""
        return dict(self.settings)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: :func:`check_resume` has compared the settings before fit."""


def _check_settings(where: str, ckpt: Mapping[str, Any], settings: Mapping[str, Any] | None) -> None:
    saved = (ckpt.get("callbacks") or {}).get(RunSettings.__qualname__)
    if not settings or not isinstance(saved, Mapping):  # checkpoints of older versions did not record them
        return
    changed = [k for k in settings if k in saved and saved[k] != settings[k]]
    if changed:
        was = ", ".join(f"{k}={saved[k]}" for k in changed)
        now = ", ".join(f"{k}={settings[k]}" for k in changed)
        raise RunRefused(
            f"{where} was trained with {was} but this run asks {now}: resume with the same settings "
            "(a changed patch or batch would not continue the same run), or start a new run"
        )


def check_resume(
    path: str | os.PathLike, module: pl.LightningModule, settings: Mapping[str, Any] | None = None
) -> None:
    """Refuse, in one line, a ``resume=`` file that cannot continue the run of ``module``.

    Catches a file that is not a checkpoint, an exported network (weights only), a checkpoint of another
    student or teacher, one whose tensors do not fit this run (another distillation method or size), and
    one saved with other :class:`RunSettings` ``settings`` (``lq_patch``, batch size).
    """
    where = f"resume={os.fspath(path)}"
    if not Path(path).is_file():
        raise RunRefused(f"{where}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # text, truncated zip, pickle of arbitrary objects: none of them resumes a run
        raise RunRefused(f"{where} is not a readable training checkpoint ({type(err).__name__})") from err
    if not isinstance(ckpt, Mapping) or "pytorch-lightning_version" not in ckpt or "loops" not in ckpt:
        what = "an exported network (weights only)" if isinstance(ckpt, Mapping) else "not a checkpoint"
        raise RunRefused(
            f"{where} is {what}, not a training checkpoint: resume takes <run dir>/checkpoints/*.ckpt "
            f"(to evaluate this file: meta-kd-sr-eval ckpt_path={os.fspath(path)})"
        )
    saved, mine = ckpt.get("hyper_parameters") or {}, module.hparams
    if saved.get("student_config") != mine.get("student_config"):
        raise RunRefused(
            f"{where} trained the student {saved.get('student_config')} but this run builds "
            f"{mine.get('student_config')}: resume with the model settings of that run"
        )
    if _teacher_identity(saved.get("teacher_config")) != _teacher_identity(mine.get("teacher_config")):
        raise RunRefused(
            f"{where} was distilled from another teacher ({_teacher_identity(saved.get('teacher_config'))}) "
            f"than this run's ({_teacher_identity(mine.get('teacher_config'))}): resume with the same teacher"
        )
    _check_tensors_fit(where, ckpt.get("state_dict") or {}, module)
    _check_settings(where, ckpt, settings)


def _teacher_identity(config: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    """The teacher's architecture and weights (their fingerprint; the file path when none was saved)."""
    if not config:
        return None
    return config.get("net"), config.get("weights_sha256") or config.get("ckpt_path")


def _check_tensors_fit(where: str, saved: Mapping[str, Any], module: pl.LightningModule) -> None:
    own = {k: v for k, v in module.state_dict().items() if not k.startswith("teacher.")}
    saved = {k: v for k, v in saved.items() if not k.startswith("teacher.")}
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & saved.keys() if tuple(own[k].shape) != tuple(saved[k].shape))
    if missing or unexpected or reshaped:
        first = (
            f"{reshaped[0]} is {tuple(saved[reshaped[0]].shape)} there, {tuple(own[reshaped[0]].shape)} here"
            if reshaped
            else f"first {'missing' if missing else 'unexpected'}: {(missing or unexpected)[0]}"
        )
        raise RunRefused(
            f"{where} does not fit this run ({len(missing)} tensors missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape; {first}): resume with the distillation and model settings "
            "it was trained with"
        )
