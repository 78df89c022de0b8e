"""What the quality benchmark trains: sizes, methods, and the Hydra overrides of every run.

Every run is one ``python -m meta_kd_sr.cli.train`` with the overrides built here. Students share one
schedule (Adam, cosine learning rate over the run's iterations, one validation at the end, so the exported
student is the final one and no checkpoint is chosen on photos the benchmark scores), the student and
teacher sizes, the patch and batch; only the method, its tuned loss weights (``quality.sweep``) and the
iteration count differ. The same ``seed=`` gives the same student initialisation and training data stream in
every method. The teacher a student reads is named (``RunSpec.teacher``), and its file is found at launch.

Regimes: ``FULL`` (1000 iterations, equal time, explore), ``CONVERGED`` (students trained to the plateau
that ``CONVERGED.budget_ladder`` measures, a stronger teacher) and ``SWEEP`` (the baselines' loss weights,
chosen on validation photos). ``QUICK*`` are their tiny twins for the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
# Structural levers of the meta step, benchmarked by ``--regime levers`` (``LEVER_STUDY``) beside
# ``mkd_frozen`` and ``mkd`` at 1000 iterations; the most promising one goes into ``CONVERGED.levers``.
LEVERS: dict[str, tuple[str, ...]] = {
    # the control of the whole-run signal: each meta input paired with another meta image's target
    "mkd_shuffle": ("experiment=tiny_mkd", "meta.control=shuffle"),
    # horizon: a 2-step unrolled lookahead (differentiated through both pseudo steps)
    "mkd_k2": ("experiment=tiny_mkd", "meta.inner_steps=2"),
    # meta data: natural photos carved from the training photos (the train split loses those rows) ...
    "mkd_natural": ("experiment=tiny_mkd", "data=embedded_meta_natural"),
    # ... and frozen KRNets trained on the same reduced train split: the natural lever's own reference
    "mkd_frozen_natural": ("experiment=tiny_kd", "distill=mkd_frozen", "data=embedded_meta_natural"),
    # variance reduction: the mean of 16 meta-gradients per KRNet step, heavy-ball SGD (momentum 0.9), whose
    # whole-run displacement is lr / (1 - 0.9) * sum g: it follows the mean, where Adam moves every weight by
    # a full normalised step. lr from mkd-s0-n1000's whole-run statistics (1000 meta-gradients; median per
    # weight |mean g| 7.5e-8, sd 2.6e-6): at lr 1000 a median weight's mean moves it 0.023 over the run
    # (62 steps, cosine), its noise about 0.05 (median z ~1); Adam's lr 1e-4 allows up to 0.05.
    "mkd_acc16": ("experiment=tiny_mkd", "meta.accumulate=16", "meta.optimizer=momentum", "meta.lr=1000"),
}
# The frozen-KRNet run each meta-learned method is paired with (default ``mkd_frozen``): same data.
FROZEN_REFERENCE = {"mkd_natural": "mkd_frozen_natural"}
ALL_METHODS = {**METHODS, **MKD_VARIANTS, **EXPLORE, **LEVERS}
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
        resume_every: iterations between the resumable checkpoints of a run.
        budget_ladder: converged regime: the students' budgets tried in turn (scratch, first seed) until
            its held-out PSNR_y moves by less than ``plateau_db`` over the last quarter of the run; empty:
            ``iterations`` is the budget.
        curve_points: held-out evaluations along a converged scratch run (its last quarter spans two).
        plateau_db: the budget rule's threshold.
        levers: keys of ``LEVERS`` run beside ``methods`` (converged and levers regimes).
        doubled: converged regime: methods also trained for twice the measured budget (must hold ``none``),
            with the first ``doubled_seeds`` seeds, to see whether the ranking holds on a longer schedule.
        teacher_margin_db: the teacher's required lead over the converged scratch student.
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
    budget_ladder: tuple[int, ...] = ()
    curve_points: int = 8
    plateau_db: float = 0.02
    levers: tuple[str, ...] = ()
    teacher_margin_db: float = 0.5
    doubled: tuple[str, ...] = ()
    doubled_seeds: int = 0

    def __post_init__(self) -> None:
        for name in ("none", "mkd"):
            if name not in self.methods:
                raise ValueError(f"methods must include {name!r} (the references), got {self.methods}")
        unknown = [m for m in self.methods if m not in METHODS]
        unknown += [m for m in self.equal_time if m not in ALL_METHODS]
        unknown += [m for m in self.explore if m not in EXPLORE]
        unknown += [m for m in self.levers if m not in LEVERS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {sorted(ALL_METHODS)}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"need >= 2 distinct seeds for paired statistics, got {self.seeds}")
        if self.curve_points < 4 or self.curve_points % 4:
            raise ValueError(
                f"curve_points must be a multiple of 4 (a quarter of the run), got {self.curve_points}"
            )
        self._check_doubled()
        bad = [n for n in self.budget_ladder if n % self.curve_points]
        if bad or list(self.budget_ladder) != sorted(set(self.budget_ladder)):
            raise ValueError(
                f"budget_ladder must increase and each budget divide by curve_points "
                f"{self.curve_points}, got {self.budget_ladder}"
            )

    def _check_doubled(self) -> None:
        if not self.doubled:
            return
        outside = [m for m in self.doubled if m not in (*self.methods, *self.levers)]
        if outside or "none" not in self.doubled:
            raise ValueError(f"doubled must hold 'none' and methods of the regime, got {self.doubled}")
        if not 2 <= self.doubled_seeds <= len(self.seeds):
            raise ValueError(f"doubled_seeds must be 2 to {len(self.seeds)}, got {self.doubled_seeds}")

    @property
    def teacher_name(self) -> str:
        """The teacher's run name: its size and iterations (``teacher-32x8-n6000``)."""
        return f"teacher-{self.teacher[0]}x{self.teacher[1]}-n{self.teacher_iterations}"

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


