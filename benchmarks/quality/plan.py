"""What the quality benchmark trains: sizes, methods, and the Hydra overrides of every run.

Every run is one ``python -m meta_kd_sr.cli.train`` with the overrides built here. Students share one
schedule (Adam, cosine learning rate over the run's iterations, one validation at the end, so the exported
student is the final one and no checkpoint is chosen on photos the benchmark scores), the student and
teacher sizes, the patch and batch; only the method and the iteration count differ. The same ``seed=`` gives
the same student initialisation and training data stream in every method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

# Equal-iteration methods: the base experiment (data split, teacher) and the distill preset.
METHODS: dict[str, tuple[str, ...]] = {
    "none": ("experiment=tiny_sr",),
    "output": ("experiment=tiny_kd", "distill=output"),
    "fitnet": ("experiment=tiny_kd", "distill=fitnet"),
    "at": ("experiment=tiny_kd", "distill=at"),
    "fsp": ("experiment=tiny_kd", "distill=fsp"),
    "fakd": ("experiment=tiny_kd", "distill=fakd"),
    "mkd": ("experiment=tiny_mkd",),
    # frozen KRNets need no meta split: without one, no meta batches are loaded that nothing reads
    "mkd_frozen": ("experiment=tiny_kd", "distill=mkd_frozen"),
    "mkd_static": ("experiment=tiny_mkd", "distill=mkd_static"),
    "mkd_nocorr": ("experiment=tiny_mkd", "distill=mkd_nocorr"),
}
# Equal-time variants of MKD: the meta step amortised over k iterations, and cheaper KRNets.
MKD_VARIANTS: dict[str, tuple[str, ...]] = {
    "mkd_every2": ("experiment=tiny_mkd", "meta.every_n_steps=2"),
    "mkd_every4": ("experiment=tiny_mkd", "meta.every_n_steps=4"),
    "mkd_every8": ("experiment=tiny_mkd", "meta.every_n_steps=8"),
    "mkd_hidden16": ("experiment=tiny_mkd", "distill.loss.hidden=16"),
    "mkd_kernels2": ("experiment=tiny_mkd", "distill.loss.n_kernels=2"),
}
# Exploration at equal iterations: what might make the meta-learning (mkd) beat frozen KRNets (mkd_frozen).
# "{half}" is replaced by half the run's iterations.
EXPLORE: dict[str, tuple[str, ...]] = {
    "mkd_metalr1e-3": ("experiment=tiny_mkd", "meta.lr=1e-3"),  # KRNet Adam 10x faster
    "mkd_alpha1": ("experiment=tiny_mkd", "meta.alpha=1.0"),  # a 10x larger pseudo step
    # the pseudo step = the real Adam step (needs one real step first: Adam has no state before)
    "mkd_adamstate": ("experiment=tiny_mkd", "meta.pseudo=adam_state", "meta.warmup_steps=1"),
    "mkd_late": ("experiment=tiny_mkd", "meta.warmup_steps={half}"),  # frozen KRNets, meta-learned from half
    "mkd_metabatch64": ("experiment=tiny_mkd", "data.meta_batch_size=64"),  # 4x the meta batch: less noise
    "mkd_mse": ("experiment=tiny_mkd", "meta.objective=mse"),  # the meta objective PSNR measures
    "mkd_spatial": ("experiment=tiny_mkd", "distill.loss.spatial=true"),  # per-pixel dynamic kernels
}
ALL_METHODS = {**METHODS, **MKD_VARIANTS, **EXPLORE}
COMMON = (
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "data.num_workers=0",
)


@dataclass(frozen=True)
class Sizes:
    """One benchmark configuration (see ``FULL`` and ``QUICK``).

    Attributes:
        student: (channels, blocks) of the EDSR student.
        teacher: (channels, blocks) of the EDSR teacher.
        teacher_iterations, teacher_lq_patch, teacher_batch, teacher_lr: the teacher's training.
        iterations: the students' equal-iteration budget.
        lq_patch, batch, lr: the students' LR patch side, batch and peak learning rate.
        seeds: the paired seeds.
        methods: equal-iteration methods (keys of ``METHODS``; ``none`` and ``mkd`` are required).
        equal_time: methods given MKD's training time (keys of ``ALL_METHODS``).
        explore: MKD variants at the equal-iteration budget (keys of ``EXPLORE``).
        calibration_iterations: length of the timing runs of the equal-time variants without an
            equal-iteration run.
        round_to: equal-time iteration counts are rounded to a multiple of this.
    """

    student: tuple[int, int]
    teacher: tuple[int, int]
    teacher_iterations: int
    teacher_lq_patch: int
    teacher_batch: int
    teacher_lr: float
    iterations: int
    lq_patch: int
    batch: int
    lr: float
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    equal_time: tuple[str, ...]
    calibration_iterations: int
    explore: tuple[str, ...] = ()
    round_to: int = 10
    resume_every: int = 500
    extra: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("none", "mkd"):
            if name not in self.methods:
                raise ValueError(f"methods must include {name!r} (the references), got {self.methods}")
        unknown = [m for m in self.methods if m not in METHODS]
        unknown += [m for m in self.equal_time if m not in ALL_METHODS]
        unknown += [m for m in self.explore if m not in EXPLORE]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {sorted(ALL_METHODS)}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"need >= 2 distinct seeds for paired statistics, got {self.seeds}")

    def as_dict(self) -> dict:
        """The sizes as plain JSON data."""
        return dataclasses.asdict(self)


# Sized for <= 3 h on 2 quiet cores: the arithmetic is in bench_quality.py's docstring.
FULL = Sizes(
    student=(8, 3),
    teacher=(32, 8),
    teacher_iterations=6000,
    teacher_lq_patch=16,
    teacher_batch=16,
    teacher_lr=1e-3,
    iterations=1000,
    lq_patch=16,
    batch=16,
    lr=3e-3,
    seeds=(0, 1, 2),
    methods=tuple(METHODS),
    equal_time=("none", "output", "fakd", *MKD_VARIANTS),
    calibration_iterations=100,
    explore=tuple(EXPLORE),
)
# --quick: the pipeline end to end in about a minute (tiny sizes; no quality to read from it).
QUICK = Sizes(
    student=(8, 2),
    teacher=(16, 2),
    teacher_iterations=8,
    teacher_lq_patch=8,
    teacher_batch=4,
    teacher_lr=1e-3,
    iterations=6,
    lq_patch=8,
    batch=4,
    lr=1e-3,
    seeds=(0, 1),
    methods=("none", "mkd"),
    equal_time=("none",),
    calibration_iterations=4,
    explore=("mkd_late",),
    round_to=1,
    resume_every=4,
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: its run-dir name, what it is, and its full Hydra overrides."""

    name: str
    method: str
    group: str  # teacher | equal_iterations | calibration | equal_time | explore
    seed: int
    iterations: int
    overrides: tuple[str, ...]


