"""The LightningModule: one module for supervised training, KD baselines and meta KD.

It wires built objects (student, optional frozen teacher, distiller, optimizers) and holds no maths: the
losses live in :mod:`meta_kd_sr.distill`, the training iteration (plain, or meta step, KRNet step and
student step) in :mod:`meta_kd_sr.meta.iteration` and the evaluation protocol in
:mod:`meta_kd_sr.evaluation.metrics`. Optimisation is manual, so the stages of a meta iteration run in the
order of the method. The values that cross the stages are typed in :mod:`meta_kd_sr.meta.outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.profiler import record_function

from meta_kd_sr.distill import Distiller
from meta_kd_sr.evaluation.inference import self_ensemble, tiled_forward
from meta_kd_sr.evaluation.metrics import PSNRY, SSIMY
from meta_kd_sr.meta.accumulate import MetaAccumulator
from meta_kd_sr.meta.health import MetaHealth
from meta_kd_sr.meta.iteration import run_iteration, train_part
from meta_kd_sr.meta.outputs import AnyOptimizer, Logs, TeacherOutputs, Terms
from meta_kd_sr.meta.settings import MetaSettings, precision_problem
from meta_kd_sr.meta.signal import MetaSignal
from meta_kd_sr.models import accepts_features_only
from meta_kd_sr.runtime.ddp import broadcast_, exclude_from_ddp
from meta_kd_sr.training.recovery import keep_cut_epoch_open
from meta_kd_sr.training.teacher import freeze_teacher

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
# Submodules DistributedDataParallel must neither wrap nor broadcast (see SRModule.setup).
DDP_EXCLUDED = ("teacher", "distiller.kd_losses")
# The loss terms the progress bar shows (logged with prog_bar=True); every term is logged.
PROG_BAR_TERMS = ("train/loss", "train/loss_rec", "train/loss_kd", "train/loss_meta")
META_STATE = ("meta_health", "meta_accumulator", "meta_signal")  # meta trackers saved in checkpoints


class StepOutputs(NamedTuple):
    """What ``SRModule.iteration`` returns: the student step's loss terms and the values to log."""

    terms: Terms
    logs: Logs