# The levers of the meta step at the 1000-iteration schedule (``--regime levers``): scratch, frozen and
# meta-learned KRNets, the shuffled-target control and every lever, 3 paired seeds, FULL's teacher.
LEVER_STUDY = dataclasses.replace(
    FULL,
    methods=("mkd", "mkd_frozen", "none"),
    equal_time=(),
    explore=(),
    calibration_iterations=0,
    levers=tuple(LEVERS),
)
QUICK_LEVERS = dataclasses.replace(
    QUICK, methods=("mkd", "none"), equal_time=(), explore=(), levers=("mkd_shuffle", "mkd_k2")
)


# The converged regime: students trained to their plateau (the budget is measured, see ``budget_ladder``)
# under a teacher that must lead the converged scratch student by >= 1 dB. EDSR 40 x 12 (478,723
# parameters, 1.9 MB: its record is committed) trained 20000 iterations; the 32 x 8 of FULL scored +0.77 dB
# over scratch at 6390 iterations. Methods: the baselines the question needs, plus ``levers``: the lever
# study (benchmarks/results/levers.md) found no lever beyond mkd_frozen's interval; mkd_acc16 had the
# highest point estimate of the three real levers (+0.004 dB vs mkd_frozen; mkd_k2 -0.001, mkd_natural -0.022
# vs its own reference) and is the one built to follow a consistent mean that a longer run would accumulate.
CONVERGED = dataclasses.replace(
    FULL,
    teacher=(40, 12),
    teacher_iterations=20000,
    iterations=32000,  # the ladder's top: used only when no budget meets the rule
    methods=("none", "output", "fakd", "mkd_frozen", "mkd"),
    levers=("mkd_acc16",),
    seeds=(0, 1, 2, 3, 4),  # 5: the differences that matter (MKD vs mkd_frozen, vs scratch) are ~0.1 dB
    equal_time=(),
    explore=(),
    calibration_iterations=0,
    budget_ladder=(2000, 4000, 8000, 16000, 32000),
    resume_every=1000,
    teacher_margin_db=1.0,
    # does the texture loss's lead over scratch, and MKD's over frozen KRNets, hold on a schedule twice as
    # long? 3 seeds: about an hour on 2 cores (mkd 0.21, mkd_frozen 0.09, none 0.02 CPU s/it at 2N = 4000)
    doubled=("none", "mkd_frozen", "mkd"),
    doubled_seeds=3,
)
QUICK_CONVERGED = dataclasses.replace(
    QUICK,
    iterations=8,
    methods=("none", "mkd"),
    equal_time=(),
    explore=(),
    budget_ladder=(4, 8),
    curve_points=4,
    teacher_margin_db=1.0,
    doubled=("none", "mkd"),
    doubled_seeds=2,
)


@dataclass(frozen=True)
class RunSpec:
    """One training run: its run-dir name, what it is, and its full Hydra overrides.

    ``teacher`` names the teacher run whose exported network the run distils from (found at launch, so the
    overrides hold no machine path); ``photos`` the set it is scored on (``heldout`` or ``sweep_val``);
    ``curve_every`` > 0 adds a held-out evaluation every that many iterations (``quality.curve``).
    """

    name: str
    method: str
    group: str  # teacher | equal_iterations | calibration | equal_time | explore | levers | converged | sweep
    seed: int
    iterations: int
    overrides: tuple[str, ...]
    teacher: str | None = None
    photos: str = "heldout"
    curve_every: int = 0


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
    return RunSpec(sizes.teacher_name, "teacher", "teacher", 0, sizes.teacher_iterations, overrides)


TAGS = {
    "equal_iterations": "",
    "equal_time": "-time",
    "calibration": "-calib",
    "explore": "",
    "converged": "-conv",
    "levers": "",
}


def student_spec(
    sizes: Sizes,
    method: str,
    seed: int,
    iterations: int,
    group: str,
    weights: tuple[str, ...] = (),
    label: str | None = None,
) -> RunSpec:
    """A student run of ``method`` (a key of ``ALL_METHODS``) for ``iterations`` with ``seed``.

    ``weights`` are loss-weight overrides (the sweep's choice, or a sweep point named ``label``); converged
    scratch runs carry the held-out curve of the budget rule.
    """
    feats, blocks = sizes.student
    t_feats, t_blocks = sizes.teacher
    base = tuple(o.replace("{half}", str(iterations // 2)) for o in ALL_METHODS[method])
    teacher = (
        () if method == "none" else (f"teacher.net.n_feats={t_feats}", f"teacher.net.n_blocks={t_blocks}")
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
        *weights,
    )
    if group == "sweep":
        name, photos = f"sweep-{method}-{label}-s{seed}-n{iterations}", "sweep_val"
    else:
        name, photos = f"{method}{TAGS[group]}-s{seed}-n{iterations}", "heldout"
    curve = iterations // sizes.curve_points if group == "converged" and method == "none" else 0
    t_name = None if method == "none" else sizes.teacher_name
    return RunSpec(name, method, group, seed, iterations, overrides, t_name, photos, curve)


def round_iterations(seconds: float, s_per_it: float, round_to: int) -> int:
    """The iterations that fit in ``seconds`` at ``s_per_it``, rounded to a multiple of ``round_to``."""
    if seconds <= 0 or s_per_it <= 0:
        raise ValueError(f"need positive seconds and s/it, got {seconds} and {s_per_it}")
    return max(round_to, round_to * round(seconds / s_per_it / round_to))