def schedule(iterations: int, lr: float, resume_every: int) -> tuple[str, ...]:
    """Overrides of one schedule: cosine learning rate over ``iterations``, one validation at the end."""
    return (
        f"trainer.max_steps={iterations}",
        f"trainer.val_check_interval={iterations}",
        f"trainer.log_every_n_steps={max(1, min(50, iterations // 10))}",
        f"optim.optimizer.lr={lr}",
        "optim.scheduler._target_=torch.optim.lr_scheduler.CosineAnnealingLR",
        "~optim.scheduler.step_size",
        "~optim.scheduler.gamma",
        f"+optim.scheduler.T_max={iterations}",
        f"callbacks.resume_checkpoint.every_n_steps={min(resume_every, iterations)}",
    )


def teacher_spec(sizes: Sizes) -> RunSpec:
    """The teacher: the EDSR of ``sizes.teacher`` trained with L1 on the embedded photos."""
    feats, blocks = sizes.teacher
    overrides = (
        "experiment=tiny_teacher",
        f"model.n_feats={feats}",
        f"model.n_blocks={blocks}",
        f"lq_patch={sizes.teacher_lq_patch}",
        f"data.batch_size={sizes.teacher_batch}",
        "seed=0",
        *schedule(sizes.teacher_iterations, sizes.teacher_lr, sizes.resume_every),
        *COMMON,
        *sizes.extra,
    )
    return RunSpec("teacher", "teacher", "teacher", 0, sizes.teacher_iterations, overrides)


def student_spec(
    sizes: Sizes, method: str, seed: int, iterations: int, group: str, teacher_ckpt: Path
) -> RunSpec:
    """A student run of ``method`` (a key of ``ALL_METHODS``) for ``iterations`` with ``seed``."""
    feats, blocks = sizes.student
    t_feats, t_blocks = sizes.teacher
    base = tuple(o.replace("{half}", str(iterations // 2)) for o in ALL_METHODS[method])
    teacher = (
        ()
        if method == "none"
        else (
            f"teacher.ckpt_path={teacher_ckpt}",
            f"teacher.net.n_feats={t_feats}",
            f"teacher.net.n_blocks={t_blocks}",
        )
    )
    overrides = (
        *base,
        *teacher,
        f"model.n_feats={feats}",
        f"model.n_blocks={blocks}",
        f"lq_patch={sizes.lq_patch}",
        f"data.batch_size={sizes.batch}",
        f"seed={seed}",
        *schedule(iterations, sizes.lr, sizes.resume_every),
        *COMMON,
        *sizes.extra,
    )
    tag = {"equal_iterations": "", "equal_time": "-time", "calibration": "-calib", "explore": ""}[group]
    return RunSpec(f"{method}{tag}-s{seed}-n{iterations}", method, group, seed, iterations, overrides)


def round_iterations(seconds: float, s_per_it: float, round_to: int) -> int:
    """The iterations that fit in ``seconds`` at ``s_per_it``, rounded to a multiple of ``round_to``."""
    if seconds <= 0 or s_per_it <= 0:
        raise ValueError(f"need positive seconds and s/it, got {seconds} and {s_per_it}")
    return max(round_to, round_to * round(seconds / s_per_it / round_to))