class SRModule(pl.LightningModule):
    """Train an SR network with L1 (no teacher), a KD baseline, or meta knowledge distillation.

    Args:
        student: the network being trained; ``student(lq, return_feats=True) -> (sr, feats)``.
        optimizer: factory ``params -> Optimizer`` for the student and its adapters.
        scale: SR factor; also the protocol's border crop unless ``crop_border`` is given.
        distiller: turns outputs and features into named loss terms; ``None`` means plain L1 to GT.
        teacher: frozen network, required by every distiller that needs one.
        scheduler: factory ``optimizer -> LRScheduler`` stepped once per training iteration.
        meta: settings of the meta step; used when the distiller has meta parameters (KRNets).
        crop_border: pixels removed on each side for PSNR/SSIM (default: ``scale``).
        val_self_ensemble: evaluate with the x8 self-ensemble.
        val_tile: LR tile size for tiled validation of large images (``None``: whole image).
        channels_last: keep the student, the teacher and the training inputs in channels-last memory format
            (NHWC), which cuDNN's tensor-core convolutions prefer; the results agree with NCHW to rounding.
        compile_teacher: run the frozen teacher's training forward through ``torch.compile`` (compiled on the
            first batch). The meta step itself is never compiled (``torch.compile`` has no double backward).
        compile_student: run the student of plain iterations (no meta step: supervised, the KD baselines,
            frozen KRNets, and MKD iterations between meta steps) through ``torch.compile``; meta iterations
            and validation use the eager student.
        student_config: the student's constructor config, saved so a checkpoint rebuilds it.
        teacher_config: the teacher's config (network + checkpoint path), saved for the same reason.
    """

    def __init__(
        self,
        student: nn.Module,
        optimizer: OptimizerFactory,
        scale: int,
        distiller: Distiller | None = None,
        teacher: nn.Module | None = None,
        scheduler: SchedulerFactory | None = None,
        meta: MetaSettings | Mapping[str, Any] | None = None,
        crop_border: int | None = None,
        val_self_ensemble: bool = False,
        val_tile: int | None = None,
        channels_last: bool = False,
        compile_teacher: bool = False,
        compile_student: bool = False,
        student_config: Mapping[str, Any] | None = None,
        teacher_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.student = student
        self.distiller = distiller if distiller is not None else Distiller()
        if self.distiller.needs_teacher and teacher is None:
            raise ValueError(
                "this distillation method needs a teacher: set teacher=<preset> teacher.ckpt_path=..."
            )
        self.teacher = freeze_teacher(teacher) if teacher is not None else None
        self.channels_last, self.compile_teacher = channels_last, compile_teacher
        self.compile_student = compile_student
        if channels_last:
            for net in (self.student, self.teacher):
                if net is not None:
                    # torch types Module.to without the memory_format-only form it accepts
                    net.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
        self._compiled: dict[str, nn.Module] = {}  # a dict: not registered as a submodule
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.meta = meta if isinstance(meta, MetaSettings) else MetaSettings(**dict(meta or {}))
        self.scale = int(scale)
        self.crop_border = self.scale if crop_border is None else int(crop_border)
        self.val_self_ensemble = val_self_ensemble
        self.val_tile = val_tile
        self.val_psnr, self.val_ssim = PSNRY(self.crop_border), SSIMY(self.crop_border)
        self.meta_skipped = 0  # KRNet updates skipped for a non-finite meta-gradient (saved in checkpoints)
        self.meta_health = MetaHealth(self.meta.health_window)  # drift and noise of the KRNet updates
        self.meta_accumulator = MetaAccumulator(self.meta.accumulate)  # the meta-gradient window
        self.meta_signal = MetaSignal()  # whole-run z of the meta-gradients, exported at the end
        self.save_hyperparameters(
            {
                "scale": self.scale,
                "crop_border": self.crop_border,
                "student_config": student_config,
                "teacher_config": teacher_config,
                "meta": {**self.meta.as_dict(), "enabled": self.meta_enabled},  # what runs, not the wish
            }
        )

    # ----------------------------------------------------------------------------------------- setup
    @property
    def meta_enabled(self) -> bool:
        """Whether KRNets are trained by the meta-gradient in this run."""
        return self.meta.enabled and bool(self.distiller.meta_parameters())

    def setup(self, stage: str) -> None:
        """Keep the frozen teacher and the KRNets out of DDP; runs before the strategy wraps this module.

        The teacher is never trained; the KRNets get their gradients from ``torch.autograd.grad``, which DDP
        never reduces (the meta iteration averages them), and are frozen in the student step. What remains in
        DDP (student and adapters) gets a gradient in every student step: ``find_unused_parameters`` stays
        off. A precision the meta iteration cannot honour is refused here (``meta.precision_problem``).
        """
        trainer = self._trainer  # None when setup is called by hand
        problem = None if trainer is None else precision_problem(str(trainer.precision), self.meta_enabled)
        if problem is not None:
            raise ValueError(problem)
        exclude_from_ddp(self, DDP_EXCLUDED)

    def on_fit_start(self) -> None:
        """Start every rank from rank 0's KRNets: DDP broadcasts only the parameters it wraps."""
        krnets = self.distiller.kd_losses
        broadcast_([*krnets.parameters(), *krnets.buffers()])

    def configure_optimizers(self) -> list[dict[str, Any]]:
        """Student (+ adapters) optimizer, and the KRNet optimizer when meta learning is on."""
        params = list(self.student.parameters()) + list(self.distiller.student_side_parameters())
        groups = [self.optimizer_factory(params)]
        if self.meta_enabled:
            groups.append(self.meta.build_optimizer(self.distiller.meta_parameters()))
        out = []
        for opt in groups:
            entry: dict[str, Any] = {"optimizer": opt}
            if self.scheduler_factory is not None:
                entry["lr_scheduler"] = {"scheduler": self.scheduler_factory(opt), "interval": "step"}
            out.append(entry)
        return out

    def train(self, mode: bool = True) -> SRModule:
        """Switch the trainable parts; the teacher stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # -------------------------------------------------------------------------------------- training
    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """Super-resolve with the student alone. lq: (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w)."""
        return self.student(lq)

    @torch.no_grad()
    def teacher_forward(self, lq: torch.Tensor) -> TeacherOutputs:
        """Teacher SR and features on ``lq``, once per batch, without a graph (or ``None, None``).

        When no loss reads the teacher's SR image (``output_weight == 0``) and the teacher can stop at its
        last feature (``features_only``), the upsampler is skipped and the SR image is ``None``.
        """
        if self.teacher is None or not self.distiller.needs_teacher:
            return TeacherOutputs()
        teacher = self._compiled_fn("teacher") if self.compile_teacher else self.teacher
        if self.distiller.output_weight == 0 and accepts_features_only(self.teacher):
            return TeacherOutputs(None, teacher(lq, features_only=True))
        sr_t, feats_t = teacher(lq, return_feats=True)
        return TeacherOutputs(sr_t, feats_t)

    def _compiled_fn(self, name: str) -> nn.Module:
        """The ``torch.compile`` wrapper of submodule ``name`` (``teacher``/``student``), built once."""
        if name not in self._compiled:
            self._compiled[name] = cast(nn.Module, torch.compile(getattr(self, name)))  # an OptimizedModule
        return self._compiled[name]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One iteration (``iteration``), the schedulers' step and the logs."""
        opts = self.optimizers()
        opt_s, opt_k = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        due = self.meta_enabled and self.meta.is_due(self.global_step)
        terms, logs = self.iteration(batch, opt_s, opt_k if due else None)
        self._step_schedulers()
        batch_size = int(train_part(batch)["lq"].shape[0])
        named = {f"train/{k}": v.detach() for k, v in terms.items()} | logs
        shown = {k: named[k] for k in PROG_BAR_TERMS if k in named}
        self.log_dict(shown, prog_bar=True, batch_size=batch_size)
        self.log_dict({k: v for k, v in named.items() if k not in shown}, batch_size=batch_size)
        self.log("train/lr", opt_s.param_groups[0]["lr"], batch_size=batch_size)
        return terms["loss"].detach()

    def iteration(
        self, batch: Mapping[str, Any], opt_student: AnyOptimizer, opt_krnet: AnyOptimizer | None = None
    ) -> StepOutputs:
        """One training iteration (docs/method.md): teacher forward, then ``meta.iteration.run_iteration``.

        Works outside a Trainer too (benchmarks, notebooks): the backward is ``manual_backward`` when a
        trainer is attached, ``loss.backward()`` otherwise.

        Args:
            batch: ``{"lq", "gt"}``, or ``{"train": {...}, "meta": {...}}`` for meta steps.
            opt_student: the student (+ adapters) optimizer, raw or Lightning's wrapper.
            opt_krnet: the KRNet optimizer; given, this iteration runs the meta step and the KRNet step.

        Returns:
            The student step's loss terms (``loss``, ``loss_rec``, ...) and the values to log; with meta
            learning on, ``train/meta_skipped`` counts the KRNet updates skipped so far (``meta_skipped``,
            counted from the iteration's ``IterationResult.krnet_skipped``, never from a log).
        """
        if self.channels_last:
            batch = _channels_last(batch)
        with record_function("iteration/teacher"):
            teacher_out = self.teacher_forward(train_part(batch)["lq"])
        trainer = self._trainer
        plain = opt_krnet is None  # higher's patched student (meta iterations) must stay eager
        result = run_iteration(
            self._compiled_fn("student") if plain and self.compile_student else self.student,
            self.distiller,
            teacher_out,
            batch,
            opt_student,
            opt_krnet,
            self.meta,
            backward=self.manual_backward if trainer is not None else torch.Tensor.backward,
            iteration=self.global_step if trainer is not None else None,
            health=self.meta_health,
            accumulator=self.meta_accumulator,
            signal=self.meta_signal,
        )
        self.meta_skipped += int(result.krnet_skipped)
        logs = dict(result.logs)
        if self.meta_enabled:
            logs["train/meta_skipped"] = torch.tensor(float(self.meta_skipped))
        return StepOutputs(result.terms, logs)

    def _step_schedulers(self) -> None:
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            cast(LRScheduler, sched).step()  # stepped per iteration: no metric-driven scheduler

    # ------------------------------------------------------------------------------------ validation
    def super_resolve(self, net: nn.Module, lq: torch.Tensor) -> torch.Tensor:
        """SR with the validation options (self-ensemble, tiling), clamped to [0, 1]."""

        def run(x: torch.Tensor) -> torch.Tensor:
            if self.val_tile:
                return tiled_forward(
                    net, x, scale=self.scale, tile=self.val_tile, overlap=max(4, self.val_tile // 8)
                )
            return net(x)

        sr = self_ensemble(run, lq) if self.val_self_ensemble else run(lq)
        return sr.clamp(0, 1)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Per-image PSNR_y / SSIM_y of the student (the protocol of :mod:`meta_kd_sr.evaluation.metrics`)."""
        sr = self.super_resolve(self.student, batch["lq"])
        self.val_psnr.update(sr, batch["gt"])
        self.val_ssim.update(sr, batch["gt"])
        self.log("val/psnr_y", self.val_psnr, prog_bar=True, batch_size=sr.shape[0])
        self.log("val/ssim_y", self.val_ssim, batch_size=sr.shape[0])

    def on_train_start(self) -> None:
        """Log the teacher's validation PSNR_y once, so a wrong teacher shows at step 0."""
        datamodule = getattr(self.trainer, "datamodule", None)  # set by fit(datamodule=...)
        if self.teacher is None or datamodule is None:
            return
        loader = datamodule.val_dataloader()
        if loader is None:
            return
        metric = PSNRY(self.crop_border).to(self.device)
        precision = self.trainer.precision_plugin  # e.g. float64 inputs under precision=64-true
        with torch.no_grad(), precision.forward_context():
            for batch in loader:
                lq, gt = batch["lq"].to(self.device), batch["gt"].to(self.device)
                metric.update(self.super_resolve(self.teacher, precision.convert_input(lq)), gt)
        # compute() sums the per-rank states: every image of the unpadded val shards counts once
        self.log("val/teacher_psnr_y", metric.compute(), rank_zero_only=False, sync_dist=False)

    def on_train_end(self) -> None:
        """Write the whole-run z per KRNet weight to ``meta.signal_file`` in the run dir (rank 0 only)."""
        name = self.meta.signal_file
        if name and self.meta_enabled and self.meta_signal.steps >= 2 and self.trainer.is_global_zero:
            meta = {id(p) for p in self.distiller.meta_parameters()}
            named = [(n, p) for n, p in self.distiller.named_parameters(prefix="distiller") if id(p) in meta]
            self.meta_signal.export(Path(self.trainer.default_root_dir) / name, named, self.meta.control)

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the teacher out of checkpoints (rebuilt from its path); save the meta counters, trackers.

        A checkpoint written after ``max_steps`` ended the fit mid-epoch continues that epoch on resume
        (:func:`~meta_kd_sr.training.recovery.keep_cut_epoch_open`).
        """
        keep_cut_epoch_open(checkpoint)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")
        }
        checkpoint["meta_skipped"] = self.meta_skipped
        if self.meta_enabled:
            checkpoint.update({key: getattr(self, key).state_dict() for key in META_STATE})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the meta counters; put the current teacher's tensors back so strict loading works."""
        self.meta_skipped = int(checkpoint.get("meta_skipped", 0))
        for key in (k for k in META_STATE if k in checkpoint):
            getattr(self, key).load_state_dict(checkpoint[key])
        if self.teacher is not None:
            state = checkpoint["state_dict"]
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})


def _channels_last(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` with every 4-D tensor (nested one level for train/meta batches) in channels-last format."""

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            return value.contiguous(memory_format=torch.channels_last)
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(batch)
